// The service worker (built by build.mjs into /sw.js, docs/web-client.md): keeps the app
// shell (index.html, the hashed bundle, the crypto wasm) in the Cache API so the app opens
// offline, and turns Web Push messages from the push gateway into notifications (and the
// app's badge).

/// <reference lib="webworker" />

// Filled in by build.mjs: the shell's files, and a version that changes with them.
declare const SHELL_FILES: string[];
declare const SHELL_VERSION: string;

const sw = globalThis as unknown as ServiceWorkerGlobalScope;
const SHELL_CACHE = `shell-${SHELL_VERSION}`;
// Room names the page leaves here (notifications.ts): encrypted rooms' pushes carry only ids.
const NAMES_CACHE = "chat-names";
const API_PREFIXES = ["/_matrix/", "/_homeserver/", "/_synapse/", "/_plugins/", "/_admin/", "/api/", "/.well-known/"];

sw.addEventListener("install", (event) => {
    event.waitUntil(
        caches
            .open(SHELL_CACHE)
            .then((cache) => cache.addAll(SHELL_FILES))
            .then(() => sw.skipWaiting()),
    );
});

sw.addEventListener("activate", (event) => {
    event.waitUntil(
        caches
            .keys()
            .then((keys) => Promise.all(keys.filter((k) => k.startsWith("shell-") && k !== SHELL_CACHE).map((k) => caches.delete(k))))
            .then(() => sw.clients.claim()),
    );
});

sw.addEventListener("fetch", (event) => {
    const request = event.request;
    const url = new URL(request.url);
    if (request.method !== "GET" || url.origin !== sw.location.origin) return;
    if (API_PREFIXES.some((p) => url.pathname.startsWith(p))) return;
    if (request.mode === "navigate") {
        // The network first, so a new build shows at once; the cached shell when offline.
        event.respondWith(fetch(request).catch(() => caches.match("/index.html").then((r) => r ?? Response.error())));
        return;
    }
    event.respondWith(caches.match(request).then((cached) => cached ?? fetch(request)));
});

interface PushPayload {
    room_id?: string;
    event_id?: string;
    room_name?: string;
    sender_display_name?: string;
    sender?: string;
    content?: { body?: unknown };
    unread?: unknown;
}

/** The app's badge from the push's count (the user's unread total), where the browser has one. */
async function setBadge(unread: unknown): Promise<void> {
    if (typeof unread !== "number" || !Number.isInteger(unread) || unread < 0) return;
    const badging = sw.navigator as WorkerNavigator & { setAppBadge?: (n: number) => Promise<void> };
    // Refused when the app is not installed: the notification still shows.
    await badging.setAppBadge?.(unread).catch(() => undefined);
}

async function roomName(roomId: string): Promise<string | undefined> {
    const cached = await caches.open(NAMES_CACHE).then((c) => c.match("/room-names.json"));
    if (!cached) return undefined;
    const names = (await cached.json()) as Record<string, string>;
    return names[roomId];
}

async function notify(payload: PushPayload): Promise<void> {
    const roomId = payload.room_id ?? "";
    const chat = payload.room_name ?? (roomId ? await roomName(roomId) : undefined) ?? "a chat";
    // Encrypted rooms: the server sends only ids, and this worker does not decrypt.
    const body = typeof payload.content?.body === "string" ? payload.content.body : undefined;
    const from = payload.sender_display_name ?? payload.sender;
    const title = body && from ? `${from} in ${chat}` : `New message in ${chat}`;
    await sw.registration.showNotification(title, {
        body: body ?? "Open the chat to read it.",
        tag: roomId || undefined,
        icon: "/icon.svg",
        data: { roomId },
    });
}

sw.addEventListener("push", (event) => {
    let payload: PushPayload = {};
    try {
        payload = (event.data?.json() ?? {}) as PushPayload;
    } catch {
        payload = {};
    }
    event.waitUntil(Promise.all([notify(payload), setBadge(payload.unread)]));
});

sw.addEventListener("notificationclick", (event) => {
    event.notification.close();
    const roomId = (event.notification.data as { roomId?: string } | null)?.roomId;
    const path = roomId ? `/chat/${encodeURIComponent(roomId)}` : "/";
    event.waitUntil(
        sw.clients.matchAll({ type: "window" }).then(async (windows) => {
            const open = windows[0];
            if (open) {
                await open.focus();
                await open.navigate(path);
            } else {
                await sw.clients.openWindow(path);
            }
        }),
    );
});
export {};
