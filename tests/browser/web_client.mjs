// The web client (web/, served by the homeserver at /) in Chromium, two browser contexts
// as two people (tests/test_web_client.py runs it):
//
//   node web_client.mjs <base_url> <alice> <bob> <password> <screenshot_dir>
//
// Both sign up through the page (and save their recovery keys); Bob logs out and back in
// (a new device, confirmed with his recovery key); Alice (a
// phone-sized window) starts a chat with Bob's user id; Bob (a desktop window) accepts it;
// they write to each other and each reads the other's words; Alice's message shows read
// once Bob has seen it; a message that arrives while Alice is on the chat list shows there
// with an unread count, and to Bob as delivered, then read once she opens the chat; Bob
// reloads and still reads the chat; neither ever sees a message that failed to decrypt.
// Console errors, page errors and unexpected failed requests fail the run. The last
// stdout line is `RESULT {json}`.

import { join } from "node:path";

import { check, launchChromium, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, bobName, password, shots] = process.argv.slice(2);
if (!shots) {
    console.error("usage: node web_client.mjs <base_url> <alice> <bob> <password> <screenshot_dir>");
    process.exit(2);
}

// Failed requests a working client makes on purpose: the first POST /register asks for the
// server's sign-up flows (401); the SDK probes for a key backup and for MatrixRTC
// transports that do not exist yet (404).
const EXPECTED_FAILURES = [
    REGISTER_FLOWS,
    ...SDK_PROBES,
];

let browser = null;
const problems = [];
const failedRequests = [];

async function openPerson(name, viewport) {
    const context = await browser.newContext({ viewport });
    // The app badge is drawn by the OS on an installed app's icon: here, what the page asks for.
    await context.addInitScript(() => {
        window.badgeCalls = [];
        navigator.setAppBadge = (n) => Promise.resolve(void window.badgeCalls.push(n));
        navigator.clearAppBadge = () => Promise.resolve(void window.badgeCalls.push(0));
    });
    const page = await context.newPage();
    watchPage(page, name, { expected: EXPECTED_FAILURES, problems, failedRequests });
    return { name, context, page };
}

const shot = (person, file) => person.page.screenshot({ path: join(shots, file) });

async function signUp(person, username) {
    const { page } = person;
    await page.goto(`${baseUrl}/`);
    await page.waitForSelector("#auth-title");
    const title = await page.textContent("#auth-title");
    await page.fill("#username", username);
    await page.fill("#password", password);
    if (person.name === "alice") await shot(person, "sign-up.png");
    await page.press("#password", "Enter"); // by keyboard
    // The recovery key is shown once (tests/browser/web_e2ee.mjs covers that screen).
    await page.waitForSelector("#recovery-key", { timeout: 30_000 });
    const recoveryKey = (await page.textContent("#recovery-key")).trim();
    await page.check("#saved-recovery-key");
    await page.click("#recovery-continue");
    await page.waitForSelector("#chat-list");
    return { title, userId: await page.textContent("#me"), recoveryKey };
}

/** The text of the messages shown in the open chat, and whether any failed to decrypt. */
async function shownMessages(page) {
    return page.$$eval("#messages li.message", (items) =>
        items.map((li) => ({
            body: li.querySelector(".body")?.textContent ?? "",
            mine: li.classList.contains("mine"),
            failed: li.hasAttribute("data-failed"),
            tick: li.querySelector(".tick")?.getAttribute("aria-label") ?? null,
        })),
    );
}

async function waitForMessage(page, text) {
    await page.waitForFunction(
        (t) => [...document.querySelectorAll("#messages li.message .body")].some((b) => b.textContent === t),
        text,
        { timeout: 30_000 },
    );
}

async function send(page, text) {
    await page.fill("#composer", text);
    await page.press("#composer", "Enter");
}

async function main(results) {
    browser = await launchChromium();
    const alice = await openPerson("alice", { width: 390, height: 780 });
    const bob = await openPerson("bob", { width: 1100, height: 700 });

    // Both sign up through the page.
    const a = await signUp(alice, aliceName);
    const b = await signUp(bob, bobName);
    results.signUp = { alice: { title: a.title, userId: a.userId }, bob: { title: b.title, userId: b.userId } };
    check(a.title === "Create your account", `the first screen is sign-up: ${a.title}`);

    // Bob logs out, lands on login, and logs back in (a new device) to his empty list.
    await bob.page.click("#logout");
    await bob.page.waitForSelector("#auth-title");
    results.afterLogout = { title: await bob.page.textContent("#auth-title"), path: new URL(bob.page.url()).pathname };
    await shot(bob, "login.png");
    await bob.page.fill("#username", bobName);
    await bob.page.fill("#password", password);
    await bob.page.click("button[type=submit]");
    // A new device: he confirms it is him with his recovery key.
    await bob.page.waitForSelector("#recovery-key-input", { timeout: 30_000 });
    await bob.page.fill("#recovery-key-input", b.recoveryKey);
    await bob.page.click("#use-recovery-key");
    await bob.page.click("#verify-done", { timeout: 30_000 });
    await bob.page.waitForSelector("#chat-list");
    results.afterLogin = { path: new URL(bob.page.url()).pathname, list: await bob.page.textContent("#chat-list") };

    // Alice starts a chat with Bob's user id: encrypted from the start.
    await alice.page.fill("#new-chat-user", b.userId);
    await alice.page.click("#new-chat-start");
    await alice.page.waitForSelector("#e2e-state");
    results.roomPath = new URL(alice.page.url()).pathname;
    results.encryptedShown = await alice.page.textContent("#e2e-state");
    const roomId = decodeURIComponent(results.roomPath.slice("/chat/".length));
    results.roomId = roomId;

    // Bob sees the invitation in his list and accepts it.
    const bobItem = `#chat-list [data-room-id="${roomId}"]`;
    await bob.page.waitForSelector(bobItem, { timeout: 30_000 });
    results.bobInvitePreview = await bob.page.textContent(`${bobItem} .chat-last`);
    await bob.page.click(bobItem);
    await bob.page.click("#accept-invite");
    await bob.page.waitForSelector("#composer");

    // They write to each other; each reads the other's words.
    await send(alice.page, "Hello Bob, this is encrypted");
    await waitForMessage(bob.page, "Hello Bob, this is encrypted");
    await send(bob.page, "Hi Alice! Reading you fine");
    await waitForMessage(alice.page, "Hi Alice! Reading you fine");

    // Bob has the chat open, so Alice's message shows read.
    await alice.page.waitForSelector('#messages li.mine .tick[aria-label="read"]', { timeout: 30_000 });
    results.alice = { messages: await shownMessages(alice.page) };
    results.bob = { messages: await shownMessages(bob.page) };
    await shot(alice, "chat-phone.png");
    await shot(bob, "chat-desktop.png");

    // Alice goes back to her list; Bob writes; the list shows it, unread.
    await alice.page.click("button.back");
    await alice.page.waitForSelector("#chat-list");
    await send(bob.page, "Are you still there?");
    const aliceItem = `#chat-list [data-room-id="${roomId}"]`;
    await alice.page.waitForFunction(
        (sel) => document.querySelector(`${sel} .chat-last`)?.textContent === "Are you still there?" && document.querySelector(`${sel} .unread`),
        aliceItem,
        { timeout: 30_000 },
    );
    results.aliceList = {
        name: await alice.page.textContent(`${aliceItem} .chat-name`),
        last: await alice.page.textContent(`${aliceItem} .chat-last`),
        unread: await alice.page.textContent(`${aliceItem} .unread`),
        title: await alice.page.title(),
        badge: await alice.page.evaluate(() => window.badgeCalls.at(-1)),
    };
    await shot(alice, "chat-list-phone.png");
    // Alice's device has it, unread: Bob sees it delivered (the server's message status).
    const lastTick = (state) => `#messages li.mine:last-child .tick[aria-label="${state}"]`;
    await bob.page.waitForSelector(lastTick("delivered"), { timeout: 30_000 });
    results.bobTickBeforeAliceOpens = (await shownMessages(bob.page)).at(-1);
    // Opening the chat reads it: the count goes, and Bob sees it read.
    await alice.page.click(aliceItem);
    await waitForMessage(alice.page, "Are you still there?");
    await bob.page.waitForSelector(lastTick("read"), { timeout: 30_000 });
    results.bobTickAfterAliceOpened = (await shownMessages(bob.page)).at(-1);
    await alice.page.click("button.back");
    await alice.page.waitForFunction((sel) => !document.querySelector(`${sel} .unread`), aliceItem, { timeout: 30_000 });
    results.aliceUnreadAfterOpening = await alice.page.$(`${aliceItem} .unread`) !== null;
    results.aliceTitleAfterOpening = await alice.page.title();
    results.aliceBadgeAfterOpening = await alice.page.evaluate(() => window.badgeCalls.at(-1));

    // Bob reloads: still signed in, on the same chat, every message readable.
    await bob.page.reload();
    await waitForMessage(bob.page, "Are you still there?");
    await waitForMessage(bob.page, "Hello Bob, this is encrypted");
    results.bobAfterReload = { path: new URL(bob.page.url()).pathname, messages: await shownMessages(bob.page) };

    // Nothing either of them was shown failed to decrypt, in the list or in the chat.
    for (const person of [alice, bob]) {
        const texts = await person.page.$$eval("#messages .body, #chat-list .chat-last", (els) => els.map((e) => e.textContent));
        const failed = await person.page.$$("#messages [data-failed]");
        check(failed.length === 0 && !texts.some((t) => /unable to decrypt/i.test(t)), `${person.name} sees no undecryptable message`);
    }
    results.failedRequests = [...new Set(failedRequests)].sort();
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

await runMain(main, {
    totalMs: 150_000,
    cleanup: async () => {
        await browser?.close();
    },
});
