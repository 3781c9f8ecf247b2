// The message box of a chat or of a thread: writes, replies and edits, and tells the
// others "typing" while there is text in it (the typing notice lasts TYPING_MS on the
// server and is renewed while the person keeps typing; sending or emptying ends it).

import type { MatrixClient, MatrixEvent } from "matrix-js-sdk";

import { h, show } from "../dom";
import { editText, sendText } from "../message_actions";
import { quoteText } from "../timeline";

const TYPING_MS = 20_000;
const TYPING_RENEW_MS = 10_000;

type Mode = { kind: "write" } | { kind: "reply"; event: MatrixEvent } | { kind: "edit"; event: MatrixEvent };

export class Composer {
    readonly form: HTMLFormElement;
    readonly input: HTMLInputElement;
    private readonly banner = h("div", { class: "composer-mode", hidden: true });
    private mode: Mode = { kind: "write" };
    private typingSince = 0;

    constructor(
        private readonly client: MatrixClient,
        private readonly roomId: string,
        id: string,
        /** In a thread pane: the root, and the latest reply to answer (for threadless clients). */
        private readonly thread: { root: string; latest: () => string } | null = null,
        private readonly nameOf: (userId: string) => string = (u) => u,
    ) {
        this.input = h("input", { id, name: "message", autocomplete: "off", placeholder: thread ? "Reply in thread" : "Message", "aria-label": thread ? "Reply in thread" : "Message" });
        const send = h("button", { type: "submit" }, "Send");
        this.form = h("form", { class: "composer" }, this.banner, this.input, send);
        this.form.addEventListener("submit", (e) => {
            e.preventDefault();
            this.submit();
        });
        this.input.addEventListener("input", () => this.typing(this.input.value.trim() !== ""));
        this.input.addEventListener("keydown", (e) => {
            if (e.key !== "Escape" || this.mode.kind === "write") return;
            e.stopPropagation(); // it cancels the reply or edit only, not the pane around it
            this.setMode({ kind: "write" });
        });
    }

    reply(event: MatrixEvent): void {
        this.setMode({ kind: "reply", event });
    }

    edit(event: MatrixEvent, currentText: string): void {
        this.setMode({ kind: "edit", event });
        this.input.value = currentText;
    }

    private setMode(mode: Mode): void {
        if (this.mode.kind === "edit" && mode.kind !== "edit") this.input.value = "";
        this.mode = mode;
        if (mode.kind === "write") {
            this.banner.hidden = true;
            show(this.banner);
        } else {
            const cancel = h("button", { type: "button", class: "secondary cancel-mode", "aria-label": "Cancel" }, "✕");
            cancel.addEventListener("click", () => this.setMode({ kind: "write" }));
            const what =
                mode.kind === "reply" ? `Replying to ${this.nameOf(mode.event.getSender() ?? "")}: ${quoteText(mode.event)}` : "Editing your message";
            show(this.banner, h("span", { class: "composer-mode-text", id: `${this.input.id}-mode` }, what), cancel);
            this.banner.hidden = false;
        }
        this.input.focus();
    }

    private submit(): void {
        const text = this.input.value.trim();
        if (!text) return;
        const mode = this.mode;
        this.input.value = "";
        this.setMode({ kind: "write" });
        this.typing(false);
        // Failures show on the message itself (its tick), not here.
        const sent =
            mode.kind === "edit"
                ? editText(this.client, this.roomId, mode.event, text)
                : sendText(this.client, this.roomId, text, {
                      replyTo: mode.kind === "reply" ? mode.event : null,
                      thread: this.thread?.root ?? null,
                      threadLatest: this.thread?.latest() ?? null,
                  });
        void sent.catch(() => undefined);
    }

    private typing(now: boolean): void {
        const since = Date.now() - this.typingSince;
        if (now && this.typingSince && since < TYPING_RENEW_MS) return;
        if (!now && !this.typingSince) return;
        this.typingSince = now ? Date.now() : 0;
        void this.client.sendTyping(this.roomId, now, TYPING_MS).catch(() => undefined);
    }
}
