// A matrix-js-sdk MatrixCall between two Chromium pages, through the homeserver and its
// TURN server (tests/test_calls_browser.py runs it; call_page.mjs is the page side).
//
//   node call.mjs <base_url> <caller> <callee> <password>
//
// The caller makes an encrypted DM with the callee and places a video call; the callee
// sees it ring and answers; both reach `connected`, get the other's audio and video, and
// their inbound byte counts grow; the caller hangs up and both calls end. The last stdout
// line is `RESULT {json}` with what each side saw.

import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { bundle, check, launchChromium, runMain, serveDirectory, tempDir } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const [baseUrl, callerName, calleeName, password] = process.argv.slice(2);
if (!password) {
    console.error("usage: node call.mjs <base_url> <caller> <callee> <password>");
    process.exit(2);
}

const site = tempDir("hs-call-page-");
let browser = null;
let server = null;

/** The page's files: the bundle, the crypto wasm where the bundle looks for it, the page. */
async function buildSite() {
    await bundle(join(here, "call_page.mjs"), site.dir, "call_page");
    const wasmPackage = join(here, "node_modules", "@matrix-org", "matrix-sdk-crypto-wasm");
    mkdirSync(join(site.dir, "pkg"));
    copyFileSync(
        join(wasmPackage, "pkg", "matrix_sdk_crypto_wasm_bg.wasm"),
        join(site.dir, "pkg", "matrix_sdk_crypto_wasm_bg.wasm"),
    );
    copyFileSync(join(here, "call.html"), join(site.dir, "index.html"));
}

async function openPage(name) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning") console.error(`[${name}] ${m.text()}`);
    });
    page.on("pageerror", (e) => console.error(`[${name}] page error: ${e?.stack ?? e}`));
    await page.goto(`${server.url}/`);
    await page.waitForFunction(() => window.hs !== undefined);
    return page;
}

const call = (page, fn, ...args) => page.evaluate(({ fn, args }) => window.hs[fn](...args), { fn, args });

async function timed(results, name, fn) {
    const t0 = Date.now();
    const out = await fn();
    results.steps[name] = { ms: Date.now() - t0, ...(out ?? {}) };
    return out;
}

/** Poll both pages' media until `ok(caller, callee)` holds; the last readings. */
async function mediaUntil(caller, callee, ok, what, ms = 15_000) {
    const started = Date.now();
    for (;;) {
        const readings = await Promise.all([call(caller, "media"), call(callee, "media")]);
        if (ok(...readings)) return readings;
        if (Date.now() - started > ms) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(readings)}`);
        await new Promise((r) => setTimeout(r, 100));
    }
}

const bytesIn = (m) => (m.inbound.audio?.bytes ?? 0) + (m.inbound.video?.bytes ?? 0);
const flowing = (m) =>
    m.remoteTracks.join() === "audio,video" && m.inbound.audio?.bytes > 0 && m.inbound.video?.bytes > 0;

async function main(results) {
    await timed(results, "setup", async () => {
        await buildSite();
        server = await serveDirectory(site.dir);
        browser = await launchChromium({ media: true });
    });
    const [caller, callee] = await Promise.all([openPage("caller"), openPage("callee")]);

    await timed(results, "clients", async () => {
        const [a, b] = await Promise.all([
            call(caller, "start", baseUrl, callerName, password),
            call(callee, "start", baseUrl, calleeName, password),
        ]);
        results.caller = a;
        results.callee = b;
    });

    const roomId = await timed(results, "room", async () => {
        results.room = await call(caller, "createDm", results.callee.userId);
        await call(callee, "join", results.room.roomId);
        await call(caller, "waitJoined", results.room.roomId, results.callee.userId);
        results.room.encrypted = {
            caller: await call(caller, "encrypted", results.room.roomId),
            callee: await call(callee, "encrypted", results.room.roomId),
        };
        return results.room;
    }).then((r) => r.roomId);
    check(results.room.encrypted.caller && results.room.encrypted.callee, "the DM is encrypted");

    const t0 = Date.now();
    results.callId = (await call(caller, "placeVideoCall", roomId)).callId;
    results.ringing = await call(callee, "ringing");
    results.steps.ring = { ms: Date.now() - t0 };

    const t1 = Date.now();
    await call(callee, "answer");
    await Promise.all([call(caller, "waitState", "connected"), call(callee, "waitState", "connected")]);
    results.steps.connect = { ms: Date.now() - t1 };

    const t2 = Date.now();
    const first = await mediaUntil(caller, callee, (a, b) => flowing(a) && flowing(b), "media both ways");
    results.steps.media = { ms: Date.now() - t2 };
    // The media keeps flowing: both sides' inbound bytes grow after that first reading.
    const later = await mediaUntil(
        caller,
        callee,
        (a, b) =>
            bytesIn(a) > bytesIn(first[0]) + 20_000 &&
            bytesIn(b) > bytesIn(first[1]) + 20_000 &&
            a.inbound.video.framesDecoded > first[0].inbound.video.framesDecoded &&
            b.inbound.video.framesDecoded > first[1].inbound.video.framesDecoded &&
            a.video.width > 0 &&
            b.video.width > 0,
        "inbound bytes and decoded frames to grow and the remote video to show",
    );
    results.media = { caller: [first[0], later[0]], callee: [first[1], later[1]] };

    const t3 = Date.now();
    await call(caller, "hangup");
    await Promise.all([call(caller, "waitState", "ended"), call(callee, "waitState", "ended")]);
    results.steps.hangup = { ms: Date.now() - t3 };
    results.seen = { caller: await call(caller, "seen"), callee: await call(callee, "seen") };
    await Promise.all([call(caller, "stop"), call(callee, "stop")]);
}

await runMain(main, {
    cleanup: async () => {
        await browser?.close();
        await server?.close();
        site.remove();
    },
});
