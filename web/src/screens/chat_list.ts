// The chat list: one row per chat, newest activity first.
//
// Each chat keeps its row (element) for life; news updates it in place. While the user is
// aiming at the list (the pointer over it, keyboard focus on a row, a scroll a moment ago)
// the order holds: a chat with news does not jump to the top and shift the others under
// the pointer, which made a click open the chat that had just moved there. The list
// re-sorts once the hold ends.

import { h } from "../dom";

/** What one row shows. */
export interface ChatRowView {
    roomId: string;
    name: string;
    preview: string;
    typing: boolean;
    presence: string;
    unread: number;
    current: boolean;
}

// After the list scrolls (a wheel, a flick on a touch screen) the order holds this long:
// the user is reading it to pick a chat, and a touch screen has no pointer resting on it.
const SCROLL_HOLD_MS = 1500;

function setText(el: HTMLElement, text: string): void {
    if (el.textContent !== text) el.textContent = text;
}

class ChatRow {
    readonly item: HTMLLIElement;
    private readonly button: HTMLButtonElement;
    // Kept elements: a click pressed on one of them is not lost to a redraw before release.
    private readonly name = h("span", { class: "chat-name" });
    private readonly last = h("span", { class: "chat-last" });
    private readonly presence = h("span", { class: "chat-presence" });
    private readonly unread = h("span", { class: "unread" });

    constructor(roomId: string, onOpen: (roomId: string) => void) {
        this.button = h("button", { type: "button", class: "chat-item", "data-room-id": roomId });
        // Bound to this row's chat, which the row shows for life (never to a position).
        this.button.addEventListener("click", () => onOpen(roomId));
        this.item = h("li", {}, this.button);
    }

    update(view: ChatRowView): void {
        setText(this.name, view.name);
        setText(this.last, view.preview);
        this.last.classList.toggle("chat-typing", view.typing);
        setText(this.presence, view.presence);
        setText(this.unread, String(view.unread));
        this.unread.setAttribute("aria-label", `${view.unread} unread`);
        if (view.current) this.button.setAttribute("aria-current", "true");
        else this.button.removeAttribute("aria-current");
        const parts = [this.name, this.last];
        if (view.presence) parts.push(this.presence);
        if (view.unread > 0) parts.push(this.unread);
        const children = this.button.children;
        if (children.length !== parts.length || parts.some((part, i) => children.item(i) !== part)) {
            this.button.replaceChildren(...parts);
        }
    }
}

export class ChatList {
    readonly element = h("ul", { class: "chat-list", id: "chat-list", "aria-label": "Chats" });
    private readonly empty = h("li", { class: "empty" }, "No chats yet: start one above.");
    private readonly rows = new Map<string, ChatRow>();
    private order: string[] = [];
    private pointerInside = false;
    private scrolledAt = -Infinity;
    private scrollTimer = 0;

    /** `onRelease` is called when the hold may have ended: render again then. */
    constructor(
        private readonly onOpen: (roomId: string) => void,
        onRelease: () => void,
    ) {
        const list = this.element;
        list.addEventListener("pointerenter", () => {
            this.pointerInside = true;
        });
        list.addEventListener("pointerleave", () => {
            this.pointerInside = false;
            onRelease();
        });
        list.addEventListener("focusout", onRelease);
        list.addEventListener(
            "scroll",
            () => {
                this.scrolledAt = performance.now();
                window.clearTimeout(this.scrollTimer);
                this.scrollTimer = window.setTimeout(onRelease, SCROLL_HOLD_MS);
            },
            { passive: true },
        );
    }

    /** Whether the user may be aiming at a row: then rows stay where they are. A list not
     * shown (a phone showing the open chat) holds nothing. */
    private held(): boolean {
        if (this.element.getClientRects().length === 0) return false;
        const focused = document.activeElement;
        // Keyboard focus only: a row clicked keeps focus, with the pointer long gone.
        const byKeyboard = focused !== null && this.element.contains(focused) && focused.matches(":focus-visible");
        return this.pointerInside || byKeyboard || performance.now() - this.scrolledAt < SCROLL_HOLD_MS;
    }

    /** Show `views` (newest activity first): sorted so, or, while held, each chat on its row
     * with new chats added at the bottom. */
    render(views: ChatRowView[]): void {
        const byId = new Map(views.map((view) => [view.roomId, view]));
        let order: string[];
        if (this.held()) {
            // A chat gone meanwhile (left, removed) keeps its row too, until the hold ends.
            order = [...this.order, ...views.map((view) => view.roomId).filter((id) => !this.rows.has(id))];
        } else {
            order = views.map((view) => view.roomId);
            for (const id of this.rows.keys()) if (!byId.has(id)) this.rows.delete(id);
        }
        const items = order.map((id) => {
            let row = this.rows.get(id);
            if (!row) {
                row = new ChatRow(id, this.onOpen);
                this.rows.set(id, row);
            }
            const view = byId.get(id);
            if (view) row.update(view);
            return row.item;
        });
        this.order = order;
        this.place(items.length ? items : [this.empty]);
    }

    /** Put `items` in the list in order, moving only those out of place (a moved element
     * loses focus: given back). */
    private place(items: HTMLLIElement[]): void {
        const list = this.element;
        const focused = document.activeElement;
        items.forEach((item, i) => {
            const here = list.children.item(i);
            if (here !== item) list.insertBefore(item, here);
        });
        while (list.children.length > items.length) list.lastElementChild?.remove();
        if (focused instanceof HTMLElement && focused !== document.activeElement && list.contains(focused)) {
            focused.focus({ preventScroll: true });
        }
    }
}
