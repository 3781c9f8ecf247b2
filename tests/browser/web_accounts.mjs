// Accounts in the web client (web/, served by the homeserver at /), in Chromium, against a
// server that requires a verified email at sign-up and mails through the test's SMTP sink
// (tests/test_web_accounts.py runs it):
//
//   node web_accounts.mjs <base_url> <username> <email> <password> <new_password> <screenshot_dir>
//
// One person, two browser contexts as two devices. The laptop signs up: the page asks for an
// email address, the person opens the mailed link, the page completes sign-up. The phone
// logs in to the same account. The laptop's settings list both devices; it renames the
// phone and logs it out (with the password): the phone lands on its login page. There the
// person resets the password by mail and logs in with the new one; the reset logged the
// laptop out too. Sign-up opens the mail's link; the reset asks for the mail again and
// types the code from it instead.
//
// Mails come from the test: the script prints `ASK mail <address> <n>` and reads back one
// line, "<link> <code>" of the n-th mail to that address. Console errors, page errors and
// unexpected failed requests fail the run. The last stdout line is `RESULT {json}`.

import { createInterface } from "node:readline";
import { join } from "node:path";

import { check, launchChromium, passEncryptionScreens, REGISTER_FLOWS, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, username, email, password, newPassword, shots] = process.argv.slice(2);
if (!shots) {
    console.error("usage: node web_accounts.mjs <base_url> <username> <email> <password> <new_password> <screenshot_dir>");
    process.exit(2);
}

// Failed requests a working client makes on purpose: POST /register answers 401 with the
// flows, and again while the email is not confirmed; DELETE /devices 401 asks for the
// password (and says when it is wrong); a logged-out device's sync is answered 401; the
// old password fails to log in; the SDK probes for a key backup and MatrixRTC transports.
const EXPECTED_FAILURES = [
    REGISTER_FLOWS,
    { method: "DELETE", status: 401, path: /\/_matrix\/client\/v3\/devices\/[^/]+$/ },
    { method: "GET", status: 401, path: /\/_matrix\/client\/v3\/sync$/ },
    { method: "POST", status: 403, path: /\/_matrix\/client\/v3\/login$/ },
    ...SDK_PROBES,
];

let browser = null;
const problems = [];
const failedRequests = [];

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** The n-th mail to `address`, from the test's SMTP sink: { link, code }. */
async function mail(address, n) {
    console.log(`ASK mail ${address} ${n}`);
    const { value } = await lines.next();
    const [link, code] = value.split(" ");
    return { link, code };
}

async function openDevice(name, viewport) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    watchPage(page, name, { expected: EXPECTED_FAILURES, problems, failedRequests });
    return { name, context, page };
}

const shot = (device, file) => device.page.screenshot({ path: join(shots, file) });
const path = (page) => new URL(page.url()).pathname;
const text = async (page, selector) => (await page.textContent(selector))?.trim() ?? null;

/** Open a mailed link in a new tab of the device's browser, as a person clicking it does. */
async function openLink(device, link) {
    const tab = await device.context.newPage();
    await tab.goto(link);
    const shown = (await tab.textContent("body")).trim();
    await tab.close();
    return shown;
}

async function logIn(device, pass) {
    await device.page.fill("#username", username);
    await device.page.fill("#password", pass);
    await device.page.click("#auth-submit");
}

async function devicesShown(page) {
    return page.$$eval("#devices li.device", (items) =>
        items.map((li) => ({
            id: li.getAttribute("data-device-id"),
            name: li.querySelector(".device-name")?.textContent ?? "",
            current: li.hasAttribute("data-current"),
            lastSeen: li.querySelector(".last-seen")?.textContent ?? "",
            canLogOut: li.querySelector(".log-out-device") !== null,
        })),
    );
}

async function main(results) {
    browser = await launchChromium();
    const laptop = await openDevice("laptop", { width: 1000, height: 700 });
    const phone = await openDevice("phone", { width: 390, height: 780 });

    // Sign-up: the server wants a verified address, so the page asks for one.
    const lp = laptop.page;
    await lp.goto(`${baseUrl}/`);
    await lp.fill("#username", username);
    await lp.fill("#password", password);
    await lp.click("#auth-submit");
    await lp.waitForSelector("#email");
    results.emailStepTitle = await text(lp, "#auth-title");
    await lp.fill("#email", email);
    await shot(laptop, "sign-up-email.png");
    await lp.click("#auth-submit");
    await lp.waitForSelector("#mail-sent");
    results.mailSent = await text(lp, "#mail-sent");
    // Continuing before opening the link says what is missing.
    await lp.click("#auth-submit");
    await lp.waitForFunction(() => document.querySelector("#auth-error")?.textContent);
    results.tooEarly = await text(lp, "#auth-error");
    await shot(laptop, "sign-up-check-mail.png");
    const signUpMail = await mail(email, 1);
    results.linkPage = await openLink(laptop, signUpMail.link);
    await lp.click("#auth-submit");
    const recoveryKey = await passEncryptionScreens(lp);
    results.signedUp = { userId: await text(lp, "#me"), path: path(lp) };

    // The phone logs in to the same account: a second device.
    const pp = phone.page;
    await pp.goto(`${baseUrl}/login`);
    await logIn(phone, password);
    await passEncryptionScreens(pp, recoveryKey);

    // The laptop's settings: both devices, this one first.
    await lp.click("#open-settings");
    await lp.waitForSelector("#devices li.device:nth-child(2)");
    results.settingsPath = path(lp);
    results.devicesBefore = await devicesShown(lp);
    const phoneId = results.devicesBefore.find((d) => !d.current)?.id;
    const phoneItem = `#devices li[data-device-id="${phoneId}"]`;

    // Rename the phone.
    await lp.click(`${phoneItem} .rename`);
    await lp.fill(`${phoneItem} .device-name-input`, "Phone in my pocket");
    await lp.press(`${phoneItem} .device-name-input`, "Enter");
    await lp.waitForFunction(
        (sel) => document.querySelector(`${sel} .device-name`)?.textContent === "Phone in my pocket",
        phoneItem,
    );
    results.renamed = (await devicesShown(lp)).find((d) => d.id === phoneId)?.name;
    await shot(laptop, "devices.png");

    // Log the phone out: a wrong password is refused, the right one logs it out.
    await lp.click(`${phoneItem} .log-out-device`);
    await lp.fill(`${phoneItem} .confirm-password`, "not my password");
    await lp.press(`${phoneItem} .confirm-password`, "Enter");
    await lp.waitForFunction(() => document.querySelector("#settings-error")?.textContent);
    results.wrongPassword = await text(lp, "#settings-error");
    check(path(pp) === "/", "a wrong password logs nothing out");
    await lp.fill(`${phoneItem} .confirm-password`, password);
    const loggingOut = Date.now();
    await lp.press(`${phoneItem} .confirm-password`, "Enter");
    await lp.waitForFunction((sel) => !document.querySelector(sel), phoneItem);
    results.devicesAfter = await devicesShown(lp);
    // The phone, idle in a long-poll, lands on its login page.
    await pp.waitForSelector("#auth-notice", { timeout: 20_000 });
    results.phoneLoggedOut = {
        ms: Date.now() - loggingOut,
        path: path(pp),
        title: await text(pp, "#auth-title"),
        notice: await text(pp, "#auth-notice"),
        session: await pp.evaluate(() => localStorage.getItem("hs.session")),
    };

    // The laptop goes back to its chats.
    await lp.click("#settings-back");
    await lp.waitForSelector("#chat-list");
    results.backToChats = { path: path(lp), list: await text(lp, "#chat-list") };

    // On the phone: forgot the password; reset it by mail.
    await pp.click("#forgot");
    await pp.waitForSelector("#email");
    results.resetPath = path(pp);
    await pp.fill("#email", email);
    await pp.click("#auth-submit");
    await pp.waitForSelector("#new-password");
    // The person asks for the mail again and types the code from the newest one, as on a
    // phone whose mail app opens links in another browser.
    await pp.click("#send-again");
    await pp.waitForFunction(() => document.querySelector("#auth-note")?.textContent);
    results.sentAgain = await text(pp, "#auth-note");
    await mail(email, 2);
    const resetMail = await mail(email, 3);
    await pp.fill("#mail-code", resetMail.code);
    await pp.click("#use-code");
    await pp.waitForFunction(
        (t) => {
            const note = document.querySelector("#auth-note")?.textContent;
            return document.querySelector("#auth-error")?.textContent || (note && note !== t);
        },
        results.sentAgain,
    );
    results.codeAccepted = (await text(pp, "#auth-note")) || (await text(pp, "#auth-error"));
    await pp.fill("#new-password", newPassword);
    await shot(phone, "password-reset.png");
    await pp.click("#auth-submit");
    await pp.waitForSelector("#auth-notice");
    results.afterReset = { path: path(pp), title: await text(pp, "#auth-title"), notice: await text(pp, "#auth-notice") };

    // The old password no longer works; the new one does.
    await logIn(phone, password);
    await pp.waitForFunction(() => document.querySelector("#auth-error")?.textContent);
    results.oldPassword = await text(pp, "#auth-error");
    await logIn(phone, newPassword);
    await passEncryptionScreens(pp, recoveryKey);
    results.newPasswordLogin = { path: path(pp), userId: await text(pp, "#me") };

    // The reset logged every device out: the laptop is on its login page too.
    await lp.waitForSelector("#auth-notice", { timeout: 20_000 });
    results.laptopAfterReset = { path: path(lp), title: await text(lp, "#auth-title") };

    results.failedRequests = [...new Set(failedRequests)].sort();
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

await runMain(main, {
    totalMs: 100_000,
    cleanup: async () => {
        await browser?.close();
    },
});
