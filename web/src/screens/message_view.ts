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
}

function nameOf(room: Room, userId: string | undefined): string {
    return room.getMember(userId ?? "")?.name ?? userId ?? "";
}

/** The other members of a group whose read receipt covers `event` (none in a 1:1 chat,
 * where the tick says it). */
export function readBy(client: MatrixClient, room: Room, event: MatrixEvent): string[] {
    const me = client.getUserId();
    const others = room.getJoinedMembers().filter((m) => m.userId !== me);
    if (others.length < 2 || event.status !== null) return [];
    const id = event.getId() ?? "";
    return others.filter((m) => room.hasUserReadEvent(m.userId, id)).map((m) => m.name);
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
    const readers = mine ? readBy(client, room, event) : [];
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
        h("span", { class: "body" }, message.body),
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
