// The signed-in app: the chat list and one open chat. On a wide screen both show side by
// side; on a phone-sized one the list, or the open chat with a back button (styles.css).
//
// The URL says what is open (/ or /chat/<room id>), so a reload or the back button comes
// back to it; the server answers those paths with index.html.
//
// Everything re-renders from the SDK's state on its events, at most once a frame. The chat
// list keeps its rows and holds their order while the user aims at it (chat_list.ts).

import {
    ClientEvent,
    EventStatus,
    KnownMembership,
    type MatrixClient,
    type MatrixEvent,
    MatrixEventEvent,
    NotificationCountType,
    type Room,
    RoomEvent,
    RoomMemberEvent,
    RoomStateEvent,
    UserEvent,
} from "matrix-js-sdk";

import { callButtons } from "../calls/calls";
import { openCallLog } from "../calls/call_log_screen";
import { callNoticeItem } from "../calls/call_notice_view";
import { startDirectChat } from "../client";
import { isGroup, leftReason, roleOf, USER_ID } from "../groups";
import { chatPresence, otherPerson } from "../presence";
import { h, show } from "../dom";
import { loadOlderOnScroll, redrawKeepingPlace } from "../history";
import { chatNotificationsMenu, notificationsButton, rememberRoomNames } from "../notifications";
import { isQueued } from "../offline_queue";
import { QuotedEvents } from "../quoted";
import { foldTimeline } from "../timeline";
import { typingText } from "../typing";
import { Composer } from "./composer";
import { messageItem, type MessageHandlers, readPositions } from "./message_view";
import { ThreadPane } from "./thread_pane";
import { Attachments } from "./attachments";
import { ChatList } from "./chat_list";
import { ChatSearch } from "./chat_search";
import { groupPanel, groupToggle, memberExtras, newGroupForm } from "./group_panel";
import { memberList } from "./verification";

// Presence lines say "last seen 3 min ago": redrawn this often even when nothing arrives.
const PRESENCE_REDRAW_MS = 30_000;
// How long a message opened from search stays outlined.
const FOUND_MARK_MS = 4000;
const DELIVERY_POLL_MS = 3000;

/** The server's status of my message (sent, delivered, read), or null if it has none. */
async function messageStatus(client: MatrixClient, roomId: string, eventId: string): Promise<string | null> {
    const path = `/api/messages/${encodeURIComponent(roomId)}/${encodeURIComponent(eventId)}/status`;
    try {
        const response = await fetch(client.baseUrl + path, {
            headers: { Authorization: `Bearer ${client.getAccessToken() ?? ""}` },
        });
        if (!response.ok) return null;
        const status = ((await response.json()) as { status?: unknown }).status;
        return typeof status === "string" ? status : null;
    } catch {
        return null;
    }
}

function roomFromPath(): string | null {
    const m = /^\/chat\/([^/]+)$/.exec(location.pathname);
    return m ? decodeURIComponent(m[1]) : null;
}

/** The room's messages in its main timeline, oldest first (timeline.ts folds in edits,
 * reactions and threads); calls are not messages. */
function messages(room: Room): MatrixEvent[] {
    return foldTimeline(room, null)
        .main.filter((m) => !m.call)
        .map((m) => m.event);
}

function lastActivity(room: Room): number {
    return room.getLastActiveTimestamp() || 0;
}

export class Messenger {
    private openRoomId: string | null = roomFromPath();
    private frame = 0;
    private readonly list: ChatList;
    private readonly chatPane = h("section", { class: "chat", id: "chat", "aria-label": "Chat" });
    private readonly messageList = h("ol", { class: "messages", id: "messages", "aria-live": "polite" });
    private composer: Composer | null = null;
    // Typing shows once in the open chat: in its header, in place of the presence line.
    private readonly typingLine = h("span", { class: "typing", id: "typing", "aria-live": "polite" });
    private readonly chatTitle = h("h2", { id: "chat-title" });
    private readonly presenceLine = h("span", { class: "chat-presence", id: "chat-presence" });
    private readonly myRole = h("span", { class: "gp-role gp-mine", id: "gp-my-role" });
    private readonly search: ChatSearch;
    private found: string | null = null; // the message opened from search, outlined
    private thread: ThreadPane | null = null;
    private loadOlder: () => void = () => undefined;
    private readonly quoted: QuotedEvents;
    private renderedRoomId: string | null = null;
    // My messages the server reports delivered to every recipient (GET /api/messages/.../status).
    private readonly delivered = new Set<string>();
    private deliveryTimer = 0;
    private readonly attachments: Attachments;

    constructor(
        private readonly root: Element,
        private readonly client: MatrixClient,
        private readonly onLogout: () => void,
        private readonly onSettings: () => void = () => undefined,
    ) {
        this.attachments = new Attachments(client, () => this.renderedRoomId);
        this.list = new ChatList((roomId) => this.open(roomId), () => this.schedule());
        this.attachments.bind(this.chatPane);
        const refresh = (): void => this.schedule();
        this.quoted = new QuotedEvents(client, refresh);
        client.on(RoomEvent.Timeline, refresh);
        client.on(RoomEvent.Receipt, refresh);
        client.on(RoomEvent.Name, refresh);
        client.on(RoomEvent.MyMembership, refresh);
        client.on(RoomEvent.LocalEchoUpdated, refresh);
        client.on(ClientEvent.Sync, refresh);
        client.on(ClientEvent.Room, refresh);
        client.on(MatrixEventEvent.Decrypted, refresh);
        client.on(RoomEvent.Redaction, refresh);
        client.on(RoomMemberEvent.Typing, refresh);
        client.on(RoomStateEvent.Events, refresh); // names, power levels, members
        client.on(UserEvent.Presence, refresh);
        client.on(UserEvent.LastPresenceTs, refresh);
        window.setInterval(refresh, PRESENCE_REDRAW_MS);
        this.search = new ChatSearch(client, (userId) => this.chatWith(userId), (roomId, eventId) => this.jump(roomId, eventId));
        window.addEventListener("popstate", () => {
            this.openRoomId = roomFromPath();
            this.schedule();
        });
    }

    mount(): void {
        this.loadOlder = loadOlderOnScroll(this.messageList, this.client, () =>
            this.openRoomId ? this.client.getRoom(this.openRoomId) : null,
        );
        const newChat = this.newChatForm();
        const logout = h("button", { type: "button", id: "logout", class: "secondary" }, "Log out");
        logout.addEventListener("click", () => this.onLogout());
        const settings = h("button", { type: "button", id: "open-settings", class: "secondary" }, "Settings");
        settings.addEventListener("click", () => this.onSettings());
        const callLog = h("button", { type: "button", id: "open-call-log", class: "secondary" }, "Calls");
        callLog.addEventListener("click", () => openCallLog(this.client));
        const sidebar = h(
            "nav",
            { class: "sidebar", "aria-label": "Chat list" },
            h(
                "header",
                {},
                h("h1", {}, "Chats"),
                h("span", { class: "me", id: "me", title: this.client.getUserId() ?? "" }, this.client.getUserId()),
                settings,
                callLog,
                notificationsButton(this.client),
                logout,
            ),
            newChat,
            newGroupForm(this.client, (roomId) => this.open(roomId)),
            this.search.element,
            this.list.element,
        );
        show(this.root, h("div", { class: "messenger" }, sidebar, this.chatPane));
        this.render();
    }

    private schedule(): void {
        if (this.frame) return;
        this.frame = requestAnimationFrame(() => {
            this.frame = 0;
            this.render();
        });
    }

    private open(roomId: string | null): void {
        this.openRoomId = roomId;
        history.pushState(null, "", roomId ? `/chat/${encodeURIComponent(roomId)}` : "/");
        this.render();
        if (roomId) this.composer?.input.focus();
    }

    /** Open a chat at one of its messages (a search result), marked for a moment. */
    private jump(roomId: string, eventId: string): void {
        this.found = eventId;
        this.open(roomId);
        // Not loaded: the chat opens at its latest messages.
        this.messageList.querySelector(`li[data-event-id="${CSS.escape(eventId)}"]`)?.scrollIntoView({ block: "center" });
        window.setTimeout(() => {
            if (this.found !== eventId) return;
            this.found = null;
            this.schedule();
        }, FOUND_MARK_MS);
    }

    /** The one-to-one chat with `userId`: the one I am in already, or a new one. */
    private async chatWith(userId: string): Promise<void> {
        const existing = this.rooms().find(
            (r) => r.getMyMembership() === KnownMembership.Join && otherPerson(this.client, r) === userId,
        );
        this.open(existing?.roomId ?? (await startDirectChat(this.client, userId)));
    }

    private newChatForm(): HTMLFormElement {
        const input = h("input", {
            id: "new-chat-user",
            name: "user",
            placeholder: "@someone:server",
            autocapitalize: "none",
            spellcheck: "false",
            "aria-label": "User id to chat with",
        });
        const error = h("p", { class: "error", role: "alert", id: "new-chat-error" });
        const button = h("button", { type: "submit", id: "new-chat-start" }, "Start chat");
        const form = h("form", { class: "new-chat" }, input, button, error);
        form.addEventListener("submit", (e) => {
            e.preventDefault();
            const userId = input.value.trim();
            error.textContent = "";
            if (!USER_ID.test(userId)) {
                error.textContent = "Enter a user id like @alice:example.org";
                return;
            }
            if (userId === this.client.getUserId()) {
                error.textContent = "That is you: enter someone else's user id.";
                return;
            }
            button.disabled = true;
            startDirectChat(this.client, userId)
                .then((roomId) => {
                    input.value = "";
                    this.open(roomId);
                })
                .catch((err: unknown) => {
                    error.textContent = (err as { data?: { error?: string } }).data?.error ?? "Could not start the chat.";
                })
                .finally(() => {
                    button.disabled = false;
                });
        });
        return form;
    }

    private rooms(): Room[] {
        return this.client
            .getRooms()
            .filter((r) => [KnownMembership.Join, KnownMembership.Invite].includes(r.getMyMembership() as KnownMembership))
            .sort((a, b) => lastActivity(b) - lastActivity(a));
    }

    private render(): void {
        const open = this.openRoomId ? this.client.getRoom(this.openRoomId) : null;
        this.root.querySelector(".messenger")?.classList.toggle("has-open-chat", open !== null);
        this.renderList(open);
        this.renderChat(open);
    }

    private renderList(open: Room | null): void {
        const rooms = this.rooms();
        rememberRoomNames(rooms);
        showUnreadTotal(rooms);
        this.list.render(
            rooms.map((room) => {
                const invited = room.getMyMembership() === KnownMembership.Invite;
                const last = foldTimeline(room, null).main.at(-1);
                const typing = invited ? "" : typingText(room, this.client.getUserId());
                return {
                    roomId: room.roomId,
                    name: room.name,
                    preview: invited ? "Invitation" : typing || (last ? last.body : "No messages yet"),
                    typing: typing !== "",
                    presence: invited ? "" : chatPresence(this.client, room),
                    unread: invited ? 0 : room.getUnreadNotificationCount(NotificationCountType.Total),
                    current: room === open,
                };
            }),
        );
    }

    private renderChat(room: Room | null): void {
        if (!room) {
            this.renderedRoomId = null;
            show(this.chatPane, h("p", { class: "placeholder" }, "Choose a chat, or start one with a user id."));
            return;
        }
        this.updateHeader(room);
        // Built only when the pane is (re)drawn: the title, typing and role lines in it are
        // kept elements that updateHeader changes in place.
        let panel: HTMLElement | null = null;
        const header = (): HTMLElement => {
            const member = room.getMyMembership() === KnownMembership.Join;
            panel = member && isGroup(room) ? groupPanel(this.client, room, () => this.open(null)) : null;
            const back = h("button", { type: "button", class: "back", "aria-label": "Back to chats" }, "‹");
            back.addEventListener("click", () => this.open(null));
            return h(
                "header",
                {},
                back,
                h("div", { class: "chat-head" }, this.chatTitle, h("p", { class: "chat-sub" }, this.typingLine, this.presenceLine)),
                this.myRole,
                panel ? groupToggle(panel) : null,
                callButtons(this.client, room),
                chatNotificationsMenu(this.client, room),
            );
        };
        const left = leftReason(this.client, room);
        if (left) {
            show(this.chatPane, header(), h("p", { class: "invite", id: "gp-left", role: "status" }, left));
            this.renderedRoomId = null;
            return;
        }
        if (room.getMyMembership() === KnownMembership.Invite) {
            const accept = h("button", { type: "button", id: "accept-invite" }, "Accept");
            accept.addEventListener("click", () => {
                accept.disabled = true;
                this.client.joinRoom(room.roomId).catch(() => {
                    accept.disabled = false;
                });
            });
            const inviter = room.getMember(this.client.getUserId() ?? "")?.events.member?.getSender();
            show(this.chatPane, header(), h("p", { class: "invite" }, `${inviter ?? "Someone"} invited you to chat.`), accept);
            this.renderedRoomId = null;
            return;
        }
        if (this.renderedRoomId !== room.roomId) {
            this.renderedRoomId = room.roomId;
            this.thread = null;
            this.chatPane.classList.remove("has-thread");
            this.composer = new Composer(this.client, room.roomId, "composer", null, (u) => room.getMember(u)?.name ?? u);
            this.composer.form.insertBefore(this.attachments.button(), this.composer.input);
            const encrypted = this.client.isRoomEncrypted(room.roomId);
            show(
                this.chatPane,
                header(),
                panel,
                h("p", { class: "e2e", id: "e2e-state" }, encrypted ? "End-to-end encrypted" : "Not encrypted"),
                memberList(this.client, room, (userId, name) => memberExtras(this.client, room, userId, name)),
                this.messageList,
                ...this.attachments.status(),
                this.composer.form,
            );
        }
        this.renderMessages(room);
    }

    private openThread(room: Room, rootId: string | null): void {
        this.thread?.element.remove();
        this.thread = rootId
            ? new ThreadPane(this.client, room, rootId, () => this.openThread(room, null), (e) => this.tick(room, e))
            : null;
        this.chatPane.classList.toggle("has-thread", this.thread !== null);
        if (this.thread) this.chatPane.append(this.thread.element);
        this.renderMessages(room);
        this.thread?.focus();
    }

    private renderMessages(room: Room): void {
        const me = this.client.getUserId();
        const { main, threads } = foldTimeline(room, me);
        for (const { replyTo } of main) {
            if (replyTo && !replyTo.event) replyTo.event = this.quoted.get(room.roomId, replyTo.id);
        }
        const handlers: MessageHandlers = {
            reply: (event) => this.composer?.reply(event),
            edit: (event, text) => this.composer?.edit(event, text),
            openThread: (rootId) => this.openThread(room, rootId),
        };
        const options = {
            tick: (event: MatrixEvent) => this.tick(room, event),
            threads: true,
            readBy: readPositions(this.client, room, main),
            media: (event: MatrixEvent) => this.attachments.view(event),
        };
        redrawKeepingPlace(this.messageList, () =>
            show(this.messageList, ...main.map((message) =>
                message.call ? callNoticeItem(message) : messageItem(this.client, room, message, handlers, options),
            )),
        );
        this.updateHeader(room);
        if (this.found) this.messageList.querySelector(`li[data-event-id="${CSS.escape(this.found)}"]`)?.classList.add("cs-found");
        if (this.thread) {
            const rootId = this.thread.rootId;
            this.thread.render(main.find((m) => m.event.getId() === rootId), threads.get(rootId) ?? []);
        }
        if (this.messageList.scrollHeight <= this.messageList.clientHeight) this.loadOlder();
        this.markRead(room, main.at(-1)?.event);
        this.watchDelivery();
    }

    /** The open chat's name, who is typing (or else the presence line) and my admin mark. */
    private updateHeader(room: Room): void {
        this.chatTitle.textContent = room.name;
        const typing = typingText(room, this.client.getUserId());
        this.typingLine.textContent = typing;
        this.presenceLine.textContent = typing ? "" : chatPresence(this.client, room);
        const role = roleOf(room, this.client.getUserId() ?? "");
        this.myRole.textContent = role && isGroup(room) ? `You: ${role}` : "";
    }

    /** My latest message in the open chat while the server has it but not every recipient. */
    private undelivered(): { room: Room; event: MatrixEvent } | null {
        const room = this.openRoomId ? this.client.getRoom(this.openRoomId) : null;
        const me = this.client.getUserId();
        const event = room && messages(room).filter((e) => e.getSender() === me && e.status === null).at(-1);
        return room && event && this.tickState(room, event) === "sent" ? { room, event } : null;
    }

    /** Ask the server whether my latest message reached every recipient, again every few
     * seconds while it has not (nothing in the sync stream says so). */
    private watchDelivery(): void {
        if (this.deliveryTimer || !this.undelivered()) return;
        const check = async (): Promise<void> => {
            const pending = this.undelivered();
            if (!pending) {
                this.deliveryTimer = 0;
                return;
            }
            const eventId = pending.event.getId() ?? "";
            const status = await messageStatus(this.client, pending.room.roomId, eventId);
            if (status === "delivered" || status === "read") {
                this.delivered.add(eventId);
                this.schedule();
            }
            this.deliveryTimer = status === null ? 0 : window.setTimeout(() => void check(), DELIVERY_POLL_MS);
        };
        this.deliveryTimer = window.setTimeout(() => void check(), 0);
    }

    private tickState(room: Room, event: MatrixEvent): "sending" | "queued" | "failed" | "sent" | "delivered" | "read" {
        if (isQueued(event)) return "queued";
        if (event.status === EventStatus.NOT_SENT) return "failed";
        if (event.status !== null) return "sending";
        const me = this.client.getUserId();
        const eventId = event.getId() ?? "";
        const others = room.getJoinedMembers().filter((member) => member.userId !== me);
        if (others.length > 0 && others.every((member) => room.hasUserReadEvent(member.userId, eventId))) return "read";
        return this.delivered.has(eventId) ? "delivered" : "sent";
    }

    /** ✓ the server has it, ✓✓ every recipient's device has it, ✓✓ in colour: read by all. */
    private tick(room: Room, event: MatrixEvent): HTMLElement {
        const state = this.tickState(room, event);
        const text = { sending: " …", queued: " Queued", failed: " Not sent", sent: " ✓", delivered: " ✓✓", read: " ✓✓" }[state];
        const title = {
            sending: "Sending",
            queued: "Queued: sent when the connection returns",
            failed: "Not sent",
            sent: "Sent",
            delivered: "Delivered",
            read: "Read",
        }[state];
        return h("span", { class: `tick ${state}`, "aria-label": state, title }, text);
    }

    private markRead(room: Room, last: MatrixEvent | undefined): void {
        if (!last || document.hidden || last.status !== null || last.getSender() === this.client.getUserId()) return;
        if (room.hasUserReadEvent(this.client.getUserId() ?? "", last.getId() ?? "")) return;
        void this.client.sendReadReceipt(last).catch(() => undefined);
    }
}

/** The unread total in the tab's title and, where the browser has one, the app's badge. */
function showUnreadTotal(rooms: Room[]): void {
    const total = rooms
        .filter((room) => room.getMyMembership() === KnownMembership.Join)
        .reduce((sum, room) => sum + room.getUnreadNotificationCount(NotificationCountType.Total), 0);
    const title = total > 0 ? `(${total}) ${APP_TITLE}` : APP_TITLE;
    if (document.title !== title) document.title = title;
    if (total !== shownBadge) setBadge(total);
}

/** Clears the app's badge (at log-out: the count was this account's). */
export function clearUnreadBadge(): void {
    setBadge(0);
}

function setBadge(total: number): void {
    shownBadge = total;
    // The Badging API: an installed app's icon; absent in some browsers, refused when not installed.
    const badging = navigator as Navigator & { setAppBadge?: (n: number) => Promise<void>; clearAppBadge?: () => Promise<void> };
    const done = total > 0 ? badging.setAppBadge?.(total) : badging.clearAppBadge?.();
    done?.catch(() => undefined);
}

const APP_TITLE = "Chat";
let shownBadge = 0;
