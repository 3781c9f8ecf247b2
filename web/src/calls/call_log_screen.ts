// The call log screen (the "Calls" button beside the chat list's title): my calls, newest
// first, from the server's log (unencrypted chats) and this device's (encrypted chats).

import type { MatrixClient } from "matrix-js-sdk";

import { h, show } from "../dom";
import { type CallRecord, deviceCalls, serverCalls } from "./call_log";
import { formatDuration } from "./call_notices";

const OUTCOMES: Record<string, string> = {
    answered: "answered",
    missed: "missed",
    declined: "declined",
    busy: "busy",
    failed: "failed",
};

function describe(client: MatrixClient, call: CallRecord): HTMLLIElement {
    const peer = client.getRoom(call.chatId)?.getMember(call.peerId)?.name ?? call.peerId;
    const kind = call.type === "video" ? "Video call" : "Voice call";
    const arrow = call.direction === "incoming" ? "↙" : "↗";
    const outcome = !call.outcome
        ? "in progress"
        : call.outcome === "missed" && call.direction === "outgoing"
          ? "no answer"
          : (OUTCOMES[call.outcome] ?? call.outcome);
    const duration = call.outcome === "answered" && call.answeredAt !== null ? ` · ${formatDuration(call.endedAt - call.answeredAt)}` : "";
    const when = new Date(call.startedAt).toLocaleString();
    return h(
        "li",
        { class: `call-log-item ${call.outcome ?? ""}`, "data-call-id": call.callId, "data-source": call.source, "data-outcome": call.outcome ?? "" },
        h("span", { class: "call-log-dir", "aria-label": call.direction }, arrow),
        h("span", { class: "call-log-what" }, `${kind} with ${peer}`),
        h("span", { class: "call-log-outcome" }, `${outcome}${duration}`),
        h("time", { datetime: new Date(call.startedAt).toISOString() }, when),
        h("span", { class: "call-log-source" }, call.source === "device" ? "this device" : "server"),
    );
}

/** Open the log over the chats; Close or Escape returns to them. */
export function openCallLog(client: MatrixClient): void {
    document.getElementById("call-log")?.remove();
    const list = h("ol", { class: "call-log-list", id: "call-log-list" }, h("li", { class: "empty" }, "Loading…"));
    const close = h("button", { type: "button", class: "secondary", id: "call-log-close" }, "Close");
    const panel = h(
        "section",
        { class: "call-log", id: "call-log", role: "dialog", "aria-labelledby": "call-log-title" },
        h("header", {}, h("h2", { id: "call-log-title" }, "Calls"), close),
        h(
            "p",
            { class: "hint" },
            "Calls in encrypted chats are kept only on this device (the server cannot read them); the server keeps the others.",
        ),
        list,
    );
    const done = (): void => panel.remove();
    close.addEventListener("click", done);
    panel.addEventListener("keydown", (e) => {
        if (e.key === "Escape") done();
    });
    document.body.append(panel);
    close.focus();
    void load(client, list);
}

async function load(client: MatrixClient, list: HTMLElement): Promise<void> {
    const [server, device] = await Promise.all([
        serverCalls(client).catch((e: unknown) => {
            console.warn("the server's call log", e);
            return [] as CallRecord[];
        }),
        deviceCalls(client.getUserId() ?? "").catch((e: unknown) => {
            console.warn("this device's call log", e);
            return [] as CallRecord[];
        }),
    ]);
    const calls = [...(server ?? []), ...device].sort((a, b) => b.startedAt - a.startedAt);
    show(list, ...(calls.length ? calls.map((c) => describe(client, c)) : [h("li", { class: "empty" }, "No calls yet.")]));
    list.dataset.loaded = "true";
}
