// Sending what the message screens offer: text (optionally a reply, or in a thread), an
// edit (m.replace), a delete (a redaction) and reactions (m.annotation, toggled). Every
// send goes through the SDK, which gives each event one transaction id for life: a resend
// after a lost answer reuses it and the server keeps the message once (offline_queue.ts).

import { EventType, type MatrixClient, type MatrixEvent, MsgType, RelationType } from "matrix-js-sdk";
import type { RoomMessageEventContent } from "matrix-js-sdk/lib/@types/events.js";

export interface SendOptions {
    replyTo?: MatrixEvent | null;
    /** The root of the thread to post in. */
    thread?: string | null;
    /** The latest message in that thread: a client without threads shows the reply to it. */
    threadLatest?: string | null;
}

export function sendText(client: MatrixClient, roomId: string, text: string, opts: SendOptions = {}): Promise<unknown> {
    const content: Record<string, unknown> = { msgtype: MsgType.Text, body: text };
    if (opts.thread) {
        content["m.relates_to"] = {
            rel_type: RelationType.Thread,
            event_id: opts.thread,
            is_falling_back: true,
            "m.in_reply_to": { event_id: opts.threadLatest ?? opts.thread },
        };
    } else if (opts.replyTo) {
        content["m.relates_to"] = { "m.in_reply_to": { event_id: opts.replyTo.getId() } };
    }
    return sendMessage(client, roomId, content);
}

/** Replace my message's text; clients that do not know edits show "* new text". */
export function editText(client: MatrixClient, roomId: string, original: MatrixEvent, text: string): Promise<unknown> {
    return sendMessage(client, roomId, {
        msgtype: MsgType.Text,
        body: `* ${text}`,
        "m.new_content": { msgtype: MsgType.Text, body: text },
        "m.relates_to": { rel_type: RelationType.Replace, event_id: original.getId() },
    });
}

export function deleteMessage(client: MatrixClient, roomId: string, event: MatrixEvent): Promise<unknown> {
    return client.redactEvent(roomId, event.getId() ?? "");
}

/** Add my reaction `key`, or take it back if I already reacted so. */
export function toggleReaction(
    client: MatrixClient,
    roomId: string,
    target: MatrixEvent,
    key: string,
    mine: MatrixEvent | null,
): Promise<unknown> {
    if (mine) return client.redactEvent(roomId, mine.getId() ?? "");
    return client.sendEvent(roomId, EventType.Reaction, {
        "m.relates_to": { rel_type: RelationType.Annotation, event_id: target.getId() ?? "", key },
    });
}

function sendMessage(client: MatrixClient, roomId: string, content: Record<string, unknown>): Promise<unknown> {
    // The SDK's content types do not cover every relation shape the spec allows.
    return client.sendMessage(roomId, content as unknown as RoomMessageEventContent);
}
