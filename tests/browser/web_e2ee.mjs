// The web client's encryption set-up in Chromium (tests/test_web_e2ee.py runs it):
//
//   node web_e2ee.mjs <base_url> <alice> <bob> <password> <screenshot_dir> <carol>
//
// Alice and Bob sign up (each is shown a recovery key and saves it) and chat, encrypted.
// Alice logs in on a second browser context with her recovery key: it becomes verified and
// her earlier messages decrypt from the key backup. She logs in on a third one and verifies
// it by emoji against the first: when she says the emoji do not match, both sides say so
// and nothing is verified; on a second try both show the same seven emoji, both confirm:
// verified, earlier messages readable there too. Then Alice and Bob verify each other by emoji from
// the chat's member list and each sees the other marked verified. In both, the page that asked
// is garbage-collected while it waits for the other side to accept: one that kept no hold of
// its request stalled there for good, its emoji never shown (first seen on a busy machine).
// When a step fails, each page's verification log is printed. Any "Unable to decrypt"
// ever shown, console errors, page errors and unexpected failed requests fail the run.
// Carol, an account made through the API before (no cross-signing), gets the set-up and
// her recovery key at her first login in the page.
// The last stdout line is `RESULT {json}`.

import { readFileSync } from "node:fs";
import { join } from "node:path";

import { check, launchChromium, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, bobName, password, shots, carolName] = process.argv.slice(2);
if (!carolName) {
    console.error("usage: node web_e2ee.mjs <base_url> <alice> <bob> <password> <screenshot_dir> <carol>");
    process.exit(2);
}

// Failed requests a working client makes on purpose: the first POST /register asks for the
// sign-up flows (401); the SDK probes for a key backup (before one exists) and for MatrixRTC
// transports (404). The first cross-signing upload needs no password here (spec v1.11).
const EXPECTED_FAILURES = [
    REGISTER_FLOWS,
    ...SDK_PROBES,
];
const WAIT = { timeout: 30_000 };

let browser = null;
const people = [];
const problems = [];
const failedRequests = [];

async function openPerson(name, viewport = { width: 1000, height: 720 }) {
    const context = await browser.newContext({ viewport });
    // Remember any "Unable to decrypt" the page ever shows, however briefly.
    await context.addInitScript(() => {
        window.__undecryptable = [];
        new MutationObserver(() => {
            const text = document.body?.innerText ?? "";
            if (/unable to decrypt/i.test(text)) window.__undecryptable.push(text.slice(0, 300));
        }).observe(document, { childList: true, subtree: true, characterData: true });
    });
    const page = await context.newPage();
    watchPage(page, name, { expected: EXPECTED_FAILURES, problems, failedRequests });
    const person = { name, context, page };
    people.push(person);
    return person;
}

const shot = (person, file) => person.page.screenshot({ path: join(shots, file) });

/** Sign up through the page; returns the recovery key it showed. */
async function signUp(person, username, screenshot) {
    const { page } = person;
    await page.goto(`${baseUrl}/signup`);
    await page.fill("#username", username);
    await page.fill("#password", password);
    await page.press("#password", "Enter");
    await page.waitForSelector("#recovery-key", WAIT);
    const recoveryKey = (await page.textContent("#recovery-key")).trim();
    const continueDisabled = await page.isDisabled("#recovery-continue");
    let copied = null;
    let downloaded = null;
    if (screenshot) {
        await shot(person, "recovery-key.png");
        // Copy puts the key on the clipboard; Download saves a file that holds it.
        await person.context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: baseUrl });
        await page.click("#copy-recovery-key");
        await page.waitForFunction(() => document.querySelector("#copy-status")?.textContent, null, WAIT);
        copied = (await page.evaluate(() => navigator.clipboard.readText())) === recoveryKey;
        const [file] = await Promise.all([page.waitForEvent("download"), page.click("#download-recovery-key")]);
        const text = readFileSync(await file.path(), "utf8");
        downloaded = { name: file.suggestedFilename(), holdsKey: text.includes(recoveryKey) };
    }
    await page.check("#saved-recovery-key");
    await page.click("#recovery-continue");
    await page.waitForSelector("#chat-list", WAIT);
    return { recoveryKey, continueDisabled, copied, downloaded };
}

/** Log in on a new browser context (a new device): lands on "Confirm it's you". */
async function logInNewDevice(person, username) {
    const { page } = person;
    await page.goto(`${baseUrl}/login`);
    await page.fill("#username", username);
    await page.fill("#password", password);
    await page.press("#password", "Enter");
    await page.waitForSelector("#verify-title", WAIT);
    return page.textContent("#verify-title");
}

async function waitForMessage(page, text) {
    await page.waitForFunction(
        (t) => [...document.querySelectorAll("#messages li.message .body")].some((b) => b.textContent === t),
        text,
        WAIT,
    );
}

async function send(page, text) {
    await page.fill("#composer", text);
    await page.press("#composer", "Enter");
}

const bodies = (page) => page.$$eval("#messages li.message .body", (els) => els.map((e) => e.textContent));

async function openChat(page, roomId) {
    const item = `#chat-list [data-room-id="${roomId}"]`;
    await page.waitForSelector(item, WAIT);
    await page.click(item);
    await page.waitForSelector("#chat-title", WAIT);
}

const emojiOf = (page) =>
    page.$$eval("#sas-emoji li", (items) =>
        items.map((li) => `${li.querySelector(".emoji").textContent} ${li.querySelector(".emoji-name").textContent}`),
    );

/** How many message keys of `roomId` the server's key backup holds, as `page`'s user. */
const backedUpSessions = (page, roomId) =>
    page.evaluate(async (room) => {
        const { accessToken } = JSON.parse(localStorage.getItem("hs.session"));
        const headers = { Authorization: `Bearer ${accessToken}` };
        const version = await (await fetch("/_matrix/client/v3/room_keys/version", { headers })).json();
        const url = `/_matrix/client/v3/room_keys/keys/${encodeURIComponent(room)}?version=${version.version}`;
        const keys = await (await fetch(url, { headers })).json();
        return Object.keys(keys.sessions ?? {}).length;
    }, roomId);

/** A full garbage collection in `page` now, as one may come at any moment. */
async function collectGarbage(page) {
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("HeapProfiler.collectGarbage");
    await cdp.detach();
}

/** Poll `condition` (an async check against the server) until it holds, for at most 30 s. */
async function waitFor(condition, what) {
    const deadline = Date.now() + 30_000;
    while (!(await condition())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((ok) => setTimeout(ok, 300));
    }
}

async function main(results) {
    browser = await launchChromium();
    const alice = await openPerson("alice");
    const bob = await openPerson("bob");

    // Sign-up: each is shown a recovery key, saved before going on.
    const a = await signUp(alice, aliceName, true);
    const b = await signUp(bob, bobName, false);
    results.signUp = {
        aliceKeyGroups: a.recoveryKey.split(" ").length,
        differentKeys: a.recoveryKey !== b.recoveryKey,
        continueDisabledUntilSaved: a.continueDisabled,
        copied: a.copied,
        downloaded: a.downloaded,
    };
    const bobId = await bob.page.textContent("#me");
    const aliceId = await alice.page.textContent("#me");

    // They chat, encrypted.
    await alice.page.fill("#new-chat-user", bobId);
    await alice.page.click("#new-chat-start");
    await alice.page.waitForSelector("#e2e-state");
    const roomId = decodeURIComponent(new URL(alice.page.url()).pathname.slice("/chat/".length));
    results.roomId = roomId;
    await openChat(bob.page, roomId);
    await bob.page.click("#accept-invite");
    await bob.page.waitForSelector("#composer", WAIT);
    await send(alice.page, "Before the new devices");
    await waitForMessage(bob.page, "Before the new devices");
    await send(bob.page, "Bob's reply, also encrypted");
    await waitForMessage(alice.page, "Bob's reply, also encrypted");
    const history = ["Before the new devices", "Bob's reply, also encrypted"];

    // Alice's first device backs up both message keys, hers and Bob's (the SDK waits up to
    // 10 s before an upload).
    await waitFor(async () => (await backedUpSessions(alice.page, roomId)) >= 2, "both keys in the backup");
    results.backedUp = await backedUpSessions(alice.page, roomId);

    // A second device with the recovery key: verified, and the earlier messages decrypt.
    const alice2 = await openPerson("alice-2");
    results.newDeviceTitle = await logInNewDevice(alice2, aliceName);
    await shot(alice2, "new-device.png");
    await alice2.page.fill("#recovery-key-input", "EsTc not a recovery key");
    await alice2.page.click("#use-recovery-key");
    await alice2.page.waitForFunction(() => document.querySelector("#verify-error")?.textContent, null, WAIT);
    results.badKeyError = await alice2.page.textContent("#verify-error");
    await alice2.page.fill("#recovery-key-input", a.recoveryKey);
    await alice2.page.click("#use-recovery-key");
    await alice2.page.waitForSelector("#verify-done", WAIT);
    results.recoveryKeyDone = await alice2.page.textContent("#sas-status");
    await alice2.page.click("#verify-done");
    await openChat(alice2.page, roomId);
    for (const text of history) await waitForMessage(alice2.page, text);
    results.secondDevice = await bodies(alice2.page);

    // A third device verified by emoji against the first; the first try does not match.
    const alice3 = await openPerson("alice-3");
    await logInNewDevice(alice3, aliceName);
    await alice3.page.click("#verify-with-device");
    await alice.page.click("#verification-accept", WAIT);
    await alice3.page.click("#sas-mismatch", WAIT);
    await alice3.page.waitForFunction(() => document.querySelector("#verify-error")?.textContent, null, WAIT);
    await alice.page.waitForSelector("#verification-dialog .error", WAIT);
    results.mismatch = {
        newDevice: await alice3.page.textContent("#verify-error"),
        firstDevice: await alice.page.textContent("#verification-dialog .error"),
        canRetry: await alice3.page.isEnabled("#verify-with-device"),
    };
    // Escape closes the finished dialog (the keyboard's way out).
    await alice.page.keyboard.press("Escape");
    await alice.page.waitForSelector("#verification-dialog", { state: "detached", timeout: 5_000 });
    results.mismatch.closedByEscape = true;
    await alice3.page.click("#verify-with-device");
    await alice.page.waitForSelector("#verification-accept", WAIT);
    results.incomingTitle = await alice.page.textContent("#verification-title");
    await collectGarbage(alice3.page);
    await alice.page.click("#verification-accept");
    await alice3.page.waitForSelector("#sas-emoji li", WAIT);
    await alice.page.waitForSelector("#sas-emoji li", WAIT);
    const emoji3 = await emojiOf(alice3.page);
    const emoji1 = await emojiOf(alice.page);
    results.deviceEmoji = { count: emoji3.length, same: JSON.stringify(emoji1) === JSON.stringify(emoji3) };
    await shot(alice3, "verify-emoji.png");
    await alice3.page.click("#sas-match");
    await alice.page.click("#sas-match");
    await alice3.page.waitForSelector("#verify-done", WAIT);
    results.emojiDone = await alice3.page.textContent("#sas-status");
    await alice.page.waitForSelector("#verification-dialog .verified", WAIT);
    results.firstDeviceSays = await alice.page.textContent("#verification-dialog .verified");
    await alice.page.click("#verification-close");
    await alice3.page.click("#verify-done");
    await openChat(alice3.page, roomId);
    for (const text of history) await waitForMessage(alice3.page, text);
    results.thirdDevice = await bodies(alice3.page);

    // Alice and Bob verify each other by emoji from the chat's member list.
    await alice.page.waitForSelector(`#members [data-user-id="${bobId}"] .verify-user`, WAIT);
    await bob.page.waitForSelector(`#members [data-user-id="${aliceId}"] .verify-user`, WAIT);
    await alice.page.click(`#members [data-user-id="${bobId}"] .verify-user`);
    await bob.page.waitForSelector("#verification-accept", WAIT);
    results.bobIsAsked = await bob.page.textContent("#verification-dialog p");
    await collectGarbage(alice.page);
    await bob.page.click("#verification-accept");
    await alice.page.waitForSelector("#sas-emoji li", WAIT);
    await bob.page.waitForSelector("#sas-emoji li", WAIT);
    const emojiA = await emojiOf(alice.page);
    const emojiB = await emojiOf(bob.page);
    results.userEmoji = { count: emojiA.length, same: JSON.stringify(emojiA) === JSON.stringify(emojiB) };
    await shot(bob, "verify-user-emoji.png");
    await alice.page.click("#sas-match");
    await bob.page.click("#sas-match");
    await alice.page.waitForSelector("#verification-dialog .verified", WAIT);
    await bob.page.waitForSelector("#verification-dialog .verified", WAIT);
    results.userVerifiedDialogs = [
        await alice.page.textContent("#verification-dialog .verified"),
        await bob.page.textContent("#verification-dialog .verified"),
    ];
    await alice.page.click("#verification-close");
    await bob.page.click("#verification-close");
    await alice.page.waitForSelector(`#members [data-user-id="${bobId}"] .verified`, WAIT);
    await bob.page.waitForSelector(`#members [data-user-id="${aliceId}"] .verified`, WAIT);
    results.marks = {
        aliceSeesBob: await alice.page.textContent(`#members [data-user-id="${bobId}"] .verified`),
        bobSeesAlice: await bob.page.textContent(`#members [data-user-id="${aliceId}"] .verified`),
    };
    await shot(alice, "verified-member.png");

    // An account from before (no cross-signing) is set up at its first login here.
    const carol = await openPerson("carol");
    await carol.page.goto(`${baseUrl}/login`);
    await carol.page.fill("#username", carolName);
    await carol.page.fill("#password", password);
    await carol.page.press("#password", "Enter");
    await carol.page.waitForSelector("#recovery-key", WAIT);
    results.carolKeyGroups = (await carol.page.textContent("#recovery-key")).trim().split(" ").length;
    await carol.page.check("#saved-recovery-key");
    await carol.page.click("#recovery-continue");
    await carol.page.waitForSelector("#chat-list", WAIT);

    // The chat after it all: the verification left no message behind, nothing undecryptable.
    await send(bob.page, "Verified both ways");
    for (const person of [alice, alice2, alice3]) await waitForMessage(person.page, "Verified both ways");
    results.aliceAfter = await bodies(alice.page);
    results.undecryptable = {};
    for (const person of [alice, bob, alice2, alice3]) {
        results.undecryptable[person.name] = await person.page.evaluate(() => window.__undecryptable.length);
    }
    check(Object.values(results.undecryptable).every((n) => n === 0), `no "Unable to decrypt": ${JSON.stringify(results.undecryptable)}`);
    results.failedRequests = [...new Set(failedRequests)].sort();
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

/** The end of each page's verification log (web/src/screens/verification.ts): where each side stopped. */
async function printVerificationLogs() {
    for (const { name, page } of people) {
        const lines = await page.evaluate(() => window.hsVerificationLog ?? []).catch((e) => [`(unreadable: ${e})`]);
        if (lines.length) console.error(`verification log of ${name}, the last ${Math.min(lines.length, 15)}:\n  ${lines.slice(-15).join("\n  ")}`);
    }
}

await runMain(
    async (results) => {
        try {
            await main(results);
        } catch (e) {
            await printVerificationLogs();
            throw e;
        }
    },
    {
        totalMs: 150_000,
        cleanup: async () => {
            await browser?.close();
        },
    },
);
