// The web client opens with its server stopped (tests/test_web_push.py runs it after
// web_push.mjs has visited the app once with the same browser profile):
//
//   node web_offline.mjs <base_url> <profile dir> <screenshot_dir>
//
// The service worker installed by that visit serves the app shell from its cache: the
// page, the bundle and the stylesheet load and the app runs (it then waits for the server).
// The app's own failed requests to the stopped server are the only console errors allowed
// (the harness's watchPage records them, and anything else).

import { join } from "node:path";

import { chromium } from "playwright-core";

import { CHROMIUM, FLAGS, runMain, watchPage } from "./harness.mjs";

const [baseUrl, profile, shots] = process.argv.slice(2);
if (!shots) {
    console.error("usage: node web_offline.mjs <base_url> <profile dir> <screenshot_dir>");
    process.exit(2);
}

let context = null;

async function main(results) {
    context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: FLAGS,
        viewport: { width: 390, height: 780 },
    });
    const page = context.pages()[0] ?? (await context.newPage());
    // With the server stopped no request gets an answer, so only console errors and page
    // errors can show here (the test allows the SDK's lines about its failed fetches).
    const problems = [];
    watchPage(page, "offline", { expected: [], problems });
    await page.goto(`${baseUrl}/`);
    // The bundle ran: its first words replace the page's "Loading…".
    await page.waitForFunction(() => document.querySelector("main#app")?.textContent !== "Loading…");
    results.offline = {
        title: await page.title(),
        styled: await page.evaluate(() => [...document.styleSheets].some((s) => s.cssRules.length > 0)),
        text: await page.textContent("main#app"),
    };
    await page.screenshot({ path: join(shots, "web-offline.png") });
    results.problems = problems;
}

await runMain(main, { totalMs: 60_000, cleanup: async () => context?.close() });
