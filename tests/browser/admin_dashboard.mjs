// The admin dashboard at /_admin/ in Chromium, as an operator uses it: a non-admin is refused;
// an admin logs in, reads the metrics, finds a user and deactivates them, opens a report
// and dismisses it. tests/test_admin_dashboard_browser.py prepares the server and checks
// the outcome through the API.
//
//   node admin_dashboard.mjs <base_url> <json: {admin, nonAdmin, target, screenshot?}>

import { check, launchChromium, runMain } from "./harness.mjs";

const [baseUrl, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs);
let browser = null;

async function logIn(page, { user, password }) {
    await page.fill("#login-user", user);
    await page.fill("#login-password", password);
    await page.click("#login-form button[type=submit]");
}

async function main(results) {
    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    // Failed responses are listed apart (one 403 is expected: the non-admin's check).
    page.on("console", (m) => {
        if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
    });
    results.failedResponses = [];
    page.on("response", (r) => r.status() >= 400 && results.failedResponses.push(`${r.status()} ${new URL(r.url()).pathname}`));
    page.on("request", (r) => !r.url().startsWith(baseUrl) && problems.push(`request elsewhere: ${r.url()}`));
    page.on("dialog", (d) => d.accept());

    await page.goto(`${baseUrl}/_admin/`);
    await page.waitForSelector("#login:not([hidden])");

    // A non-admin: refused, and nothing kept.
    await logIn(page, args.nonAdmin);
    await page.waitForFunction(() => document.getElementById("login-error").textContent !== "");
    results.refusal = await page.textContent("#login-error");
    results.tokenKeptForNonAdmin = await page.evaluate(() => sessionStorage.length > 0);
    results.navShownToNonAdmin = await page.isVisible("#nav");

    // The admin: the metrics view.
    await logIn(page, args.admin);
    await page.waitForSelector("#m-messages");
    const value = (id) => page.textContent(`#${id} .value`);
    results.metrics = {
        accounts: Number(await value("m-accounts")),
        dau: Number(await value("m-dau")),
        mau: Number(await value("m-mau")),
        signups: Number(await value("m-signups")),
        messages: Number(await value("m-messages")),
        calls: Number(await value("m-calls")),
        mediaBytes: Number(await page.getAttribute("#m-media", "data-bytes")),
        mediaShown: await value("m-media"),
    };
    results.charts = await page.$$eval(".chart", (figures) =>
        figures.map((f) => ({
            title: f.querySelector("h3").textContent,
            total: Number(f.querySelector("svg").dataset.total),
            bars: f.querySelectorAll("rect.bar").length,
            todayBar: Number(f.querySelector("rect.bar:last-of-type").dataset.value),
        })),
    );
    results.tokenInSessionStorage = await page.evaluate(() => Object.keys(sessionStorage));
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });

    // Find the target user and deactivate them.
    await page.click('nav a[href="#/users"]');
    await page.waitForSelector("#user-search");
    await page.fill("#user-search", args.target.search);
    // As for rooms below: the search draws a new view; read its rows, not the full list's.
    const unfilteredUsers = await page.$("#user-search");
    await page.click("#user-search-go");
    await page.waitForFunction((input) => !input.isConnected, unfilteredUsers);
    await page.waitForSelector(`tr[data-user="${args.target.userId}"]`);
    results.usersFound = await page.$$eval("tr[data-user]", (rows) => rows.map((r) => r.dataset.user));
    await page.click(`tr[data-user="${args.target.userId}"] a`);
    await page.waitForSelector("#act-deactivate");
    await page.click("#act-deactivate");
    await page.waitForFunction(() => document.getElementById("user-deactivated")?.textContent === "yes");
    results.deactivatedShown = true;

    // Another user: lock and unlock, suspend, reset the password, export their data.
    const flag = (name) => page.$eval("dl", (dl, name) => {
        const dt = [...dl.querySelectorAll("dt")].find((d) => d.textContent === name);
        return dt.nextElementSibling.textContent;
    }, name);
    await page.goto(`${baseUrl}/_admin/#/users/${encodeURIComponent(args.other.userId)}`);
    await page.waitForSelector("#act-lock");
    await page.click("#act-lock");
    await page.waitForSelector("#act-unlock");
    results.lockedShown = await flag("locked");
    await page.click("#act-unlock");
    await page.waitForSelector("#act-lock");
    results.unlockedShown = await flag("locked");
    await page.click("#act-suspend");
    await page.waitForSelector("#act-unsuspend");
    results.suspendedShown = await flag("suspended");
    await page.fill("#new-password", args.other.newPassword);
    await page.click("#act-reset-password");
    await page.waitForFunction(() => document.getElementById("new-password")?.value === "");
    await page.click("#act-export-data");
    // The job runs on the server; the page shows its state when reloaded (the token stays).
    const downloadButton = "button:has-text('Download (')";
    for (let i = 0; i < 50 && !(await page.$(downloadButton)); i++) {
        await page.reload();
        await page.waitForSelector("#act-export-data");
    }
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(downloadButton)]);
    results.exportFileName = download.suggestedFilename();
    const { statSync } = await import("node:fs");
    results.exportBytes = statSync(await download.path()).size;

    // Rooms: search, open, delete with block.
    await page.click('nav a[href="#/rooms"]');
    await page.waitForSelector("#room-search");
    await page.fill("#room-search", args.room.search);
    // The search draws a new view: wait until the unfiltered one (its input) is gone, so
    // the rows read are the search's and not the full list still on screen.
    const unfiltered = await page.$("#room-search");
    await page.press("#room-search", "Enter");
    await page.waitForFunction((input) => !input.isConnected, unfiltered);
    await page.waitForSelector(`tr[data-room="${args.room.roomId}"]`);
    results.roomsFound = await page.$$eval("tr[data-room]", (rows) => rows.map((r) => r.dataset.room));
    await page.click(`tr[data-room="${args.room.roomId}"] a`);
    await page.waitForSelector("#act-delete-room");
    results.roomMembersShown = await flag("members");
    await page.check("#delete-block");
    await page.click("#act-delete-room");
    await page.waitForFunction(() => location.hash === "#/rooms" && document.querySelector("#room-search"));

    // The reports queue: open the report, dismiss it.
    await page.click('nav a[href="#/reports"]');
    await page.waitForSelector("tr[data-report]");
    results.reportsListed = await page.$$eval("tr[data-report]", (rows) => rows.map((r) => r.dataset.report));
    await page.click(`tr[data-report="${args.reportId}"] a`);
    await page.waitForSelector("#act-dismiss");
    results.reportedEventShown = (await page.textContent("#report-event")).includes(args.reportedText);
    await page.click("#act-dismiss");
    await page.waitForSelector("#no-reports");

    results.problems = problems;
    check(problems.length === 0, `no page errors: ${problems.join("; ")}`);
}

await runMain(main, {
    totalMs: 90_000,
    cleanup: async () => {
        await browser?.close();
    },
});
