// The web client's messages (docs/web-client.md) in Chromium: three browser contexts as
// three people in one encrypted group (tests/test_web_messages.py runs it):
//
//   node web_messages.mjs <base_url> <alice> <bob> <carol> <password> <screenshot_dir>
//
// Alice makes a group with Bob and Carol. Each step is checked as the others see it:
// typing notices; who of the group has read a message; a reply (quoted); an edit (shown
// as edited); reactions (counted, one taken back); a delete; a thread (reply count on the
// root, the thread pane both ways); messages Carol writes offline (shown queued, sent when
// she is back, once each), and one whose answer is lost on the way back (resent with the
// same transaction id); Carol scrolling back through history after a reload (older
// messages load, the one she looked at stays in place). Nobody ever sees a message that
// failed to decrypt; console errors fail the run. The last stdout line is `RESULT {json}`.

import { join } from "node:path";

import { check, launchChromium, passEncryptionScreens, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, bobName, carolName, password, shots] = process.argv.slice(2);
if (!shots) {
    console.error("usage: node web_messages.mjs <base_url> <alice> <bob> <carol> <password> <screenshot_dir>");
    process.exit(2);
}

const HISTORY = 20; // messages sent first, so that a reload shows only the latest ones
const WAIT = { timeout: 30_000 };
const EXPECTED_FAILURES = [
    REGISTER_FLOWS,
    ...SDK_PROBES,
];

let browser = null;
const problems = [];

async function openPerson(name, viewport) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    watchPage(page, name, { expected: EXPECTED_FAILURES, problems });
    return { name, context, page };
}

const shot = (person, file) => person.page.screenshot({ path: join(shots, file) });

async function signUp(person, username) {
    const { page } = person;
    await page.goto(`${baseUrl}/`);
    await page.waitForSelector("#auth-title");
    await page.fill("#username", username);
    await page.fill("#password", password);
    await page.press("#password", "Enter");
    await passEncryptionScreens(page);
    return page.textContent("#me");
}

/** The message whose text is `text`, in the chat (`messages`) or the thread pane. */
const message = (page, text, list = "messages") =>
    page.locator(`xpath=//ol[@id="${list}"]/li[contains(@class,"message")][span[@class="body"][.="${text}"]]`);

async function seen(page, text, list = "messages") {
    await message(page, text, list).first().waitFor(WAIT);
    return describe(message(page, text, list).first());
}

/** What a person sees of one message. */
function describe(locator) {
    return locator.evaluate((li) => ({
        body: li.querySelector(":scope > .body")?.textContent ?? "",
        sender: li.querySelector(":scope > .sender")?.textContent ?? null,
        edited: li.querySelector(":scope > .edited") !== null,
        deleted: li.hasAttribute("data-deleted"),
        quote: li.querySelector(".reply-quote")
            ? { sender: li.querySelector(".reply-quote .sender").textContent, body: li.querySelector(".reply-quote .quote-body").textContent }
            : null,
        reactions: [...li.querySelectorAll(".reaction")].map((r) => ({ text: r.textContent, mine: r.getAttribute("aria-pressed") === "true" })),
        thread: li.querySelector(".thread-summary")?.textContent ?? null,
        tick: li.querySelector(".tick")?.getAttribute("aria-label") ?? null,
        readBy: li.querySelector(".read-by")?.textContent ?? null,
    }));
}

async function act(page, text, action, list = "messages") {
    const li = message(page, text, list).first();
    await li.hover();
    await li.locator(`.actions .${action}`).first().click();
}

async function send(page, text, composer = "#composer") {
    await page.fill(composer, text);
    await page.press(composer, "Enter");
}

async function until(page, fn, arg) {
    await page.waitForFunction(fn, arg, WAIT);
}

const bodies = (page, list = "messages") => page.$$eval(`#${list} li.message > .body`, (els) => els.map((e) => e.textContent));

async function main(results) {
    browser = await launchChromium();
    const alice = await openPerson("alice", { width: 1100, height: 760 });
    const bob = await openPerson("bob", { width: 1100, height: 760 });
    const carol = await openPerson("carol", { width: 390, height: 780 });
    const ids = {};
    for (const [person, name] of [[alice, aliceName], [bob, bobName], [carol, carolName]]) ids[person.name] = await signUp(person, name);
    results.userIds = ids;

    // Alice makes an encrypted group with Bob and Carol (group screens are another slice).
    const roomId = await alice.page.evaluate(async ({ bob, carol }) => {
        const { accessToken } = JSON.parse(localStorage.getItem("hs.session"));
        const r = await fetch("/_matrix/client/v3/createRoom", {
            method: "POST",
            headers: { Authorization: `Bearer ${accessToken}`, "Content-Type": "application/json" },
            body: JSON.stringify({
                name: "Lunch crew",
                preset: "private_chat",
                invite: [bob, carol],
                initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
            }),
        });
        return (await r.json()).room_id;
    }, { bob: ids.bob, carol: ids.carol });
    results.roomId = roomId;
    const item = `#chat-list [data-room-id="${roomId}"]`;
    for (const person of [bob, carol]) {
        await person.page.click(item, WAIT);
        await person.page.click("#accept-invite");
        await person.page.waitForSelector("#composer");
    }
    await alice.page.click(item, WAIT);
    await alice.page.waitForSelector("#composer");

    // Typing: Bob and Carol write; Alice sees both typing (so her client has both joins).
    await bob.page.fill("#composer", "Hi all");
    await carol.page.fill("#composer", "Hello");
    await until(alice.page, () => / are typing…$/.test(document.querySelector("#typing")?.textContent ?? ""));
    results.typing = await alice.page.textContent("#typing");
    await shot(alice, "typing.png");
    await bob.page.press("#composer", "Enter");
    await carol.page.fill("#composer", "");
    await until(alice.page, () => document.querySelector("#typing")?.textContent === "");
    results.typingAfter = await alice.page.textContent("#typing");
    await seen(alice.page, "Hi all");

    // History for the scroll-back step at the end.
    for (let i = 1; i <= HISTORY; i++) await send(alice.page, `history ${i}`);
    await seen(carol.page, `history ${HISTORY}`);

    // Read per member: Carol steps out; Alice's message is read by Bob, then by Carol too.
    await carol.page.click("button.back");
    await send(alice.page, "Lunch at noon?");
    await seen(bob.page, "Lunch at noon?");
    await message(alice.page, "Lunch at noon?").locator(".read-by").waitFor(WAIT);
    results.readByBob = await seen(alice.page, "Lunch at noon?");
    await carol.page.click(item);
    await message(alice.page, "Lunch at noon?").locator('.tick[aria-label="read"]').waitFor(WAIT);
    results.readByAll = await seen(alice.page, "Lunch at noon?");

    // Reply: Bob answers Alice's message; Alice and Carol see it quoted.
    await act(bob.page, "Lunch at noon?", "reply");
    results.replyBanner = await bob.page.textContent("#composer-mode");
    await send(bob.page, "Yes, 12:30 works");
    results.replyAsAlice = await seen(alice.page, "Yes, 12:30 works");
    results.replyAsCarol = await seen(carol.page, "Yes, 12:30 works");

    // Edit: Alice changes her message; Bob sees the new text, marked edited.
    await act(alice.page, "Lunch at noon?", "edit");
    await send(alice.page, "Lunch at 1pm?");
    results.editAsBob = await seen(bob.page, "Lunch at 1pm?");
    results.bobStillSeesOld = await message(bob.page, "Lunch at noon?").count();

    // Reactions: Bob and Carol react 👍; Alice sees 2; Bob takes his back; Alice sees 1.
    await act(bob.page, "Lunch at 1pm?", "react");
    await act(carol.page, "Lunch at 1pm?", "react");
    await until(alice.page, () => [...document.querySelectorAll("#messages .reaction")].some((r) => r.textContent === "👍 2"));
    results.reactionsAsAlice = await seen(alice.page, "Lunch at 1pm?");
    await message(bob.page, "Lunch at 1pm?").locator('.reaction[aria-pressed="true"]').waitFor(WAIT);
    results.reactionsAsBob = await seen(bob.page, "Lunch at 1pm?");
    await shot(alice, "message-reply-edit-reactions.png");
    await message(bob.page, "Lunch at 1pm?").locator(".reaction").click();
    await until(alice.page, () => [...document.querySelectorAll("#messages .reaction")].some((r) => r.textContent === "👍 1"));
    results.reactionsAfterToggle = await seen(alice.page, "Lunch at 1pm?");

    // Delete: Carol takes a message back; the others see it deleted.
    await send(carol.page, "Oops, wrong chat");
    const oops = await seen(alice.page, "Oops, wrong chat");
    await act(carol.page, "Oops, wrong chat", "delete");
    await until(alice.page, () => [...document.querySelectorAll("#messages li[data-deleted] .body")].length === 1);
    results.deleteAsAlice = { before: oops.body, after: await describe(alice.page.locator("#messages li[data-deleted]")) };
    await until(bob.page, () => document.querySelectorAll("#messages li[data-deleted]").length === 1);
    results.bobSeesOops = await message(bob.page, "Oops, wrong chat").count();

    // Thread: Bob replies in a thread on Alice's message; Alice sees the count and opens it.
    await act(bob.page, "Lunch at 1pm?", "thread");
    await bob.page.waitForSelector("#thread-composer");
    await send(bob.page, "I may be late", "#thread-composer");
    await message(alice.page, "Lunch at 1pm?").locator(".thread-summary").waitFor(WAIT);
    results.threadRootAsAlice = await seen(alice.page, "Lunch at 1pm?");
    await message(alice.page, "Lunch at 1pm?").locator(".thread-summary").click();
    results.threadAsAlice = await seen(alice.page, "I may be late", "thread-messages");
    await send(alice.page, "No problem", "#thread-composer");
    results.threadAnswerAsBob = await seen(bob.page, "No problem", "thread-messages");
    results.threadPaneAsBob = await bodies(bob.page, "thread-messages");
    await until(alice.page, () => [...document.querySelectorAll("#messages .thread-summary")].some((t) => t.textContent === "2 replies"));
    results.mainAsAlice = await bodies(alice.page);
    await shot(bob, "thread.png");
    // By keyboard: Escape in the thread's box closes the pane.
    await alice.page.focus("#thread-composer");
    await alice.page.keyboard.press("Escape");
    await alice.page.waitForSelector("#thread", { state: "hidden", timeout: 5_000 });
    results.threadClosedByEscape = true;
    await bob.page.click("#thread-close");
    // A reply to an old message (Carol will see it quoted after a reload, not loaded).
    await act(bob.page, "history 1", "reply");
    await send(bob.page, "Back to the first one");
    await seen(carol.page, "Back to the first one");

    // Offline: Carol writes two messages with no connection; they show queued, and are sent
    // when she is back, in order, once each.
    await carol.context.setOffline(true);
    await send(carol.page, "Written offline 1");
    await send(carol.page, "Written offline 2");
    await until(carol.page, () => document.querySelectorAll('#messages .tick[aria-label="queued"]').length === 2);
    results.offlineAsCarol = [await seen(carol.page, "Written offline 1"), await seen(carol.page, "Written offline 2")];
    await shot(carol, "offline-queued.png");
    const aliceBeforeOnline = await bodies(alice.page);
    await carol.context.setOffline(false);
    await seen(alice.page, "Written offline 2");
    results.offlineAsAlice = { before: aliceBeforeOnline.filter((b) => b.startsWith("Written offline")), after: (await bodies(alice.page)).slice(-2) };
    await message(carol.page, "Written offline 2").locator('.tick:not([aria-label="queued"]):not([aria-label="sending"])').waitFor(WAIT);

    // The answer to a send is lost on its way back (the server has the message), and
    // Carol's sync is held meanwhile (else it would bring the message back and settle it):
    // her client sends it again with the same transaction id, and the server keeps one.
    const held = [];
    let syncHeld;
    const firstHeld = new Promise((resolve) => { syncHeld = resolve; });
    let holding = true;
    await carol.page.route(/\/_matrix\/client\/v3\/sync/, (route) => {
        if (!holding) return route.continue();
        held.push(route);
        syncHeld();
    });
    await alice.page.fill("#composer", "…"); // Alice's typing ends Carol's current long poll
    await firstHeld;
    const puts = [];
    let resent;
    const secondPut = new Promise((resolve) => { resent = resolve; });
    await carol.page.route(/\/send\/m\.room\.encrypted\//, async (route) => {
        const response = await route.fetch();
        puts.push({ path: new URL(route.request().url()).pathname, status: response.status(), eventId: (await response.json()).event_id });
        if (puts.length === 1) {
            await route.abort("connectionreset");
        } else {
            await route.fulfill({ response });
            resent();
        }
    });
    await send(carol.page, "Answer lost on the way");
    await secondPut;
    await carol.page.unroute(/\/send\/m\.room\.encrypted\//);
    holding = false;
    for (const route of held) await route.continue();
    await carol.page.unroute(/\/_matrix\/client\/v3\/sync/);
    await alice.page.fill("#composer", "");
    await message(carol.page, "Answer lost on the way").locator('.tick:not([aria-label="queued"]):not([aria-label="sending"])').waitFor(WAIT);
    results.lostAnswer = { puts };
    await seen(alice.page, "Answer lost on the way");
    results.lostAnswerAsAlice = await message(alice.page, "Answer lost on the way").count();

    // History: Carol reloads (only the latest messages come with the first sync) and
    // scrolls back to the first one; the message at the top stays in place as older load.
    await carol.page.reload();
    await seen(carol.page, "Answer lost on the way");
    // The reply to a message older than what loaded still quotes it (fetched by id).
    await message(carol.page, "Back to the first one").locator('xpath=.//span[@class="quote-body"][.="history 1"]').waitFor(WAIT);
    results.quoteAfterReload = { reply: await seen(carol.page, "Back to the first one"), originalLoaded: await message(carol.page, "history 1").count() };
    const list = carol.page.locator("#messages");
    const before = await list.evaluate((ol) => {
        const first = ol.querySelector("li.message[data-event-id]");
        return { count: ol.querySelectorAll("li.message").length, first: first.dataset.eventId, text: first.querySelector(".body").textContent };
    });
    await list.evaluate((ol) => { ol.scrollTop = 0; });
    await until(carol.page, (n) => document.querySelectorAll("#messages li.message").length > n, before.count);
    const kept = await list.evaluate((ol, id) => {
        const li = ol.querySelector(`li[data-event-id="${CSS.escape(id)}"]`);
        const top = li.getBoundingClientRect().top - ol.getBoundingClientRect().top;
        return { top, scrollTop: ol.scrollTop, height: ol.clientHeight };
    }, before.first);
    // On to the very first message: each scroll to the top loads one more page.
    for (let i = 0; i < 10 && !(await message(carol.page, "history 1").count()); i++) {
        const shown = await list.evaluate((ol) => ol.querySelectorAll("li.message").length);
        await list.evaluate((ol) => { ol.scrollTop = 0; });
        await until(carol.page, (n) => document.querySelectorAll("#messages li.message").length > n, shown);
    }
    results.history = { before, kept, all: await bodies(carol.page) };

    for (const person of [alice, bob, carol]) {
        const failed = await person.page.$$("#messages [data-failed], #thread-messages [data-failed]");
        check(failed.length === 0, `${person.name} sees no undecryptable message`);
    }
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

await runMain(main, {
    totalMs: 170_000,
    cleanup: async () => {
        await browser?.close();
    },
});
