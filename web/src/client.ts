// The matrix-js-sdk client for a session: Rust crypto with its store in IndexedDB (so a
// reload keeps the device's keys and can still read earlier messages), then the sync loop.

import { ClientEvent, createClient, EventType, type MatrixClient, Preset, SyncState } from "matrix-js-sdk";
import type { Logger } from "matrix-js-sdk/lib/logger.js";

import { cryptoCallbacks } from "./e2ee";
import { startOfflineQueue } from "./offline_queue";
import type { Session } from "./session";

/** A request that found no connection: expected while offline (the queue resends it). */
const offline = (msg: unknown[]): boolean => msg.some((m) => (m as { name?: unknown } | null)?.name === "ConnectionError");

// Our sessions have no refresh token: when the server ends one (logged out from another
// device, a password reset) the SDK says it cannot refresh it, at error level, before it
// reports the logout that main.ts handles. That is the normal end of a session: a warning.
const NO_REFRESH = "Unable to refresh token - no refresh token";
const noRefresh = (msg: unknown[]): boolean => typeof msg[0] === "string" && msg[0].startsWith(NO_REFRESH);

// The SDK logs every request at debug level: only its warnings and errors reach the console.
const quiet: Logger = {
    trace: () => undefined,
    debug: () => undefined,
    info: () => undefined,
    warn: (...msg: unknown[]) => console.warn(...msg),
    // Expected errors (no connection while offline, the end of a session) are warnings.
    error: (...msg: unknown[]) => (offline(msg) || noRefresh(msg) ? console.warn(...msg) : console.error(...msg)),
    getChild: () => quiet,
};

export async function startClient(session: Session): Promise<MatrixClient> {
    const client = createClient({
        baseUrl: session.baseUrl,
        accessToken: session.accessToken,
        userId: session.userId,
        deviceId: session.deviceId,
        logger: quiet,
        cryptoCallbacks,
        // Emoji only: the client has no camera to scan QR codes with.
        verificationMethods: ["m.sas.v1"],
    });
    await client.initRustCrypto({ cryptoDatabasePrefix: `hs-web:${session.userId}:${session.deviceId}` });
    const ready = new Promise<void>((resolve) => {
        const onSync = (state: SyncState): void => {
            if (state === SyncState.Prepared || state === SyncState.Syncing) {
                client.off(ClientEvent.Sync, onSync);
                resolve();
            }
        };
        client.on(ClientEvent.Sync, onSync);
    });
    startOfflineQueue(client);
    await client.startClient({ initialSyncLimit: 30 });
    await ready;
    return client;
}

/** Log out on the server, then forget this device's keys and the session. */
export async function logOut(client: MatrixClient): Promise<void> {
    try {
        await client.logout(true);
    } finally {
        await client.clearStores();
    }
}

/** A one-to-one chat with `userId`, encrypted from its first event. */
export async function startDirectChat(client: MatrixClient, userId: string): Promise<string> {
    const { room_id: roomId } = await client.createRoom({
        is_direct: true,
        invite: [userId],
        preset: Preset.TrustedPrivateChat,
        initial_state: [
            { type: EventType.RoomEncryption, state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
        ],
    });
    return roomId;
}
