// A call in the chat's timeline: a centred notice (how it went), not a message bubble.

import type { Message } from "../timeline";
import { h } from "../dom";

export function callNoticeItem(message: Message): HTMLLIElement {
    const call = message.call;
    const time = new Date(message.event.getTs());
    return h(
        "li",
        {
            class: `call-notice ${call?.outcome ?? ""}`,
            "data-event-id": message.event.getId() ?? null,
            "data-call-id": call?.callId ?? null,
            "data-outcome": call?.outcome ?? null,
        },
        h("span", { class: "call-notice-icon", "aria-hidden": "true" }, call?.video ? "🎥" : "📞"),
        h("span", { class: "call-notice-text" }, message.body),
        h("time", { datetime: time.toISOString() }, time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
    );
}
