// Search from the chat list: people in the user directory (start a chat with one) and
// messages: the server's /search for unencrypted chats, the local index (message_index.ts)
// for encrypted ones. A message found opens its chat at that message.

import { type IResultRoomEvents, type MatrixClient, SearchOrderBy } from "matrix-js-sdk";

import { h, show } from "../dom";
import { type Hit, MessageIndex } from "../message_index";

const PEOPLE_LIMIT = 10;

async function serverHits(client: MatrixClient, term: string): Promise<Hit[]> {
    const response = await client.search({
        body: { search_categories: { room_events: { search_term: term, keys: ["content.body"], order_by: SearchOrderBy.Recent } } },
    });
    const found: IResultRoomEvents | undefined = response.search_categories.room_events;
    return (found?.results ?? []).flatMap(({ result }) => {
        const body = result.content?.body;
        return typeof body === "string" && result.room_id && result.event_id
            ? [{ roomId: result.room_id, eventId: result.event_id, sender: result.sender, body, ts: result.origin_server_ts }]
            : [];
    });
}

export class ChatSearch {
    readonly element: HTMLElement;
    private readonly index: MessageIndex;
    private readonly results = h("div", { class: "cs-results", id: "cs-results", "aria-live": "polite" });
    private run = 0;

    constructor(
        private readonly client: MatrixClient,
        private readonly chatWith: (userId: string) => Promise<void>,
        private readonly jump: (roomId: string, eventId: string) => void,
    ) {
        this.index = new MessageIndex(client);
        const input = h("input", {
            id: "cs-term",
            type: "search",
            name: "term",
            placeholder: "Search people and messages",
            "aria-label": "Search people and messages",
            autocapitalize: "none",
        });
        const form = h("form", { class: "cs-form", role: "search" }, input, h("button", { type: "submit", id: "cs-go" }, "Search"));
        form.addEventListener("submit", (e) => {
            e.preventDefault();
            void this.search(input.value.trim());
        });
        input.addEventListener("keydown", (e) => {
            if (e.key === "Escape") {
                input.value = "";
                show(this.results);
            }
        });
        this.element = h("div", { class: "cs" }, form, this.results);
    }

    private async search(term: string): Promise<void> {
        const run = ++this.run;
        if (!term) {
            show(this.results);
            return;
        }
        show(this.results, h("p", { class: "cs-status" }, "Searching…"));
        const me = this.client.getUserId();
        const [people, server] = await Promise.all([
            this.client
                .searchUserDirectory({ term, limit: PEOPLE_LIMIT })
                .then((r) => r.results.filter((p) => p.user_id !== me))
                .catch(() => null),
            serverHits(this.client, term).catch(() => null),
        ]);
        if (run !== this.run) return; // a newer search is under way
        const local = this.index.search(term);
        const seen = new Set(local.map((hit) => hit.eventId));
        const messages = [...local, ...(server ?? []).filter((hit) => !seen.has(hit.eventId))].sort((a, b) => b.ts - a.ts);
        show(
            this.results,
            h("h2", { class: "cs-heading" }, "People"),
            people === null
                ? h("p", { class: "error", role: "alert" }, "Could not search the user directory.")
                : this.peopleList(people),
            h("h2", { class: "cs-heading" }, "Messages"),
            server === null ? h("p", { class: "error", role: "alert" }, "Could not search the server; encrypted chats only.") : null,
            this.messageList(messages),
        );
    }

    private peopleList(people: { user_id: string; display_name?: string }[]): HTMLElement {
        if (!people.length) return h("p", { class: "cs-none", id: "cs-no-people" }, "Nobody found.");
        return h(
            "ul",
            { class: "cs-list", id: "cs-people", "aria-label": "People found" },
            ...people.map((p) => {
                const button = h(
                    "button",
                    { type: "button", class: "cs-person", "data-user-id": p.user_id },
                    h("span", { class: "cs-name" }, p.display_name || p.user_id),
                    h("span", { class: "cs-sub" }, p.user_id),
                );
                button.addEventListener("click", () => {
                    button.disabled = true;
                    this.chatWith(p.user_id)
                        .then(() => show(this.results))
                        .catch(() => {
                            button.disabled = false;
                            button.append(h("span", { class: "error" }, " Could not start the chat."));
                        });
                });
                return h("li", {}, button);
            }),
        );
    }

    private messageList(hits: Hit[]): HTMLElement {
        if (!hits.length) return h("p", { class: "cs-none", id: "cs-no-messages" }, "No messages found.");
        return h(
            "ul",
            { class: "cs-list", id: "cs-messages", "aria-label": "Messages found" },
            ...hits.map((hit) => {
                const room = this.client.getRoom(hit.roomId);
                const sender = room?.getMember(hit.sender)?.name ?? hit.sender;
                const button = h(
                    "button",
                    { type: "button", class: "cs-hit", "data-room-id": hit.roomId, "data-event-id": hit.eventId },
                    h("span", { class: "cs-name" }, room?.name ?? hit.roomId),
                    h("span", { class: "cs-body" }, hit.body),
                    h("span", { class: "cs-sub" }, sender),
                );
                button.addEventListener("click", () => this.jump(hit.roomId, hit.eventId));
                return h("li", {}, button);
            }),
        );
    }
}
