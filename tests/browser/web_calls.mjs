// The web client's calls (docs/web-client.md, "Calls") in Chromium with fake camera and
// microphone: two browser contexts as two people (tests/test_web_calls.py runs it, with the
// calls plugin's TURN on a real coturn):
//
//   node web_calls.mjs <base_url> <alice> <bob> <password> <screenshot_dir>
//
// Both tick "Relay calls through TURN only" in Settings. In their encrypted chat Alice
// places a video call from the chat header; it rings on Bob's screen; he accepts; both
// screens show the call connected with a running duration, and each peer connection
// (recorded by an init script, not by the app) receives audio and video through a relay
// candidate; Alice mutes and turns her camera off; Bob hangs up; both timelines show the
// call as a notice and both devices' call logs list it. Alice's voice call, declined by
// Bob, shows as declined; the next one he answers carries audio; a video call he lets
// ring while on his chat list is missed. In an unencrypted chat Alice hangs up while it rings: Bob sees
// a missed call, and his call log shows it from the server's log. Console errors and
// unexpected failed requests fail the run. The last stdout line is `RESULT {json}`.

import { join } from "node:path";

import { check, launchChromium, passEncryptionScreens, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, bobName, password, shots] = process.argv.slice(2);
if (!shots) {
    console.error("usage: node web_calls.mjs <base_url> <alice> <bob> <password> <screenshot_dir>");
    process.exit(2);
}

const WAIT = { timeout: 30_000 };
let browser = null;
let finished = false;
const problems = [];

async function openPerson(name, viewport) {
    const context = await browser.newContext({ viewport });
    // Keep every RTCPeerConnection the page makes, to read its stats (the test's view).
    await context.addInitScript(() => {
        const Native = window.RTCPeerConnection;
        window.__pcs = [];
        window.RTCPeerConnection = class extends Native {
            constructor(...args) {
                super(...args);
                window.__pcs.push(this);
            }
        };
    });
    const page = await context.newPage();
    watchPage(page, name, { expected: [REGISTER_FLOWS, ...SDK_PROBES], problems });
    return { name, context, page };
}

async function signUp({ page }, username) {
    await page.goto(`${baseUrl}/`);
    await page.waitForSelector("#auth-title");
    await page.fill("#username", username);
    await page.fill("#password", password);
    await page.press("#password", "Enter");
    await passEncryptionScreens(page);
    return page.textContent("#me");
}

async function relayOnly({ page }) {
    await page.click("#open-settings");
    await page.check("#calls-relay-only");
    await page.click("#settings-back");
    await page.waitForSelector("#chat-list");
    return page.evaluate(() => localStorage.getItem("hs.calls.relayOnly"));
}

/** The latest peer connection's media and ICE as its stats say. */
function media(page) {
    return page.evaluate(async () => {
        const pc = window.__pcs.at(-1);
        if (!pc) return null;
        const byId = new Map();
        (await pc.getStats()).forEach((s) => byId.set(s.id, s));
        const inbound = {};
        let pair = null;
        for (const s of byId.values()) {
            if (s.type === "inbound-rtp") inbound[s.kind] = s.bytesReceived ?? 0;
            if (s.type === "transport" && s.selectedCandidatePairId) {
                const selected = byId.get(s.selectedCandidatePairId);
                const local = byId.get(selected.localCandidateId);
                pair = { state: selected.state, responsesReceived: selected.responsesReceived ?? 0, local: local.candidateType, remote: byId.get(selected.remoteCandidateId).candidateType };
            }
        }
        const senders = Object.fromEntries(pc.getSenders().filter((s) => s.track).map((s) => [s.track.kind, s.track.enabled]));
        return { policy: pc.getConfiguration().iceTransportPolicy, inbound, pair, senders, connectionState: pc.connectionState };
    });
}

async function mediaUntil(page, ok, what) {
    const started = Date.now();
    for (;;) {
        const m = await media(page);
        if (m && ok(m)) return m;
        if (Date.now() - started > 20_000) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(m)}`);
        await page.waitForTimeout(200);
    }
}

const flowing = (m) => m.inbound.audio > 0 && m.inbound.video > 0 && m.pair?.state === "succeeded";

const callState = (page, state) => page.waitForSelector(`#call-screen[data-state="${state}"]`, WAIT);
const callGone = (page) => page.waitForSelector("#call-screen", { state: "detached", ...WAIT });

/** The call notices of the open chat: outcome and text. */
async function notices(page, count) {
    await page.waitForFunction((n) => document.querySelectorAll("#messages li.call-notice").length >= n, count, WAIT);
    return page.$$eval("#messages li.call-notice", (els) =>
        els.map((e) => ({ outcome: e.dataset.outcome, text: e.querySelector(".call-notice-text").textContent })),
    );
}

/** Wait for a notice with `outcome` (the last call's end may arrive a moment later). */
async function noticeWith(page, index, outcome) {
    await page.waitForFunction(
        ({ index, outcome }) => document.querySelectorAll("#messages li.call-notice")[index]?.dataset.outcome === outcome,
        { index, outcome },
        WAIT,
    );
    return (await notices(page, index + 1))[index];
}

/** A chat in the list once its last line is `last`: that line and its unread badge. */
async function listItem(page, roomId, last) {
    const item = `#chat-list [data-room-id="${roomId}"]`;
    await page.waitForFunction(({ item, last }) => document.querySelector(`${item} .chat-last`)?.textContent === last, { item, last }, WAIT);
    return page.$eval(item, (el) => ({ last: el.querySelector(".chat-last").textContent, unread: el.querySelector(".unread")?.textContent ?? null }));
}

/** The call log as the person sees it, once it lists `count` calls. */
async function callLog({ page }, count, shot = null) {
    const started = Date.now();
    // On a phone-sized window the chat covers the list and its header: back to the list.
    if (!(await page.isVisible("#open-call-log"))) await page.click("button.back");
    for (;;) {
        await page.click("#open-call-log");
        await page.waitForSelector("#call-log-list[data-loaded]", WAIT);
        const items = await page.$$eval("#call-log-list li.call-log-item", (els) =>
            els.map((e) => ({
                callId: e.dataset.callId,
                source: e.dataset.source,
                outcome: e.dataset.outcome,
                what: e.querySelector(".call-log-what").textContent,
                detail: e.querySelector(".call-log-outcome").textContent,
            })),
        );
        if (items.length >= count || Date.now() - started > 20_000) {
            if (shot) await page.screenshot({ path: join(shots, shot) });
            await page.click("#call-log-close");
            return items;
        }
        await page.click("#call-log-close");
        await page.waitForTimeout(500);
    }
}

async function main(results) {
    browser = await launchChromium({ media: true });
    const alice = await openPerson("alice", { width: 1100, height: 760 });
    const bob = await openPerson("bob", { width: 390, height: 780 });
    results.userIds = { alice: await signUp(alice, aliceName), bob: await signUp(bob, bobName) };
    results.relaySetting = { alice: await relayOnly(alice), bob: await relayOnly(bob) };

    // Alice starts an encrypted chat with Bob; he accepts.
    await alice.page.fill("#new-chat-user", results.userIds.bob);
    await alice.page.click("#new-chat-start");
    await alice.page.waitForSelector("#composer", WAIT);
    const dm = decodeURIComponent(new URL(alice.page.url()).pathname.slice("/chat/".length));
    results.dm = dm;
    await bob.page.click(`#chat-list [data-room-id="${dm}"]`, WAIT);
    await bob.page.click("#accept-invite");
    await bob.page.waitForSelector("#composer", WAIT);
    results.dmEncrypted = await alice.page.textContent("#e2e-state");

    // The video call: rings, accepted, connected through the relay both ways.
    await alice.page.waitForSelector("#call-video:not([disabled])", WAIT);
    await alice.page.click("#call-video");
    await callState(alice.page, "invite_sent");
    results.calling = await alice.page.textContent("#call-status");
    await callState(bob.page, "ringing");
    results.ringing = { title: await bob.page.textContent("#call-title"), status: await bob.page.textContent("#call-status") };
    await bob.page.screenshot({ path: join(shots, "call-ringing.png") });
    await bob.page.click("#call-accept");
    await Promise.all([callState(alice.page, "connected"), callState(bob.page, "connected")]);
    const first = {
        alice: await mediaUntil(alice.page, flowing, "Alice's media"),
        bob: await mediaUntil(bob.page, flowing, "Bob's media"),
    };
    const later = {
        alice: await mediaUntil(alice.page, (m) => m.inbound.video > first.alice.inbound.video + 20_000, "more video for Alice"),
        bob: await mediaUntil(bob.page, (m) => m.inbound.video > first.bob.inbound.video + 20_000, "more video for Bob"),
    };
    results.media = { first, later };
    await alice.page.waitForFunction(() => /^0:0[2-9]$/.test(document.querySelector("#call-status")?.textContent ?? ""), null, WAIT);
    results.duration = await alice.page.textContent("#call-status");
    results.remoteVideo = await alice.page.$eval("#call-remote-video", (v) => ({ width: v.videoWidth, time: v.currentTime }));
    await alice.page.screenshot({ path: join(shots, "call-video.png") });

    // Mute and camera off: the buttons say so and the tracks stop sending.
    await alice.page.click("#call-mute");
    await alice.page.waitForSelector('#call-mute[aria-pressed="true"]', WAIT);
    await alice.page.click("#call-camera");
    await alice.page.waitForSelector('#call-camera[aria-pressed="true"]', WAIT);
    results.muted = (await media(alice.page)).senders;

    // Bob hangs up: both screens close; both timelines show the answered call.
    await bob.page.click("#call-hangup");
    await Promise.all([callGone(alice.page), callGone(bob.page)]);
    results.answeredNotice = { alice: await noticeWith(alice.page, 0, "answered"), bob: await noticeWith(bob.page, 0, "answered") };
    results.bubbles = await alice.page.$$eval("#messages li.message", (els) => els.length);

    // A voice call Bob declines.
    await alice.page.click("#call-voice");
    await callState(bob.page, "ringing");
    results.voiceRinging = await bob.page.textContent("#call-title");
    await bob.page.click("#call-decline");
    await Promise.all([callGone(alice.page), callGone(bob.page)]);
    results.declinedNotice = { alice: await noticeWith(alice.page, 1, "declined"), bob: await noticeWith(bob.page, 1, "declined") };

    // A voice call, answered: audio both ways, no camera, no video on screen.
    await alice.page.click("#call-voice");
    await callState(bob.page, "ringing");
    await bob.page.click("#call-accept");
    await Promise.all([callState(alice.page, "connected"), callState(bob.page, "connected")]);
    const voiceFlowing = (m) => m.inbound.audio > 0 && m.pair?.state === "succeeded";
    results.voice = {
        alice: await mediaUntil(alice.page, voiceFlowing, "Alice's audio"),
        bob: await mediaUntil(bob.page, voiceFlowing, "Bob's audio"),
        title: await bob.page.textContent("#call-title"),
        buttons: await bob.page.$$eval("#call-screen .call-controls button", (els) => els.map((e) => e.textContent)),
        videoShown: await bob.page.isVisible("#call-remote-video"),
    };
    await alice.page.click("#call-hangup");
    await Promise.all([callGone(alice.page), callGone(bob.page)]);
    results.voiceNotice = { alice: await noticeWith(alice.page, 2, "answered"), bob: await noticeWith(bob.page, 2, "answered") };

    // A video call Bob does not answer, while he is on his chat list: it rings over the
    // list; afterwards the chat's last line is the missed call.
    await bob.page.click("button.back");
    await bob.page.waitForSelector("#chat-list");
    await alice.page.click("#call-video");
    await callState(bob.page, "ringing");
    await alice.page.click("#call-hangup");
    await Promise.all([callGone(alice.page), callGone(bob.page)]);
    results.missedVideo = { alice: await noticeWith(alice.page, 3, "missed") };
    await alice.page.screenshot({ path: join(shots, "call-notices.png") });
    results.bobsList = await listItem(bob.page, dm, "Missed video call");
    await bob.page.click(`#chat-list [data-room-id="${dm}"]`);
    results.missedVideo.bob = await noticeWith(bob.page, 3, "missed");

    // Both devices keep the encrypted chat's calls in their own log.
    results.deviceLog = { alice: await callLog(alice, 4, "call-log.png"), bob: await callLog(bob, 4) };

    // An unencrypted chat: Alice hangs up while it rings; Bob missed it.
    const plain = await alice.page.evaluate(async (bob) => {
        const { accessToken } = JSON.parse(localStorage.getItem("hs.session"));
        const r = await fetch("/_matrix/client/v3/createRoom", {
            method: "POST",
            headers: { Authorization: `Bearer ${accessToken}`, "Content-Type": "application/json" },
            body: JSON.stringify({ name: "Plain chat", preset: "private_chat", is_direct: true, invite: [bob] }),
        });
        return (await r.json()).room_id;
    }, results.userIds.bob);
    results.plain = plain;
    await bob.page.click(`#chat-list [data-room-id="${plain}"]`, WAIT);
    await bob.page.click("#accept-invite");
    await bob.page.waitForSelector("#composer", WAIT);
    await bob.page.click("button.back");
    await alice.page.click(`#chat-list [data-room-id="${plain}"]`, WAIT);
    await alice.page.waitForSelector("#call-voice:not([disabled])", WAIT);
    results.plainEncrypted = await alice.page.textContent("#e2e-state");
    await alice.page.click("#call-voice");
    await callState(bob.page, "ringing");
    await alice.page.click("#call-hangup");
    await Promise.all([callGone(alice.page), callGone(bob.page)]);
    results.plainList = await listItem(bob.page, plain, "Missed voice call");
    await bob.page.click(`#chat-list [data-room-id="${plain}"]`);
    results.missedNotice = { bob: await noticeWith(bob.page, 0, "missed"), alice: await noticeWith(alice.page, 0, "missed") };
    results.fullLog = { bob: await callLog(bob, 5), alice: await callLog(alice, 5) };
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests: ${problems.join("; ")}`);
    finished = true;
}

await runMain(main, {
    totalMs: 200_000,
    cleanup: async () => {
        // On a failure, what each person saw (in the screenshot directory, as failed-*.png).
        for (const [i, context] of (finished ? [] : browser?.contexts() ?? []).entries()) {
            for (const page of context.pages()) await page.screenshot({ path: join(shots, `failed-${i}.png`) }).catch(() => undefined);
        }
        await browser?.close();
    },
});
