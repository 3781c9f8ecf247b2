// What a chat shows, computed from the room's loaded timeline: each message with its
// latest edit, its reactions, its thread's reply count and the message it replies to.
// Edits, reactions and redactions are events of their own in Matrix; they are folded into
// the message they point at here, so the screens only draw. Thread replies live in the
// thread pane, not in the main list. (The SDK runs without its thread support, so every
// event stays in the one live timeline and this is the only place that groups them.)

import { EventType, type MatrixEvent, RelationType, type Room } from "matrix-js-sdk";

import { type CallNotice, callNotices } from "./calls/call_notices";

export interface Reaction {
    key: string;
    count: number;
    /** My own reaction with this key, to redact when I toggle it off. */
    mine: MatrixEvent | null;
}

export interface Message {
    event: MatrixEvent;
    /** The text shown: the latest edit's, "Message deleted", or a decryption notice. */
    body: string;
    edited: boolean;
    deleted: boolean;
    failed: boolean;
    /** The message this one answers (m.in_reply_to): its event if loaded, or just its id. */
    replyTo: { id: string; event: MatrixEvent | null } | null;
    reactions: Reaction[];
    threadReplies: number;
    /** A call (its m.call.invite), shown as a notice, not a bubble (calls/call_notices.ts). */
    call: CallNotice | null;
}

type Relation = { rel_type?: string; event_id?: string; key?: string; "m.in_reply_to"?: { event_id?: string } };

function relationOf(event: MatrixEvent): Relation | null {
    // Encrypted events carry m.relates_to in the clear (so the server can aggregate them).
    const rel = (event.getWireContent()["m.relates_to"] ?? event.getContent()["m.relates_to"]) as unknown;
    return rel && typeof rel === "object" ? (rel as Relation) : null;
}

/** The thread an event belongs to, if it is a reply in a thread. */
export function threadOf(event: MatrixEvent): string | null {
    const rel = relationOf(event);
    return rel?.rel_type === RelationType.Thread && rel.event_id ? rel.event_id : null;
}

function isMessageLike(event: MatrixEvent): boolean {
    if (event.getType() === EventType.RoomMessage) {
        // An in-room verification request opens the verification dialog; it is not a chat line.
        return event.getContent().msgtype !== "m.key.verification.request";
    }
    // Not decrypted (yet): shown as such, unless it is a relation of another message.
    return event.isEncrypted() && (event.isDecryptionFailure() || event.isBeingDecrypted() || !event.getClearContent());
}

function textOf(content: Record<string, unknown>): string {
    return typeof content.body === "string" ? content.body : "";
}

/** All of a room's messages with their edits, reactions and threads folded in, oldest first. */
export function foldTimeline(room: Room, me: string | null): { main: Message[]; threads: Map<string, Message[]> } {
    const events = room.getLiveTimeline().getEvents();
    const edits = new Map<string, MatrixEvent>();
    const reactions = new Map<string, Map<string, { count: number; mine: MatrixEvent | null }>>();
    const replies = new Map<string, number>();
    for (const event of events) {
        const rel = relationOf(event);
        if (!rel?.event_id || event.isRedacted()) continue;
        if (rel.rel_type === RelationType.Replace && event.getType() === EventType.RoomMessage) {
            edits.set(rel.event_id, event); // the last one loaded wins: the timeline is in order
        } else if (rel.rel_type === RelationType.Annotation && event.getType() === EventType.Reaction && rel.key) {
            const byKey = reactions.get(rel.event_id) ?? new Map<string, { count: number; mine: MatrixEvent | null }>();
            const entry = byKey.get(rel.key) ?? { count: 0, mine: null };
            entry.count += 1;
            if (event.getSender() === me) entry.mine = event;
            byKey.set(rel.key, entry);
            reactions.set(rel.event_id, byKey);
        } else if (rel.rel_type === RelationType.Thread && isMessageLike(event)) {
            replies.set(rel.event_id, (replies.get(rel.event_id) ?? 0) + 1);
        }
    }
    const byId = new Map(events.map((e) => [e.getId() ?? "", e]));
    const main: Message[] = [];
    const threads = new Map<string, Message[]>();
    const calls = callNotices(events, room.myUserId);
    for (const event of events) {
        const id = event.getId() ?? "";
        const call = calls.get(id) ?? null;
        if (call) {
            main.push({ event, body: call.text, edited: false, deleted: false, failed: false, replyTo: null, reactions: [], threadReplies: 0, call });
            continue;
        }
        if (!isMessageLike(event) || relationOf(event)?.rel_type === RelationType.Replace) continue;
        // A loaded edit, or one the server bundled with the original (the SDK applies those).
        const edit = edits.get(id) ?? event.replacingEvent() ?? undefined;
        // An edit counts only from the original's sender (anyone else's is ignored).
        const edited = edit !== undefined && edit.getSender() === event.getSender() && !event.isRedacted();
        const newContent = edited ? (edit.getContent()["m.new_content"] as Record<string, unknown> | undefined) : undefined;
        const rel = relationOf(event);
        const replyId = rel?.["m.in_reply_to"]?.event_id;
        const message: Message = {
            event,
            body: event.isRedacted()
                ? "Message deleted"
                : event.isDecryptionFailure()
                  ? "Unable to decrypt this message"
                  : event.isEncrypted() && !event.getClearContent()
                    ? "Decrypting…"
                    : textOf(newContent ?? event.getContent()),
            edited: edited && newContent !== undefined,
            deleted: event.isRedacted(),
            failed: event.isDecryptionFailure(),
            // A thread reply's m.in_reply_to is the thread's fallback, not a quote.
            replyTo: replyId && rel?.rel_type !== RelationType.Thread ? { id: replyId, event: byId.get(replyId) ?? null } : null,
            reactions: [...(reactions.get(id) ?? new Map()).entries()].map(([key, r]) => ({ key, ...r })),
            // The server's count covers replies not loaded yet; the loaded ones, the newest.
            threadReplies: Math.max(replies.get(id) ?? 0, event.getServerAggregatedRelation<{ count?: number }>(RelationType.Thread)?.count ?? 0),
            call: null,
        };
        const thread = threadOf(event);
        if (thread) threads.set(thread, [...(threads.get(thread) ?? []), message]);
        else main.push(message);
    }
    return { main, threads };
}

/** A short, one-line text of a quoted message. */
export function quoteText(event: MatrixEvent | null): string {
    if (!event) return "An earlier message";
    if (event.isRedacted()) return "Message deleted";
    const body = textOf(event.getContent());
    return body.length > 80 ? `${body.slice(0, 79)}…` : body;
}
