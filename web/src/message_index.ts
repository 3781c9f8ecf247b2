// The local index of decrypted messages, for searching encrypted chats (the server only
// holds their ciphertext). It lives in memory for this session: every text message of an
// encrypted chat the SDK decrypts (the first sync's, new ones, older ones as the person
// scrolls back) is added; a reload builds it again from what loads. Nothing decrypted is
// written to disk.

import { EventType, type MatrixClient, type MatrixEvent, MatrixEventEvent, RelationType, RoomEvent } from "matrix-js-sdk";

export interface Hit {
    roomId: string;
    eventId: string;
    sender: string;
    body: string;
    ts: number;
}

export class MessageIndex {
    // Keyed by the message's id: an edit replaces its text.
    private readonly byId = new Map<string, Hit>();

    constructor(private readonly client: MatrixClient) {
        for (const room of client.getRooms()) {
            for (const event of room.getLiveTimeline().getEvents()) this.add(event);
        }
        client.on(MatrixEventEvent.Decrypted, (event) => this.add(event));
        client.on(RoomEvent.Timeline, (event) => this.add(event));
        client.on(RoomEvent.Redaction, (event) => {
            const id = event.event.redacts ?? (event.getContent().redacts as string | undefined);
            if (id) this.byId.delete(id);
        });
    }

    private add(event: MatrixEvent): void {
        const roomId = event.getRoomId();
        // Only encrypted chats' messages, once decrypted; unencrypted ones the server finds.
        if (!roomId || !event.isEncrypted() || !event.getClearContent() || event.isRedacted()) return;
        if (event.getType() !== EventType.RoomMessage) return;
        const content = event.getContent();
        const rel = content["m.relates_to"] as { rel_type?: string; event_id?: string } | undefined;
        const isEdit = rel?.rel_type === RelationType.Replace && rel.event_id;
        const text = isEdit ? (content["m.new_content"] as { body?: unknown } | undefined)?.body : content.body;
        if (typeof text !== "string" || content.msgtype === "m.key.verification.request") return;
        const eventId = isEdit ? (rel.event_id as string) : event.getId();
        if (!eventId) return;
        const known = this.byId.get(eventId);
        if (isEdit && !known) return; // an edit of a message not loaded: nothing to jump to
        this.byId.set(eventId, { roomId, eventId, sender: event.getSender() ?? "", body: text, ts: known?.ts ?? event.getTs() });
    }

    /** Messages containing every word of `term` (any case), newest first. */
    search(term: string): Hit[] {
        const words = term.toLowerCase().split(/\s+/).filter(Boolean);
        if (!words.length) return [];
        return [...this.byId.values()]
            .filter((hit) => this.client.getRoom(hit.roomId)?.getMyMembership() === "join")
            .filter((hit) => words.every((w) => hit.body.toLowerCase().includes(w)))
            .sort((a, b) => b.ts - a.ts);
    }
}
