// The "relay calls through TURN only" setting: kept in this browser (localStorage). When on,
// every call's RTCPeerConnection uses iceTransportPolicy "relay" (the SDK's forceTURN):
// media goes through the server's TURN, so the other side never learns this device's
// addresses, at the cost of a detour through the relay.

import type { MatrixClient } from "matrix-js-sdk";

import { h } from "../dom";

const KEY = "hs.calls.relayOnly";

export function relayOnly(): boolean {
    return localStorage.getItem(KEY) === "1";
}

/** Apply the setting to the client: calls made or received from now on follow it. */
export function applyRelaySetting(client: MatrixClient): void {
    client.setForceTURN(relayOnly());
}

/** The settings screen's "Calls" part: one checkbox. */
export function relaySettingSection(client: MatrixClient): HTMLElement {
    const box = h("input", { type: "checkbox", id: "calls-relay-only", checked: relayOnly() });
    box.addEventListener("change", () => {
        if (box.checked) localStorage.setItem(KEY, "1");
        else localStorage.removeItem(KEY);
        applyRelaySetting(client);
    });
    return h(
        "section",
        { class: "call-settings", "aria-labelledby": "call-settings-title" },
        h("h2", { id: "call-settings-title" }, "Calls"),
        h("label", { class: "checkbox" }, box, " Relay calls through TURN only"),
        h(
            "p",
            { class: "hint" },
            "Hides your address from the person you call: all media goes through the server's relay. Calls may sound a little later.",
        ),
    );
}
