// The harness's smallest use, and a template for page tests: a page served from a temporary
// folder asks the homeserver for /versions when a button is clicked and shows the answer.
// tests/test_browser_harness.py runs it.
//
//   node smoke.mjs <base_url>

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { check, launchChromium, runMain, serveDirectory, tempDir } from "./harness.mjs";

const [baseUrl] = process.argv.slice(2);
const site = tempDir("hs-smoke-");
let browser = null;
let server = null;

const PAGE = `<!doctype html><meta charset="utf-8"><title>smoke</title>
<button id="ask">Ask</button><pre id="out"></pre>
<script>
document.getElementById("ask").onclick = async () => {
    const r = await fetch(${JSON.stringify(baseUrl)} + "/_matrix/client/versions");
    document.getElementById("out").textContent = (await r.json()).versions.join(" ");
};
</script>`;

async function main(results) {
    writeFileSync(join(site.dir, "index.html"), PAGE);
    server = await serveDirectory(site.dir);
    browser = await launchChromium();
    const page = await browser.newPage();
    await page.goto(`${server.url}/`);
    await page.click("#ask");
    await page.waitForFunction(() => document.getElementById("out").textContent !== "");
    results.shown = await page.textContent("#out");
    results.userAgent = await page.evaluate(() => navigator.userAgent);
    results.secureContext = await page.evaluate(() => window.isSecureContext);
    check(results.shown.length > 0, "the versions are shown");
}

await runMain(main, {
    totalMs: 60_000,
    cleanup: async () => {
        await browser?.close();
        await server?.close();
        site.remove();
    },
});
