// The chat list holds its order while the user aims at it (docs/web-client.md, "Chat
// list"), in Chromium (tests/test_web_chat_order.py runs it):
//
//   node web_chat_order.mjs <base_url> <alice> <password> <bob_token> <rooms_json>
//
// <rooms_json> maps each chat's name to its room id; Bob (an API client, his access token)
// wrote in each, in the order given, so the list starts newest first. Alice logs in. Her
// pointer rests on one chat's row while Bob writes into the bottom chat: that row shows
// the new message and unread count in place, nothing moves, and a click where the pointer
// is opens the chat under it. The pointer leaves: the bottom chat goes to the top. Then by
// keyboard: a row focused with Tab holds the order the same way, and Enter opens it.
// Console errors fail the run. The last stdout line is `RESULT {json}`.

import { check, launchChromium, passEncryptionScreens, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, password, bobToken, roomsJson] = process.argv.slice(2);
if (!roomsJson) {
    console.error("usage: node web_chat_order.mjs <base_url> <alice> <password> <bob_token> <rooms_json>");
    process.exit(2);
}
const rooms = JSON.parse(roomsJson);
const names = Object.keys(rooms);
check(names.length === 4, "four chats");
const [first, second, third, fourth] = names.map((name) => rooms[name]); // oldest first

const WAIT = { timeout: 30_000 };
let browser = null;
const problems = [];
let txn = 0;

/** Bob writes into `roomId` through the client-server API. */
async function bobSends(roomId, body) {
    const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/order${++txn}`;
    const response = await fetch(baseUrl + path, {
        method: "PUT",
        headers: { Authorization: `Bearer ${bobToken}`, "Content-Type": "application/json" },
        body: JSON.stringify({ msgtype: "m.text", body }),
    });
    check(response.ok, `Bob's message: ${response.status} ${await response.text()}`);
}

/** The rows' room ids, top to bottom. */
const order = (page) =>
    page.$$eval("#chat-list .chat-item", (rows) => rows.map((row) => row.dataset.roomId));

/** The room id of the row at a point of the page (what a click there hits). */
const rowAt = (page, { x, y }) =>
    page.evaluate(([x, y]) => document.elementFromPoint(x, y)?.closest(".chat-item")?.dataset.roomId ?? null, [x, y]);

/** The unread count on `roomId`'s row (0 without one). */
const unreadOn = (page, roomId) =>
    page.evaluate((id) => Number(document.querySelector(`#chat-list [data-room-id="${id}"] .unread`)?.textContent ?? 0), roomId);

/** Wait until `roomId`'s row shows `body` as its last message and `unread` as its count. */
async function newsShown(page, roomId, body, unread) {
    const row = `#chat-list [data-room-id="${roomId}"]`;
    try {
        await page.waitForFunction(
            ([row, body, unread]) =>
                document.querySelector(`${row} .chat-last`)?.textContent === body &&
                document.querySelector(`${row} .unread`)?.textContent === unread,
            [row, body, unread],
            WAIT,
        );
    } catch (e) {
        throw new Error(`${e.message}; the row shows ${JSON.stringify(await page.locator(row).innerText())}`);
    }
}

const waitForOrder = (page, ids) =>
    page.waitForFunction(
        (ids) => [...document.querySelectorAll("#chat-list .chat-item")].map((row) => row.dataset.roomId).join() === ids.join(),
        ids,
        WAIT,
    );

const openChat = async (page) => ({
    roomId: await page.evaluate(() => decodeURIComponent(location.pathname.replace(/^\/chat\//, ""))),
    title: await page.locator("#chat-title").textContent(),
});

async function main(results) {
    browser = await launchChromium();
    results.problems = problems;
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const page = await context.newPage();
    watchPage(page, "alice", { expected: [REGISTER_FLOWS, ...SDK_PROBES], problems });

    await page.goto(`${baseUrl}/login`);
    await page.fill("#username", aliceName);
    await page.fill("#password", password);
    await page.click("#auth-submit");
    await passEncryptionScreens(page);
    await waitForOrder(page, [fourth, third, second, first]);
    results.before = await order(page);

    // The pointer comes to rest on the second row (the third chat) and stays there.
    const box = await page.locator(`#chat-list [data-room-id="${third}"]`).boundingBox();
    const point = { x: box.x + box.width / 2, y: box.y + box.height / 2 };
    await page.mouse.move(point.x, point.y, { steps: 5 });
    results.pointerOver = await rowAt(page, point);

    // Bob writes into the bottom chat: its row shows it, in its place.
    const unread = await unreadOn(page, first);
    await bobSends(first, "Are you coming tonight?");
    await newsShown(page, first, "Are you coming tonight?", String(unread + 1));
    results.held = { order: await order(page), rowUnderPointer: await rowAt(page, point) };
    // Fails here, not 30 s later, when the rows moved (the test reads the details).
    check(results.held.rowUnderPointer === third, "the row under the pointer shows the chat it showed");

    // A click where the pointer rests opens the chat shown there.
    await page.mouse.down();
    await page.mouse.up();
    await page.waitForFunction((id) => location.pathname === `/chat/${encodeURIComponent(id)}`, results.held.rowUnderPointer, WAIT);
    results.clicked = await openChat(page);

    // The pointer leaves the list (for the open chat): the list re-sorts.
    const pane = await page.locator("#messages").boundingBox();
    await page.mouse.move(pane.x + pane.width / 2, pane.y + pane.height / 2, { steps: 5 });
    await waitForOrder(page, [first, fourth, third, second]);
    results.afterLeave = await order(page);

    // By keyboard: Tab from the top row to the next one (the fourth chat), then Bob writes
    // into the bottom chat (the second).
    await page.focus(`#chat-list [data-room-id="${first}"]`);
    await page.keyboard.press("Tab");
    results.keyboardFocus = await page.evaluate(() => document.activeElement?.dataset.roomId ?? null);
    const unreadSecond = await unreadOn(page, second);
    await bobSends(second, "Bring the board game");
    await newsShown(page, second, "Bring the board game", String(unreadSecond + 1));
    results.heldByKeyboard = {
        order: await order(page),
        focused: await page.evaluate(() => document.activeElement?.dataset.roomId ?? null),
    };
    check(results.heldByKeyboard.focused === fourth, "the focused row kept its focus");
    await page.keyboard.press("Enter");
    await page.waitForFunction((id) => location.pathname === `/chat/${encodeURIComponent(id)}`, results.heldByKeyboard.focused, WAIT);
    results.entered = await openChat(page);
    // Focus went to the message box: the list re-sorts.
    await waitForOrder(page, [second, first, fourth, third]);
    results.afterEnter = await order(page);

    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

await runMain(main, {
    totalMs: 110_000,
    cleanup: async () => {
        await browser?.close();
    },
});
