// Messages that a reply quotes but that are not loaded (older than the history on
// screen): fetched once from the server (GET /rooms/{id}/event/{eventId}) and decrypted,
// then the chat redraws. A message that cannot be fetched is quoted as "An earlier message".

import type { MatrixClient, MatrixEvent } from "matrix-js-sdk";

export class QuotedEvents {
    private readonly found = new Map<string, MatrixEvent | null>();

    constructor(
        private readonly client: MatrixClient,
        private readonly changed: () => void,
    ) {}

    /** The event if fetched; otherwise null, and it is fetched (once) for a later redraw. */
    get(roomId: string, eventId: string): MatrixEvent | null {
        const known = this.found.get(eventId);
        if (known !== undefined) return known;
        this.found.set(eventId, null);
        const toEvent = this.client.getEventMapper(); // decrypts, and re-emits Decrypted
        this.client
            .fetchRoomEvent(roomId, eventId)
            .then((raw) => {
                this.found.set(eventId, toEvent(raw));
                this.changed();
            })
            .catch(() => undefined);
        return null;
    }
}
