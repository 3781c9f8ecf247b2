// The web client's entry: a saved session goes straight to the chats (or the settings, at
// /settings); otherwise sign-up (at /signup, and at / for a newcomer), login (/login) or a
// forgotten password (/reset).

import { HttpApiEvent, type MatrixClient } from "matrix-js-sdk";

import { forgetDeviceCalls } from "./calls/call_log";
import { startCalls } from "./calls/calls";
import { logOut, startClient } from "./client";
import { h, show } from "./dom";
import { accountHasCrossSigning, setUpEncryption, thisDeviceIsVerified } from "./e2ee";
import { registerServiceWorker } from "./notifications";
import { authScreen, type Entered } from "./screens/auth";
import { newDeviceScreen, recoveryKeyScreen } from "./screens/encryption";
import { clearUnreadBadge, Messenger } from "./screens/messenger";
import { Settings } from "./screens/settings";
import { watchVerificationRequests } from "./screens/verification";
import { clearSession, loadSession, saveSession, type Session } from "./session";
import "./styles.css";

const root = document.getElementById("app") as HTMLElement;
const baseUrl = location.origin;
// Set when the server ended the session, for the login page to say why it is shown.
const ENDED_KEY = "hs.sessionEnded";

function status(text: string): void {
    show(root, h("p", { class: "status" }, text));
}

/**
 * Before the chats: a new account (or one without cross-signing, at login) sets up
 * encryption and shows its recovery key; a device the account does not vouch for yet is
 * asked to verify, so that it can read earlier messages.
 */
async function secureDevice(client: MatrixClient, entered?: Entered): Promise<void> {
    const hasCrossSigning = entered?.mode === "signup" ? false : await accountHasCrossSigning(client);
    if (entered && !hasCrossSigning) {
        status("Setting up encryption…");
        const recoveryKey = await setUpEncryption(client, entered.password);
        await recoveryKeyScreen(root, recoveryKey, client.getSafeUserId());
    } else if (hasCrossSigning && !(await thisDeviceIsVerified(client))) {
        await newDeviceScreen(root, client);
    }
}

async function enter(session: Session, entered?: Entered): Promise<void> {
    status("Connecting…");
    let client: MatrixClient;
    try {
        client = await startClient(session);
    } catch {
        show(
            root,
            h("p", { class: "error", role: "alert" }, "Could not connect to the server."),
            h("button", { type: "button", onclick: () => void enter(session) }, "Try again"),
        );
        return;
    }
    watchVerificationRequests(client);
    try {
        await secureDevice(client, entered);
    } catch (e) {
        // The chats still work; the set-up is offered again on the next start.
        console.error("encryption set-up failed", e);
        show(
            root,
            h("p", { class: "error", role: "alert" }, "Could not set up encryption on this device."),
            h("button", { type: "button", onclick: () => void mountMessenger(client) }, "Continue to my chats"),
        );
        return;
    }
    mountMessenger(client);
}

function mountMessenger(client: MatrixClient): void {
    startCalls(client);
    if (!["/", "/settings"].includes(location.pathname) && !location.pathname.startsWith("/chat/")) {
        history.replaceState(null, "", "/");
    }
    const leave = (): void => {
        clearSession();
        clearUnreadBadge();
        location.assign("/login");
    };
    // The server ended this session (logged out elsewhere): forget it and sign in again.
    client.on(HttpApiEvent.SessionLoggedOut, () => {
        client.stopClient();
        sessionStorage.setItem(ENDED_KEY, "1");
        forgetDeviceCalls(client.getUserId() ?? "");
        void client.clearStores().finally(leave);
    });
    // Settings opened from the chats go back with the browser's history; opened by a
    // reload of /settings, back means the chat list.
    let settingsFromChats = false;
    const settings = new Settings(root, client, () => {
        if (settingsFromChats) history.back();
        else {
            history.pushState(null, "", "/");
            messenger.mount();
        }
    });
    const messenger = new Messenger(
        root,
        client,
        () => {
            status("Logging out…");
            forgetDeviceCalls(client.getUserId() ?? "");
            logOut(client)
                .catch(() => undefined)
                .finally(leave);
        },
        () => {
            settingsFromChats = true;
            history.pushState(null, "", "/settings");
            settings.mount();
        },
    );
    window.addEventListener("popstate", () => {
        if (location.pathname === "/settings") settings.mount();
        else if (!root.querySelector(".messenger")) messenger.mount();
    });
    if (location.pathname === "/settings") settings.mount();
    else messenger.mount();
}

function signIn(): void {
    const mode = location.pathname === "/login" ? "login" : location.pathname === "/reset" ? "reset" : "signup";
    const ended = sessionStorage.getItem(ENDED_KEY) !== null;
    sessionStorage.removeItem(ENDED_KEY);
    const notice = ended && mode === "login" ? "This device was logged out. Log in again to continue." : "";
    authScreen(
        root,
        mode,
        baseUrl,
        (session, entered) => {
            saveSession(session);
            void enter(session, entered);
        },
        notice,
    );
}

registerServiceWorker();
const saved = loadSession();
if (saved) void enter(saved);
else signIn();
