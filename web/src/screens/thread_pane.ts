// The thread pane: a thread's root message, its replies, and a box to reply in the thread.
// On a wide screen it sits beside the chat; on a phone it covers it (styles.css).

import type { MatrixClient, MatrixEvent, Room } from "matrix-js-sdk";

import { h, show } from "../dom";
import type { Message } from "../timeline";
import { Composer } from "./composer";
import { messageItem, type MessageHandlers } from "./message_view";

export class ThreadPane {
    readonly element = h("aside", { class: "thread-pane", id: "thread", "aria-label": "Thread" });
    private readonly list = h("ol", { class: "messages thread-messages", id: "thread-messages", "aria-live": "polite" });
    private readonly composer: Composer;
    private latest: string;

    constructor(
        private readonly client: MatrixClient,
        private readonly room: Room,
        readonly rootId: string,
        onClose: () => void,
        private readonly tick: (event: MatrixEvent) => HTMLElement | null,
    ) {
        this.latest = rootId;
        this.composer = new Composer(client, room.roomId, "thread-composer", { root: rootId, latest: () => this.latest }, (u) => room.getMember(u)?.name ?? u);
        const close = h("button", { type: "button", class: "secondary", id: "thread-close", "aria-label": "Close thread" }, "✕");
        close.addEventListener("click", onClose);
        // Escape closes the pane, as ✕ does (on a phone it covers the chat).
        this.element.addEventListener("keydown", (e) => {
            if (e.key === "Escape") onClose();
        });
        show(this.element, h("header", {}, h("h3", {}, "Thread"), close), this.list, this.composer.form);
    }

    focus(): void {
        this.composer.input.focus();
    }

    render(root: Message | undefined, replies: Message[]): void {
        const handlers: MessageHandlers = {
            reply: () => this.composer.input.focus(), // in a thread every message answers the thread
            edit: (event, text) => this.composer.edit(event, text),
            openThread: () => undefined,
        };
        const options = { tick: this.tick, threads: false };
        this.latest = replies.filter((m) => m.event.status === null).at(-1)?.event.getId() ?? this.rootId;
        const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
        show(
            this.list,
            root ? messageItem(this.client, this.room, root, handlers, options) : h("li", { class: "empty" }, "The thread's first message is not loaded."),
            ...replies.map((m) => messageItem(this.client, this.room, m, handlers, options)),
        );
        this.list.firstElementChild?.classList.add("thread-root");
        if (stick) this.list.scrollTop = this.list.scrollHeight;
    }
}
