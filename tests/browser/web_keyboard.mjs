// The newcomer's path and the phone/keyboard checks of issue 17, point 8, in Chromium
// (tests/test_web_keyboard.py runs it against a server started from config/homeserver.yaml
// as `make run` would):
//
//   node web_keyboard.mjs <base_url> <alice> <bob> <password>
//
// Alice on a 390x844 phone and Bob on a desktop window sign up in the page and chat,
// encrypted. Alice does everything by keyboard: Tab reaches the new-chat box, the composer,
// the Send button and the chat list items; Enter sends and opens; Escape closes the call
// log, folds the new-group form and cancels renaming a device. On her phone none of the
// main screens (sign-up, chat list, chat, settings, call) scrolls sideways. Console
// errors, page errors and unexpected failed requests fail the run; so does any "Unable to
// decrypt". The last stdout line is `RESULT {json}`.

import { check, launchChromium, passEncryptionScreens, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, bobName, password] = process.argv.slice(2);
if (!password) {
    console.error("usage: node web_keyboard.mjs <base_url> <alice> <bob> <password>");
    process.exit(2);
}

const PHONE = { width: 390, height: 844 };
let browser = null;
const problems = [];

async function openPerson(name, viewport) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    watchPage(page, name, { expected: [REGISTER_FLOWS, ...SDK_PROBES], problems });
    // Any "Unable to decrypt" ever shown, even briefly, is recorded.
    await page.addInitScript(() => {
        new MutationObserver(() => {
            if (/unable to decrypt/i.test(document.body?.innerText ?? "")) window.__sawUtd = true;
        }).observe(document, { subtree: true, childList: true, characterData: true });
    });
    return { name, context, page };
}

/** How far the page scrolls sideways (0 when it fits its window). */
const sideways = (page) =>
    page.evaluate(() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) - window.innerWidth);

/**
 * Press Tab until the focused element matches `selector`; the number of presses, or an
 * error when it is not reached in `max` presses (the Tab order skips it).
 */
async function tabTo(page, selector, max = 60) {
    for (let presses = 1; presses <= max; presses++) {
        await page.keyboard.press("Tab");
        if (await page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector)) return presses;
    }
    throw new Error(`Tab never reached ${selector}`);
}

async function signUp(person, username) {
    const { page } = person;
    await page.goto(`${baseUrl}/`);
    await page.waitForSelector("#auth-title");
    const width = await sideways(page);
    // By keyboard: the first Tabs reach the user name, then the password; Enter submits.
    await tabTo(page, "#username");
    await page.keyboard.type(username);
    await tabTo(page, "#password");
    await page.keyboard.type(password);
    await page.keyboard.press("Enter");
    await passEncryptionScreens(page);
    return { userId: await page.textContent("#me"), sideways: width };
}

const bodies = (page) => page.$$eval("#messages li.message .body", (els) => els.map((e) => e.textContent));

async function waitForMessage(page, text) {
    await page.waitForFunction(
        (t) => [...document.querySelectorAll("#messages li.message .body")].some((b) => b.textContent === t),
        text,
        { timeout: 30_000 },
    );
}

async function main(results) {
    browser = await launchChromium({ media: true });
    const alice = await openPerson("alice", PHONE);
    const bob = await openPerson("bob", { width: 1100, height: 700 });
    const widths = {};

    const a = await signUp(alice, aliceName);
    widths.signUp = a.sideways;
    const b = await signUp(bob, bobName);
    results.userIds = { alice: a.userId, bob: b.userId };
    widths.chatList = await sideways(alice.page);

    // Alice starts the chat by keyboard: Tab to the new-chat box, type, Enter.
    await tabTo(alice.page, "#new-chat-user");
    await alice.page.keyboard.type(b.userId);
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#e2e-state");
    results.encrypted = await alice.page.textContent("#e2e-state");
    const roomId = decodeURIComponent(new URL(alice.page.url()).pathname.slice("/chat/".length));
    results.roomId = roomId;

    const bobItem = `#chat-list [data-room-id="${roomId}"]`;
    await bob.page.click(bobItem, { timeout: 30_000 });
    await bob.page.click("#accept-invite");
    await bob.page.waitForSelector("#composer");

    // Tab reaches the composer; Enter sends. Tab from there reaches Send; Enter on it sends.
    await tabTo(alice.page, "#composer");
    await alice.page.keyboard.type("Typed and sent with Enter");
    await alice.page.keyboard.press("Enter");
    await waitForMessage(bob.page, "Typed and sent with Enter");
    await alice.page.focus("#composer");
    await alice.page.keyboard.type("Sent with the Send button");
    results.tabsComposerToSend = await tabTo(alice.page, "#chat form:has(#composer) button[type=submit]", 5);
    await alice.page.keyboard.press("Enter");
    await waitForMessage(bob.page, "Sent with the Send button");
    await bob.page.fill("#composer", "Both arrived, encrypted");
    await bob.page.press("#composer", "Enter");
    await waitForMessage(alice.page, "Both arrived, encrypted");
    widths.chat = await sideways(alice.page);
    results.alice = await bodies(alice.page);
    results.bob = await bodies(bob.page);

    // The call screen on the phone (a voice call Bob declines): started by keyboard.
    await tabTo(alice.page, "#call-voice");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#call-screen", { state: "visible", timeout: 30_000 });
    widths.call = await sideways(alice.page);
    await bob.page.click("#call-decline", { timeout: 30_000 });
    await alice.page.waitForSelector("#call-screen", { state: "hidden", timeout: 30_000 });

    // Back to the list by keyboard (the back button), then Tab reaches the chat item and
    // Enter opens it.
    await tabTo(alice.page, "button.back");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#chat-list");
    results.tabsToChatItem = await tabTo(alice.page, `#chat-list [data-room-id="${roomId}"]`);
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#composer");
    results.reopenedRoom = decodeURIComponent(new URL(alice.page.url()).pathname.slice("/chat/".length));
    await tabTo(alice.page, "button.back");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#chat-list");

    // The call log is a dialog: Escape closes it.
    await tabTo(alice.page, "#open-call-log");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#call-log", { state: "visible" });
    widths.callLog = await sideways(alice.page);
    await alice.page.keyboard.press("Escape");
    await alice.page.waitForSelector("#call-log", { state: "detached" });
    results.callLogClosedByEscape = true;

    // The new-group form: Enter opens it (focus in its name box), Escape folds it away and
    // gives the focus back to its button.
    await tabTo(alice.page, "#gp-new");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#gp-form", { state: "visible" });
    await alice.page.keyboard.press("Escape");
    await alice.page.waitForSelector("#gp-form", { state: "hidden" });
    results.newGroupEscape = await alice.page.evaluate(() => document.activeElement?.id ?? null);

    // Settings, by keyboard; Escape cancels renaming a device.
    await tabTo(alice.page, "#open-settings");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#devices li");
    widths.settings = await sideways(alice.page);
    await tabTo(alice.page, "#devices button.rename");
    await alice.page.keyboard.press("Enter");
    await alice.page.waitForSelector("#devices .device-name-input");
    await alice.page.keyboard.press("Escape");
    await alice.page.waitForSelector("#devices .device-name-input", { state: "detached" });
    results.renameCancelledByEscape = true;
    await alice.page.click("#settings-back");
    await alice.page.waitForSelector("#chat-list");

    results.sideways = widths;
    results.sawUnableToDecrypt = {
        alice: await alice.page.evaluate(() => window.__sawUtd === true),
        bob: await bob.page.evaluate(() => window.__sawUtd === true),
    };
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

await runMain(main, {
    totalMs: 170_000,
    cleanup: async () => {
        await browser?.close();
    },
});
