// The web client's entry: a saved session goes straight to the chats; otherwise sign-up
// (at /signup, and at / for a newcomer) or login (/login).

import { HttpApiEvent, type MatrixClient } from "matrix-js-sdk";

import { logOut, startClient } from "./client";
import { h, show } from "./dom";
import { authScreen } from "./screens/auth";
import { Messenger } from "./screens/messenger";
import { clearSession, loadSession, saveSession, type Session } from "./session";
import "./styles.css";

const root = document.getElementById("app") as HTMLElement;
const baseUrl = location.origin;

function status(text: string): void {
    show(root, h("p", { class: "status" }, text));
}

async function enter(session: Session): Promise<void> {
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
    if (!["/", "/login", "/signup"].includes(location.pathname) && !location.pathname.startsWith("/chat/")) {
        history.replaceState(null, "", "/");
    } else if (location.pathname === "/login" || location.pathname === "/signup") {
        history.replaceState(null, "", "/");
    }
    const leave = (): void => {
        clearSession();
        location.assign("/login");
    };
    // The server ended this session (logged out elsewhere): forget it and sign in again.
    client.on(HttpApiEvent.SessionLoggedOut, () => {
        client.stopClient();
        void client.clearStores().finally(leave);
    });
    const messenger = new Messenger(root, client, () => {
        status("Logging out…");
        logOut(client)
            .catch(() => undefined)
            .finally(leave);
    });
    messenger.mount();
}

function signIn(): void {
    const mode = location.pathname === "/login" ? "login" : "signup";
    authScreen(root, mode, baseUrl, (session) => {
        saveSession(session);
        void enter(session);
    });
}

const saved = loadSession();
if (saved) void enter(saved);
else signIn();
