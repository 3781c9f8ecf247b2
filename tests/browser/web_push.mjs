// The web client's notifications and installable app in Chromium (tests/test_web_push.py
// runs it):
//
//   node web_push.mjs <base_url> <user> <password> <screenshot_dir> <subscription json> <rooms json>
//
// The manifest, icon and service worker come with the right types; the person logs in on a
// phone-sized window; the service worker takes the page; "Notify me" asks for permission
// (granted by the test) and registers a pusher for the subscription. Chromium's real
// PushManager.subscribe needs Google's push service, which cannot be reached here, so the
// page's subscribe is replaced by one returning the test's subscription (a local push
// endpoint's). The chat header's menu sets "Mute" and "Mentions only", by keyboard; a push
// delivered straight to the worker through CDP shows "New message in <chat>". Console
// errors fail the run. The browser profile stays in <profile dir> for web_offline.mjs.

import { join } from "node:path";

import { chromium } from "playwright-core";

import { CHROMIUM, FLAGS, check, passEncryptionScreens, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, user, password, shots, profile, subscriptionJson, roomsJson] = process.argv.slice(2);
if (!roomsJson) {
    console.error("usage: node web_push.mjs <base_url> <user> <password> <shots> <profile dir> <subscription json> <rooms json>");
    process.exit(2);
}
const subscription = JSON.parse(subscriptionJson);
const rooms = JSON.parse(roomsJson); // {muted: id, mentions: id}

let context = null;
const problems = [];

async function chooseSetting(page, roomId, label) {
    await page.goto(`${baseUrl}/chat/${encodeURIComponent(roomId)}`);
    await page.waitForSelector("#chat-menu summary");
    // By keyboard: focus the menu, open it with Enter, pick the setting with Space.
    await page.focus("#chat-menu summary");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#chat-menu[open] fieldset");
    await page.focus(`#chat-menu input[value="${label}"]`);
    await page.keyboard.press("Space");
    await page.waitForFunction(() => document.querySelector("#chat-menu .notify-saved")?.textContent?.startsWith("Saved"));
    return page.textContent("#chat-menu .notify-saved");
}

/** `promise`, or a failure naming `what` after `ms`. */
function within(ms, what, promise) {
    let timer;
    const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
    });
    return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function main(results) {
    // A profile kept on disk: web_offline.mjs opens it again once the server is stopped.
    context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: FLAGS,
        viewport: { width: 390, height: 780 },
    });
    await context.grantPermissions(["notifications"], { origin: baseUrl });
    // The stand-in for the push service's subscription (see above).
    await context.addInitScript((sub) => {
        const fake = { endpoint: sub.endpoint, toJSON: () => ({ endpoint: sub.endpoint, keys: { p256dh: sub.p256dh, auth: sub.auth } }) };
        PushManager.prototype.subscribe = async function () {
            window.__subscribeKey = arguments[0]?.applicationServerKey?.byteLength ?? 0;
            return fake;
        };
        PushManager.prototype.getSubscription = async () => null;
    }, subscription);
    const page = context.pages()[0] ?? (await context.newPage());
    watchPage(page, "push", { expected: SDK_PROBES, problems });

    // The installable app's files and their types.
    results.types = {};
    for (const path of ["/manifest.webmanifest", "/sw.js", "/icon.svg"]) {
        const r = await context.request.get(`${baseUrl}${path}`);
        results.types[path] = `${r.status()} ${r.headers()["content-type"]}`;
    }
    results.manifest = await (await context.request.get(`${baseUrl}/manifest.webmanifest`)).json();

    await page.goto(`${baseUrl}/login`);
    await page.waitForSelector("#auth-title");
    await page.fill("#username", user);
    await page.fill("#password", password);
    await page.press("#password", "Enter");
    await passEncryptionScreens(page); // an account without cross-signing gets it at login
    results.controlled = await page.evaluate(async () => {
        await navigator.serviceWorker.ready;
        if (!navigator.serviceWorker.controller) {
            await new Promise((resolve) => navigator.serviceWorker.addEventListener("controllerchange", resolve, { once: true }));
        }
        return navigator.serviceWorker.controller?.scriptURL ?? null;
    });

    // No prompt before a click: permission is asked for only by the button.
    await page.click("#enable-notifications");
    await page.waitForFunction(() => document.querySelector("#notify-state")?.textContent);
    results.enabled = await page.textContent("#notify-state");
    results.subscribeKeyBytes = await page.evaluate(() => window.__subscribeKey);
    await page.screenshot({ path: join(shots, "web-notifications-on.png") });

    results.muted = await chooseSetting(page, rooms.muted, "mute");
    results.mentions = await chooseSetting(page, rooms.mentions, "mentions");
    await page.screenshot({ path: join(shots, "web-chat-notifications.png") });
    await page.keyboard.press("Escape");
    results.menuAfterEscape = await page.evaluate(() => ({
        open: document.querySelector("#chat-menu").open,
        focus: document.activeElement?.tagName,
    }));
    // The menu shows the saved setting after a reload.
    await page.reload();
    await page.waitForSelector("#chat-menu input[value=mentions]:checked", { state: "attached", timeout: 30_000 });
    results.checkedAfterReload = await page.$eval("#chat-menu input:checked", (i) => i.value);

    // A push as the gateway sends it for an encrypted room (ids only), straight to the worker.
    const cdp = await context.newCDPSession(page);
    const registrations = {};
    cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => e.registrations.forEach((r) => (registrations[r.scopeURL] = r.registrationId)));
    await cdp.send("ServiceWorker.enable");
    const scope = `${baseUrl}/`;
    for (let i = 0; i < 100 && !registrations[scope]; i++) await page.waitForTimeout(50);
    check(registrations[scope], "the worker's registration id");
    // The app badge is drawn by the OS on an installed app's icon: here, what the worker asks for.
    // Each step bounded, so that a run that stalls says where (the whole script's limit does not).
    const worker = context.serviceWorkers().find((w) => w.url().startsWith(scope));
    check(worker, "the service worker");
    await within(10_000, "stubbing the worker's setAppBadge", worker.evaluate(() => {
        self.badgeCalls = [];
        self.navigator.setAppBadge = (n) => Promise.resolve(void self.badgeCalls.push(n));
    }));
    await within(10_000, "delivering the push", cdp.send("ServiceWorker.deliverPushMessage", {
        origin: scope,
        registrationId: registrations[scope],
        data: JSON.stringify({ room_id: rooms.muted, event_id: "$e1", prio: "high", unread: 3 }),
    }));
    // (waitForFunction would take an async predicate's promise as true: poll in the page.)
    results.notifications = await within(30_000, "the push's notification", page.evaluate(async () => {
        const registration = await navigator.serviceWorker.ready;
        for (;;) {
            const shown = await registration.getNotifications();
            if (shown.length) return shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag }));
            await new Promise((resolve) => setTimeout(resolve, 50));
        }
    }));
    results.badgeCalls = await within(10_000, "reading the worker's badge calls", worker.evaluate(() => self.badgeCalls));

    results.problems = problems;
}

await runMain(main, { totalMs: 140_000, cleanup: async () => context?.close() });
