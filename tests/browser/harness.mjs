// Shared pieces for browser tests: Debian's Chromium through playwright-core, a static
// file server for the pages, an esbuild bundler for page scripts, and the RESULT protocol
// of tests/browser.py (the last stdout line is `RESULT {json}`).
//
// The flags are the ones /work/shared/REAL-PARTS.md recorded as working here: headless,
// no sandbox (root), no background traffic, fake camera and microphone that need no
// permission prompt, and loopback allowed for WebRTC (the tests run in a loopback-only
// network namespace, where Chromium otherwise gathers no ICE candidate at all).

import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize, resolve, sep } from "node:path";

import { build } from "esbuild";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.HS_CHROMIUM || "/usr/bin/chromium";

export const FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

export const MEDIA_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
];

/** A headless Chromium; `media` adds the fake devices and loopback WebRTC. */
export async function launchChromium({ media = false } = {}) {
    return chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: media ? [...FLAGS, ...MEDIA_FLAGS] : FLAGS,
    });
}

const TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm", // WebAssembly.instantiateStreaming insists on it
    ".map": "application/json",
};

/** Serve `root` on 127.0.0.1 (a free port): resolves to { url, close }. */
export async function serveDirectory(root) {
    const base = resolve(root);
    const server = createServer((req, res) => {
        const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
        const file = normalize(join(base, path === "/" ? "index.html" : path));
        let ok = file.startsWith(base + sep);
        try {
            ok = ok && statSync(file).isFile();
        } catch {
            ok = false;
        }
        if (!ok) {
            res.writeHead(404).end();
            return;
        }
        res.writeHead(200, {
            "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
            "Cache-Control": "no-store",
        });
        res.end(readFileSync(file));
    });
    await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
    const { port } = server.address();
    return {
        url: `http://127.0.0.1:${port}`,
        close: () => new Promise((ok) => server.close(ok)),
    };
}

/**
 * Bundle `entry` (an ES module) for the browser into `outdir` as `<name>.js`: one file,
 * ESM (so `import.meta.url` still points next to the bundle, where wasm is looked for).
 */
export async function bundle(entry, outdir, name) {
    await build({
        entryPoints: { [name]: entry },
        outdir,
        bundle: true,
        format: "esm",
        platform: "browser",
        target: "chrome120",
        logLevel: "error",
        define: { "process.env.NODE_ENV": '"production"', global: "globalThis" },
    });
}

/** A fresh temporary directory, removed by the returned function. */
export function tempDir(prefix) {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

// Failed requests a working web client makes on purpose: the first POST /register asks for
// the server's sign-up flows (401); the SDK probes for a key backup and for MatrixRTC
// transports that do not exist yet (404).
export const REGISTER_FLOWS = { method: "POST", status: 401, path: /\/_matrix\/client\/v3\/register$/ };
export const SDK_PROBES = [
    { method: "GET", status: 404, path: /\/_matrix\/client\/v3\/room_keys\/version$/ },
    { method: "GET", status: 404, path: /\/_matrix\/client\/unstable\/org\.matrix\.msc4143\/rtc\/transports$/ },
];

/**
 * Record in `problems` what a working page never does: a console error (other than
 * Chromium's line for a failed request, judged by its response instead), a page error, a
 * failed request not in `expected` ({ method, status, path: RegExp }). Expected failures
 * go to `failedRequests` when one is given.
 */
export function watchPage(page, name, { expected, problems, failedRequests = null }) {
    page.on("console", (m) => {
        if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
            problems.push(`[${name}] console error: ${m.text()}`);
        }
    });
    page.on("pageerror", (e) => problems.push(`[${name}] page error: ${e?.stack ?? e}`));
    page.on("response", (r) => {
        if (r.status() < 400) return;
        const { pathname } = new URL(r.url());
        const method = r.request().method();
        const entry = `${method} ${pathname} ${r.status()}`;
        if (expected.some((f) => f.method === method && f.status === r.status() && f.path.test(pathname))) {
            failedRequests?.push(entry);
        } else {
            problems.push(`[${name}] unexpected failed request: ${entry}`);
        }
    });
}

export function check(condition, message) {
    if (!condition) throw new Error(`check failed: ${message}`);
}

/**
 * Run `main(results)`, print `RESULT {json}` and exit 0; on an error or after `totalMs`,
 * print the error to stderr and the partial results, run `cleanup` and exit 1.
 */
export async function runMain(main, { totalMs = 110_000, cleanup = async () => {} } = {}) {
    const results = { steps: {} };
    const started = Date.now();
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the whole script took over ${totalMs} ms`)), totalMs);
    });
    let code = 0;
    try {
        await Promise.race([main(results), timeout]);
        results.ms = Date.now() - started;
    } catch (e) {
        console.error(`FAILED: ${e?.stack ?? e}`);
        results.error = String(e?.message ?? e);
        code = 1;
    } finally {
        clearTimeout(timer);
        try {
            await cleanup();
        } catch (e) {
            console.error(`cleanup: ${e?.stack ?? e}`);
        }
    }
    console.log(`RESULT ${JSON.stringify(results)}`);
    process.exit(code);
}

/**
 * After sign-up or login in the web client: pass the encryption screens that come before
 * the chats (tests/browser/web_e2ee.mjs tests them). A new key is saved and returned; a new
 * device is confirmed with `recoveryKey`. Resolves once the chat list shows.
 */
export async function passEncryptionScreens(page, recoveryKey = null) {
    const next = await page.waitForSelector("#chat-list, #recovery-key, #recovery-key-input", { timeout: 30_000 });
    const id = await next.getAttribute("id");
    if (id === "recovery-key") {
        recoveryKey = (await next.textContent()).trim();
        await page.check("#saved-recovery-key");
        await page.click("#recovery-continue");
    } else if (id === "recovery-key-input") {
        check(recoveryKey, "a new device needs the recovery key");
        await page.fill("#recovery-key-input", recoveryKey);
        await page.click("#use-recovery-key");
        await page.click("#verify-done", { timeout: 30_000 });
    }
    await page.waitForSelector("#chat-list");
    return recoveryKey;
}
