// Notifications (docs/web-client.md): the service worker, the Web Push subscription and its
// pusher, and each chat's setting (all messages, mentions only, mute) kept as push rules on
// the server, as Element keeps them, so the server's pushes follow it.

import { ConditionKind, PushRuleKind, type MatrixClient, type Room } from "matrix-js-sdk";

import { h } from "./dom";

export type ChatSetting = "all" | "mentions" | "mute";

const WEBPUSH_INFO = "/_plugins/push_gateway/webpush";
const NAMES_CACHE = "chat-names"; // read by sw.ts

/** Registers /sw.js (the offline shell and push handling); quietly nothing where unsupported. */
export function registerServiceWorker(): void {
    if ("serviceWorker" in navigator) void navigator.serviceWorker.register("/sw.js").catch(() => undefined);
}

interface WebPushInfo {
    apps: { app_id: string; application_server_key: string }[];
    notify_path: string;
}

function keyBytes(base64url: string): Uint8Array<ArrayBuffer> {
    const raw = atob(base64url.replace(/-/g, "+").replace(/_/g, "/"));
    const bytes = new Uint8Array(new ArrayBuffer(raw.length));
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
}

/** Asks for permission (call it from a click), subscribes with the gateway's VAPID key and
 * sets this device's pusher. Resolves to a sentence for the user. */
export async function enableNotifications(client: MatrixClient): Promise<string> {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) return "This browser cannot show notifications.";
    // First, while the click's user activation lasts: browsers may ignore a later request.
    if ((await Notification.requestPermission()) !== "granted") return "Notifications are blocked for this site.";
    const answer = await fetch(WEBPUSH_INFO, { headers: { Authorization: `Bearer ${client.getAccessToken() ?? ""}` } });
    const info = answer.ok ? ((await answer.json()) as WebPushInfo) : null;
    const app = info?.apps[0];
    if (!info || !app) return "This server does not send Web Push notifications.";
    const registration = await navigator.serviceWorker.ready;
    const subscription =
        (await registration.pushManager.getSubscription()) ??
        (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(app.application_server_key) }));
    const { endpoint, keys } = subscription.toJSON();
    if (!endpoint || !keys?.p256dh || !keys.auth) return "The browser gave no usable push subscription.";
    // The gateway's convention (docs/push-gateway.md): pushkey p256dh, endpoint and auth in data.
    await client.setPusher({
        kind: "http",
        app_id: app.app_id,
        pushkey: keys.p256dh,
        app_display_name: "Chat (web)",
        device_display_name: navigator.userAgent.slice(0, 100),
        lang: navigator.language || "en",
        data: { url: location.origin + info.notify_path, endpoint, auth: keys.auth } as { url: string },
    });
    return "Notifications are on for this browser.";
}

const BELL =
    '<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">' +
    '<path d="M6 8a6 6 0 0 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/></svg>';

/** The button that turns notifications on, for the chat list's header. */
export function notificationsButton(client: MatrixClient): HTMLElement {
    const note = h("span", { class: "notify-state", id: "notify-state", role: "status" });
    const button = h("button", {
        type: "button",
        id: "enable-notifications",
        class: "secondary icon",
        "aria-label": "Notify me",
        title: "Notify me of new messages",
    });
    // A bell: the header has no room for words on a phone. A constant, not user input.
    button.innerHTML = BELL;
    button.addEventListener("click", () => {
        button.disabled = true;
        enableNotifications(client)
            .then((text) => (note.textContent = text))
            .catch(() => (note.textContent = "Could not turn notifications on."))
            .finally(() => (button.disabled = false));
    });
    return h("span", { class: "notify" }, button, note);
}

/** The chat's setting as its push rules say: a muting override rule, a room rule, or neither. */
export async function chatSetting(client: MatrixClient, roomId: string): Promise<ChatSetting> {
    const rules = (await client.getPushRules()).global;
    if (rules.override?.some((r) => r.rule_id === roomId && r.enabled && r.actions.length === 0)) return "mute";
    if (rules.room?.some((r) => r.rule_id === roomId && r.enabled)) return "mentions";
    return "all";
}

/** Mute: an override rule matching the room with no actions (before the mention rules).
 * Mentions only: a room rule without actions, so only the override (mention) rules notify.
 * All: neither; the default rules apply. Only rules that exist are deleted: a DELETE of a
 * missing one is a 404 the browser logs as a console error. */
export async function setChatSetting(client: MatrixClient, roomId: string, setting: ChatSetting): Promise<void> {
    const rules = (await client.getPushRules()).global;
    if (rules.override?.some((r) => r.rule_id === roomId)) await client.deletePushRule("global", PushRuleKind.Override, roomId);
    if (rules.room?.some((r) => r.rule_id === roomId)) await client.deletePushRule("global", PushRuleKind.RoomSpecific, roomId);
    if (setting === "mute") {
        await client.addPushRule("global", PushRuleKind.Override, roomId, {
            actions: [],
            conditions: [{ kind: ConditionKind.EventMatch, key: "room_id", pattern: roomId }],
        });
    } else if (setting === "mentions") {
        await client.addPushRule("global", PushRuleKind.RoomSpecific, roomId, { actions: [] });
    }
}

const LABELS: Record<ChatSetting, string> = { all: "All messages", mentions: "Mentions only", mute: "Mute" };

/** The chat header's menu: a <details> with the three settings as radio buttons (keyboard:
 * Tab to the summary, Enter to open, arrows to choose). */
export function chatNotificationsMenu(client: MatrixClient, room: Room): HTMLElement {
    const status = h("p", { class: "notify-saved", role: "status" });
    const radios = (Object.keys(LABELS) as ChatSetting[]).map((setting) => {
        const input = h("input", { type: "radio", name: `notify-${room.roomId}`, value: setting, id: `notify-${setting}` });
        input.addEventListener("change", () => {
            status.textContent = "Saving…";
            setChatSetting(client, room.roomId, setting)
                .then(() => (status.textContent = `Saved: ${LABELS[setting]}`))
                .catch(() => (status.textContent = "Could not save the setting."));
        });
        return h("label", {}, input, LABELS[setting]);
    });
    void chatSetting(client, room.roomId)
        .then((setting) => {
            const input = radios.map((l) => l.querySelector("input")).find((i) => i?.value === setting);
            if (input) input.checked = true;
        })
        .catch(() => undefined);
    const menu = h(
        "details",
        { class: "chat-menu", id: "chat-menu" },
        h("summary", { "aria-label": "Chat menu" }, "⋯"),
        h("fieldset", {}, h("legend", {}, "Notifications"), ...radios, status),
    );
    // Escape closes it and gives the focus back to its button.
    menu.addEventListener("keydown", (event) => {
        if (event.key !== "Escape" || !menu.open) return;
        menu.open = false;
        menu.querySelector("summary")?.focus();
    });
    return menu;
}

/** Leaves the rooms' names where the service worker finds them: encrypted rooms' pushes
 * carry only ids. */
let savedNames = "";
export function rememberRoomNames(rooms: Room[]): void {
    const names = JSON.stringify(Object.fromEntries(rooms.map((r) => [r.roomId, r.name])));
    if (!("caches" in window) || names === savedNames) return;
    savedNames = names;
    void caches
        .open(NAMES_CACHE)
        .then((cache) => cache.put("/room-names.json", new Response(names)))
        .catch(() => undefined);
}
