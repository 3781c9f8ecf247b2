// One message in a chat or thread: who wrote it, the message it replies to, its text
// (edited or deleted), its reactions, its thread's reply count, who of a group has read
// it, and the actions on it (reply, react, thread, and edit and delete on my own).

import type { MatrixClient, MatrixEvent, Room } from "matrix-js-sdk";

import { h } from "../dom";
import { deleteMessage, toggleReaction } from "../message_actions";
import { type Message, quoteText } from "../timeline";
import "../messages.css";

export const QUICK_REACTIONS = ["👍", "❤️", "😂"];

export interface MessageHandlers {
    reply(event: MatrixEvent): void;
    edit(event: MatrixEvent, text: string): void;
    openThread(rootId: string): void;
}

export interface MessageViewOptions {
    /** The tick (sent, delivered, read...) for my messages. */
    tick: (event: MatrixEvent) => HTMLElement | null;
    /** Offer the thread action and the reply count (not inside a thread). */
    threads: boolean;
    /** Who of a group has read up to this message (readPositions). */
    readBy?: Map<string, string[]>;
    /** An image, video or file's view (attachments.ts), or null for text. */
    media?: (event: MatrixEvent) => HTMLElement | null;
}

function nameOf(room: Room, userId: string | undefined): string {
    return room.getMember(userId ?? "")?.name ?? userId ?? "";
}

/** Where each other member of a group has read up to among my messages: event id -> their
 * names, each member once, at the newest of my messages their read receipt covers (a 1:1
 * chat has none: the tick says it). */
export function readPositions(client: MatrixClient, room: Room, messages: Message[]): Map<string, string[]> {
    const me = client.getUserId();
    const others = room.getJoinedMembers().filter((m) => m.userId !== me);
    const positions = new Map<string, string[]>();
    if (others.length < 2) return positions;
    let left = others;
    const mine = messages.filter((m) => m.event.getSender() === me && m.event.status === null);
    for (const { event } of mine.reverse()) {
        const id = event.getId() ?? "";
        const readers = left.filter((m) => room.hasUserReadEvent(m.userId, id));
        if (readers.length) positions.set(id, readers.map((m) => m.name));
        left = left.filter((m) => !readers.includes(m));
        if (!left.length) break;
    }
    return positions;
}

export function messageItem(
    client: MatrixClient,
    room: Room,
    message: Message,
    handlers: MessageHandlers,
    opts: MessageViewOptions,
): HTMLLIElement {
    const { event } = message;
    const mine = event.getSender() === client.getUserId();
    const sent = event.status === null;
    const usable = sent && !message.deleted && !message.failed;
    const quote = message.replyTo
        ? h(
              "blockquote",
              { class: "reply-quote", "data-reply-to": message.replyTo.id },
              h("span", { class: "sender" }, message.replyTo.event ? nameOf(room, message.replyTo.event.getSender()) : ""),
              h("span", { class: "quote-body" }, quoteText(message.replyTo.event)),
          )
        : null;
    const reactions = message.reactions.length
        ? h(
              "div",
              { class: "reactions" },
              ...message.reactions.map((r) => {
                  const chip = h(
                      "button",
                      { type: "button", class: "reaction", "data-key": r.key, "aria-pressed": r.mine ? "true" : "false", title: r.mine ? "Take back your reaction" : "React" },
                      `${r.key} ${r.count}`,
                  );
                  chip.addEventListener("click", () => void toggleReaction(client, room.roomId, event, r.key, r.mine).catch(() => undefined));
                  return chip;
              }),
          )
        : null;
    const thread =
        opts.threads && message.threadReplies > 0
            ? h(
                  "button",
                  { type: "button", class: "thread-summary", onclick: () => handlers.openThread(event.getId() ?? "") },
                  message.threadReplies === 1 ? "1 reply" : `${message.threadReplies} replies`,
              )
            : null;
    const readers = opts.readBy?.get(event.getId() ?? "") ?? [];
    return h(
        "li",
        {
            class: mine ? "message mine" : "message",
            "data-event-id": event.getId() ?? "",
            "data-failed": message.failed ? "true" : null,
            "data-deleted": message.deleted ? "true" : null,
        },
        mine ? null : h("span", { class: "sender" }, nameOf(room, event.getSender())),
        quote,
        h("span", { class: "body" }, (!message.deleted && opts.media?.(event)) || message.body),
        message.edited ? h("span", { class: "edited" }, " (edited)") : null,
        reactions,
        thread,
        h(
            "span",
            { class: "meta" },
            new Date(event.getTs()).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
            mine ? opts.tick(event) : null,
        ),
        readers.length ? h("span", { class: "read-by" }, `Read by ${readers.join(", ")}`) : null,
        usable ? actions(client, room, message, handlers, opts, mine) : null,
    );
}

function actions(
    client: MatrixClient,
    room: Room,
    message: Message,
    handlers: MessageHandlers,
    opts: MessageViewOptions,
    mine: boolean,
): HTMLElement {
    const { event } = message;
    const button = (cls: string, label: string, text: string, action: () => void): HTMLButtonElement =>
        h("button", { type: "button", class: `action ${cls}`, "aria-label": label, title: label, onclick: action }, text);
    const react = QUICK_REACTIONS.map((key) =>
        button("react", `React ${key}`, key, () => {
            const mineAlready = message.reactions.find((r) => r.key === key)?.mine ?? null;
            void toggleReaction(client, room.roomId, event, key, mineAlready).catch(() => undefined);
        }),
    );
    return h(
        "div",
        { class: "actions" },
        button("reply", "Reply", "Reply", () => handlers.reply(event)),
        opts.threads ? button("thread", "Reply in thread", "Thread", () => handlers.openThread(event.getId() ?? "")) : null,
        ...react,
        mine ? button("edit", "Edit", "Edit", () => handlers.edit(event, message.body)) : null,
        mine ? button("delete", "Delete", "Delete", () => void deleteMessage(client, room.roomId, event).catch(() => undefined)) : null,
    );
}
