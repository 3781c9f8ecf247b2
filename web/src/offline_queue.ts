// The offline queue: a message written without a connection stays on screen as "queued"
// and is sent when the connection returns, in order, exactly once.
//
// The SDK gives up on a send that fails for want of a connection (status NOT_SENT, a
// ConnectionError): this resends those when the browser is back online, when the sync
// loop reaches the server again, and otherwise every few seconds while online (a request
// can also fail on the way back, after the server stored it). `resendEvent` reuses the
// event's transaction id, so the server answers a repeat with the first event instead of
// storing a second one (PUT /send/{type}/{txnId} is idempotent per device).

import { ClientEvent, EventStatus, RoomEvent, type MatrixClient, type MatrixEvent, SyncState } from "matrix-js-sdk";

const RETRY_MS = 3000;

/** Failed for want of a connection (or on the way back), not refused by the server. */
export function isQueued(event: MatrixEvent): boolean {
    if (event.status !== EventStatus.NOT_SENT) return false;
    const status = (event.error as { httpStatus?: number } | null)?.httpStatus;
    return status === undefined || status >= 500;
}

export function startOfflineQueue(client: MatrixClient): void {
    let timer = 0;
    const flush = (): void => {
        window.clearTimeout(timer);
        timer = 0;
        if (!navigator.onLine) return;
        let waiting = false;
        for (const room of client.getRooms()) {
            // Oldest first: the SDK queues a room's messages in the order they are resent.
            for (const event of room.getLiveTimeline().getEvents().filter(isQueued)) {
                waiting = true;
                void client.resendEvent(event, room).catch(() => undefined);
            }
        }
        if (waiting) timer = window.setTimeout(flush, RETRY_MS);
    };
    const soon = (): void => {
        if (!timer) timer = window.setTimeout(flush, RETRY_MS);
    };
    window.addEventListener("online", flush);
    client.on(ClientEvent.Sync, (state: SyncState, previous: SyncState | null) => {
        if (state === SyncState.Syncing && previous !== SyncState.Syncing) flush();
    });
    // A send that just failed while online: try again shortly.
    client.on(RoomEvent.LocalEchoUpdated, (event: MatrixEvent) => {
        if (isQueued(event)) soon();
    });
}
