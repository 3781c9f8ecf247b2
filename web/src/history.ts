// Scrolling back through a chat's history: near the top of the list, ask the server for
// older messages (/messages, through the SDK's scrollback); and whenever the list is
// redrawn while the person reads older messages, keep the message they look at in place.

import { Direction, type MatrixClient, type Room } from "matrix-js-sdk";

const PAGE = 20;
const NEAR_TOP_PX = 80;

/** Loads older messages when `list` is scrolled near its top; `room()` is the open chat.
 * The returned function checks again (call it after a redraw: a list too short to scroll
 * fills itself from history). */
export function loadOlderOnScroll(list: HTMLElement, client: MatrixClient, room: () => Room | null): () => void {
    let loading = false;
    const more = (): void => {
        const current = room();
        if (loading || !current || list.scrollTop > NEAR_TOP_PX) return;
        if (!current.getLiveTimeline().getPaginationToken(Direction.Backward)) return; // the very start
        loading = true;
        list.setAttribute("aria-busy", "true");
        client
            .scrollback(current, PAGE)
            .catch(() => undefined)
            .finally(() => {
                loading = false;
                list.removeAttribute("aria-busy");
                // Still at the top (the page held no message, or a short one): go on.
                requestAnimationFrame(more);
            });
    };
    list.addEventListener("scroll", more, { passive: true });
    return more;
}

/** Redraw `list` with `draw()`, keeping the first message in view where it was, unless the
 * list was at its bottom (then it stays there, to show what arrives). */
export function redrawKeepingPlace(list: HTMLElement, draw: () => void): void {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const top = list.getBoundingClientRect().top;
    const anchor = atBottom
        ? null
        : [...list.querySelectorAll<HTMLElement>("li[data-event-id]")].find((li) => li.getBoundingClientRect().bottom > top);
    const id = anchor?.dataset.eventId;
    const offset = anchor ? anchor.getBoundingClientRect().top - top : 0;
    draw();
    if (atBottom) {
        list.scrollTop = list.scrollHeight;
        return;
    }
    const again = id ? list.querySelector<HTMLElement>(`li[data-event-id="${CSS.escape(id)}"]`) : null;
    if (again) list.scrollTop += again.getBoundingClientRect().top - top - offset;
}
