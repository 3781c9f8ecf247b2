// The call log. The server keeps one for calls it can read (unencrypted chats; GET
// /api/calls from the calls plugin, docs/calls.md). In encrypted chats the server sees
// only ciphertext, so this device keeps their log itself, in IndexedDB, one record per
// call it took part in (written when the call ends). The log screen shows both, newest
// first, each marked with where it comes from.

import type { MatrixClient } from "matrix-js-sdk";

export type LoggedOutcome = "answered" | "missed" | "declined" | "busy" | "failed";

export interface CallRecord {
    callId: string;
    chatId: string;
    peerId: string;
    direction: "incoming" | "outgoing";
    type: "voice" | "video";
    startedAt: number;
    answeredAt: number | null;
    endedAt: number;
    outcome: LoggedOutcome | null;
    source: "server" | "device";
}

const STORE = "calls";

function openDb(userId: string): Promise<IDBDatabase> {
    return new Promise((resolve, reject) => {
        const request = indexedDB.open(`hs-calls:${userId}`, 1);
        request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "callId" });
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error ?? new Error("IndexedDB"));
    });
}

/** Keep (or replace: a call is logged once however often it ends) a call of an encrypted chat. */
export async function logCallOnDevice(userId: string, record: CallRecord): Promise<void> {
    const db = await openDb(userId);
    try {
        await new Promise<void>((resolve, reject) => {
            const tx = db.transaction(STORE, "readwrite");
            tx.objectStore(STORE).put(record);
            tx.oncomplete = () => resolve();
            tx.onerror = () => reject(tx.error ?? new Error("IndexedDB"));
        });
    } finally {
        db.close();
    }
}

export async function deviceCalls(userId: string): Promise<CallRecord[]> {
    const db = await openDb(userId);
    try {
        return await new Promise<CallRecord[]>((resolve, reject) => {
            const request = db.transaction(STORE, "readonly").objectStore(STORE).getAll();
            request.onsuccess = () => resolve(request.result as CallRecord[]);
            request.onerror = () => reject(request.error ?? new Error("IndexedDB"));
        });
    } finally {
        db.close();
    }
}

/** Forget this device's log (at logout, with the rest of the device's data). */
export function forgetDeviceCalls(userId: string): void {
    indexedDB.deleteDatabase(`hs-calls:${userId}`);
}

interface ServerCall {
    callId: string;
    chatId: string;
    callerId: string;
    calleeId: string | null;
    group: boolean;
    type: "voice" | "video";
    direction: "incoming" | "outgoing";
    startedAt: number;
    answeredAt: number | null;
    endedAt: number | null;
    outcome: LoggedOutcome | "rejected" | null;
}

/** The server's log of my calls (newest 50), or null when the server keeps none. */
export async function serverCalls(client: MatrixClient): Promise<CallRecord[] | null> {
    const response = await fetch(`${client.baseUrl}/api/calls?limit=50`, {
        headers: { Authorization: `Bearer ${client.getAccessToken() ?? ""}` },
    });
    if (response.status === 404) return null; // no calls plugin on this server
    if (!response.ok) throw new Error(`GET /api/calls: ${response.status}`);
    const { calls } = (await response.json()) as { calls: ServerCall[] };
    const me = client.getUserId();
    return calls
        .filter((c) => !c.group)
        .map((c) => ({
            callId: c.callId,
            chatId: c.chatId,
            peerId: (c.callerId === me ? c.calleeId : c.callerId) ?? "",
            direction: c.direction,
            type: c.type,
            startedAt: c.startedAt,
            answeredAt: c.answeredAt,
            endedAt: c.endedAt ?? c.startedAt,
            outcome: c.outcome === "rejected" ? "declined" : c.outcome,
            source: "server",
        }));
}
