"""The first spec's chats, messages and groups, on top of Matrix rooms.

A chat is a room. A direct chat is created on the first message to a user
(`trusted_private_chat`, `is_direct`, recorded in both users' `m.direct`
account data so Matrix clients show it as a DM too); a group is a room with a
name whose admins have power level 100. A message is an `m.room.message`; its
status comes from `core/delivery.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import DeferredLock

from homeserver.core.account_data import AccountDataService
from homeserver.core.delivery import DeliveryTracker, overall_status
from homeserver.core.events import EventService
from homeserver.core.filters import EventFilter
from homeserver.core.iso_time import iso_time
from homeserver.core.messages import MessagesService
from homeserver.core.presence import PresenceService
from homeserver.core.receipts import ReceiptService
from homeserver.core.room_heads import RoomHead
from homeserver.core.rooms import RoomService, check_user_id
from homeserver.core.streams import pagination_token
from homeserver.core.timeline_cache import TimelineCache
from homeserver.core.txn_ids import scoped_txn_id
from homeserver.core.unread import UnreadCounter
from homeserver.errors import Forbidden, MatrixError, NotFound
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent

MAX_PAGE = 100
MAX_NAME_LENGTH = 255
MESSAGE_TYPES = ("m.room.message", "m.room.encrypted")
_MESSAGE_FILTER = EventFilter(types=list(MESSAGE_TYPES))
# A page's `before` cursor, as message_list writes it: "p" and a position in the event stream
# (pagination_token), with no "+", no leading zero, no "-0", at most 15 digits.
_CURSOR_RE = re.compile(r"p(0|-?[1-9][0-9]{0,14})")


def parse_cursor(text: str) -> int:
    """The position of a `before` cursor, or M_INVALID_PARAM: one message_list never wrote
    (a sync token, a number spelled another way) once paged to an empty 200."""
    m = _CURSOR_RE.fullmatch(text)
    if m is None:
        raise MatrixError("'before' is not a cursor: pass back one a page's Link gave", "M_INVALID_PARAM")
    return int(m.group(1))


def message_content(content: object) -> dict[str, Any]:
    """The simple API's `content`: a string is a text message, an object is sent as it is."""
    if isinstance(content, str):
        if not content:
            raise MatrixError("'content' must not be empty", "M_INVALID_PARAM")
        return {"msgtype": "m.text", "body": content}
    if isinstance(content, dict):
        return content
    raise MatrixError("'content' must be a string or an object", "M_BAD_JSON")


def simple_content(ev: StoredEvent) -> Any:
    """What the simple API shows as `content`: the text of a plain text message, else the whole content."""
    return _shown_content(ev.type, ev.content)


def _shown_content(event_type: str, content: dict[str, Any]) -> Any:
    if (
        event_type == "m.room.message"
        and content.get("msgtype") == "m.text"
        and set(content) <= {"msgtype", "body"}
    ):
        return content.get("body")
    return content


def is_edit(ev: StoredEvent) -> bool:
    """An `m.replace` event: shown as its original's new content, never as a message of its own."""
    relation = ev.content.get("m.relates_to")
    return isinstance(relation, dict) and relation.get("rel_type") == "m.replace"


def with_timestamp(entry: dict[str, Any], ms: int) -> dict[str, Any]:
    """The first spec's ISO 8601 `timestamp`, and the same instant as a number for sorting."""
    entry["timestamp"] = iso_time(ms)
    entry["timestampMs"] = ms
    return entry


@dataclass(frozen=True)
class MessagePage:
    messages: list[dict[str, Any]]
    # The `before` of the next (older) page; None at the start of the chat.
    before: str | None


class ChatService:
    def __init__(
        self,
        storage: Storage,
        events: EventService,
        rooms: RoomService,
        messages: MessagesService,
        account_data: AccountDataService,
        delivery: DeliveryTracker,
        presence: PresenceService,
        timeline: TimelineCache,
        unread: UnreadCounter,
        receipts: ReceiptService,
    ) -> None:
        self.storage = storage
        self.events = events
        self.rooms = rooms
        self.messages = messages
        self.account_data = account_data
        self.delivery = delivery
        self.presence = presence
        self.timeline = timeline
        self.unread = unread
        self.receipts = receipts
        self._direct_locks: dict[str, DeferredLock] = {}

    # Chats -------------------------------------------------------------------------

    async def find_direct_chat(self, user_id: str, other: str) -> str | None:
        direct = await self.account_data.direct_rooms(user_id)
        for room_id in direct.get(other, []):
            head = await self.events.heads.get(room_id)
            if (
                head is not None
                and head.membership(user_id) in ("join", "invite")
                and head.membership(other) in ("join", "invite")
            ):
                return str(room_id)
        return None

    async def open_direct_chat(self, user_id: str, other: str, encrypted: bool | None = None) -> str:
        """The direct chat between the two users, created (with the other invited) if there is none."""
        check_user_id(other, "receiverId")
        if other == user_id:
            raise MatrixError("You cannot message yourself", "M_INVALID_PARAM")
        existing = await self.find_direct_chat(user_id, other)
        if existing is not None:
            return existing
        # One creation at a time per user (locks taken in one order): concurrent first messages,
        # from either side, share one chat, and no m.direct update overwrites another.
        locks = [self._direct_locks.setdefault(u, DeferredLock()) for u in sorted((user_id, other))]
        for lock in locks:
            await lock.acquire()
        try:
            existing = await self.find_direct_chat(user_id, other)
            if existing is not None:
                return existing
            room_id = await self.rooms.create_room(
                user_id,
                {"preset": "trusted_private_chat", "is_direct": True, "invite": [other]},
                encrypted=encrypted,
            )
            for owner, peer in ((user_id, other), (other, user_id)):
                await self.account_data.add_direct_room(owner, peer, room_id)
            return room_id
        finally:
            for lock in reversed(locks):
                lock.release()

    async def access_chat(self, user_id: str, chat_id: str) -> RoomHead:
        """The chat's head for a member; an invited user joins on first access.

        The simple API has no invitations to accept: being added to a chat is enough.
        """
        head = await self.events.heads.get(chat_id)
        if head is None:
            raise Forbidden("You are not a member of this chat")
        if head.membership(user_id) == "invite":
            await self.rooms.join(user_id, chat_id)
        elif head.membership(user_id) != "join":
            raise Forbidden("You are not a member of this chat")
        return head

    async def send(
        self,
        user_id: str,
        device_id: str,
        chat_id: str | None,
        receiver_id: str | None,
        content: object,
        client_id: str | None,
        encrypted: bool | None = None,
        *,
        claimed_sender: str | None = None,
    ) -> StoredEvent:
        """Send a message to a chat, or to a user (opening the direct chat with them).
        `claimed_sender` (the simple API's optional `senderId`) must be the sender."""
        if claimed_sender is not None and claimed_sender != user_id:
            raise Forbidden("senderId must be the authenticated user (or left out)")
        body = message_content(content)
        if chat_id is None:
            if receiver_id is None:
                raise MatrixError("'receiverId' or 'chatId' is required", "M_MISSING_PARAM")
            chat_id = await self.open_direct_chat(user_id, receiver_id, encrypted)
            # An invitee answering by receiverId joins, as on any other first access.
            head = await self.access_chat(user_id, chat_id)
        else:
            head = await self.access_chat(user_id, chat_id)
        event_type = (
            "m.room.encrypted" if body.get("algorithm") and body.get("ciphertext") else "m.room.message"
        )
        if head.get("m.room.encryption") is not None and event_type != "m.room.encrypted":
            # The server never sees plaintext of an encrypted chat: it refuses it rather than leak it.
            raise MatrixError(
                "This chat is end-to-end encrypted: send an m.room.encrypted payload"
                " (algorithm, ciphertext, ...) made by a Matrix crypto SDK",
                "M_BAD_JSON",
            )
        txn = (device_id, scoped_txn_id("simple/messages/send", client_id)) if client_id else None
        return await self.events.send(user_id, chat_id, event_type, body, txn=txn, rate_limited=True)

    async def message_list(self, user_id: str, chat_id: str, before: str | None, limit: int) -> MessagePage:
        position = None if before is None else parse_cursor(before)
        head = await self.access_chat(user_id, chat_id)
        if position is not None and position < 0 and not await self.storage.events.has_backfilled(chat_id):
            # Positions below zero hold history fetched from other servers (backfill): a
            # negative cursor of a chat without any was never given out.
            raise MatrixError("'before' is not a cursor of this chat", "M_INVALID_PARAM")
        limit = max(1, min(limit, MAX_PAGE))
        found: list[StoredEvent] = []
        # The latest edit each message's reader may see (bundled by the Matrix serializer).
        edits: dict[str, dict[str, Any]] = {}
        cursor = before
        # Read back, skipping state, edits and other non-message events, until one message more
        # than the page is found (an older page exists) or the start of the chat.
        for _ in range(20):
            page = await self.messages.messages(
                user_id, chat_id, cursor, "b", limit * 2, None, _MESSAGE_FILTER, False
            )
            for served in page["chunk"]:
                edit = served.get("unsigned", {}).get("m.relations", {}).get("m.replace")
                if edit is not None:
                    edits[served["event_id"]] = edit
            ids = [e["event_id"] for e in page["chunk"]]
            stored = await self.storage.events.get_events(ids)
            found.extend(
                stored[i]
                for i in ids
                if i in stored and stored[i].type in MESSAGE_TYPES and not is_edit(stored[i])
            )
            cursor = page.get("end")
            if len(found) > limit or cursor is None:
                break
        if len(found) > limit:
            found = found[:limit]
            cursor = pagination_token(found[-1].stream_ordering - 1)
        # Else `cursor` is None at the start of the chat, or (after a long run of other events)
        # where the reading stopped: the next page goes on from there.
        statuses = await self.delivery.statuses(head, found)
        messages = []
        for ev in found:
            entry: dict[str, Any] = {
                "messageId": ev.event_id,
                "chatId": chat_id,
                "senderId": ev.sender,
                "content": simple_content(ev) if ev.redacted_by is None else None,
            }
            with_timestamp(entry, ev.origin_server_ts)
            entry["status"] = overall_status(statuses[ev.event_id])
            edit = edits.get(ev.event_id) if ev.redacted_by is None else None
            if edit is not None:
                entry["content"] = self._edited_content(edit)
                entry["editedAt"] = iso_time(edit["origin_server_ts"])
            if ev.redacted_by is not None:
                entry["deleted"] = True
            messages.append(entry)
        return MessagePage(messages, cursor)

    @staticmethod
    def _edited_content(edit: dict[str, Any]) -> Any:
        """An edit's replacement content (`m.new_content`); an encrypted edit as it is (the
        client decrypts it and finds `m.new_content` inside)."""
        new_content = edit["content"].get("m.new_content")
        if edit["type"] == "m.room.message" and isinstance(new_content, dict):
            return _shown_content("m.room.message", new_content)
        return edit["content"]

    async def _visible_message(self, user_id: str, head: RoomHead, message_id: str) -> StoredEvent:
        """A message of this chat the user may see, or 404 (never telling whether it exists elsewhere)."""
        ev = (await self.storage.events.get_events([message_id])).get(message_id)
        visible = ev is not None and await self.messages.visibility.can_see_event(user_id, head, ev)
        if (
            ev is None
            or ev.room_id != head.room_id
            or not visible
            or ev.type not in MESSAGE_TYPES
            or is_edit(ev)
        ):
            raise NotFound("Unknown message")
        return ev

    async def message_status(self, user_id: str, chat_id: str, message_id: str) -> dict[str, Any]:
        head = await self.access_chat(user_id, chat_id)
        ev = await self._visible_message(user_id, head, message_id)
        statuses = (await self.delivery.statuses(head, [ev]))[ev.event_id]
        return {
            "messageId": ev.event_id,
            "status": overall_status(statuses),
            "recipients": [{"userId": s.user_id, "status": s.status} for s in statuses],
        }

    async def mark_read(self, user_id: str, chat_id: str, message_id: str | None) -> str:
        """Read up to `message_id` (default: the newest message): a public read receipt, which
        makes it `read` for its sender and clears the unread count, and the fully-read marker
        Matrix clients show. Returns the message read up to."""
        head = await self.access_chat(user_id, chat_id)
        if message_id is None:
            last = await self._last_message(user_id, head)
            if last is None:
                raise NotFound("This chat has no message to read")
            message_id = str(last["messageId"])
        await self._visible_message(user_id, head, message_id)
        await self.receipts.set_read_markers(
            user_id, chat_id, {"m.fully_read": message_id, "m.read": message_id}
        )
        return message_id

    async def edit_message(self, user_id: str, chat_id: str, message_id: str, content: object) -> StoredEvent:
        """Replace a message's content with an `m.replace` edit (spec: Event replacements), which
        Matrix clients show in place. Only its sender may, and not once it is deleted."""
        head = await self.access_chat(user_id, chat_id)
        original = await self._visible_message(user_id, head, message_id)
        if original.sender != user_id:
            raise Forbidden("Only the sender of a message can edit it")
        if original.redacted_by is not None:
            raise MatrixError("This message was deleted", "M_INVALID_PARAM")
        new = message_content(content)
        relation = {"rel_type": "m.replace", "event_id": message_id}
        if head.get("m.room.encryption") is not None or original.type == "m.room.encrypted":
            if not (new.get("algorithm") and new.get("ciphertext")):
                raise MatrixError(
                    "This chat is end-to-end encrypted: send the edit as an m.room.encrypted payload",
                    "M_BAD_JSON",
                )
            # The relation stays in the clear, as the spec asks, so the server can bundle it.
            return await self.events.send(
                user_id, chat_id, "m.room.encrypted", {**new, "m.relates_to": relation}, rate_limited=True
            )
        body = {
            **new,
            # Clients that do not know edits show this fallback.
            "body": f"* {new.get('body', '')}",
            "m.new_content": new,
            "m.relates_to": relation,
        }
        # A client's send like any other: the rate limit, suspension and shadow ban apply.
        return await self.events.send(user_id, chat_id, "m.room.message", body, rate_limited=True)

    async def delete_message(self, user_id: str, device_id: str, chat_id: str, message_id: str) -> None:
        """Delete a message for everyone: a redaction. Its sender may, and a group admin (the
        redact power level). In a direct chat only its sender: `trusted_private_chat` gives
        both people the admins' power level, and neither is a group admin who may delete the
        other's words. Deleting it again from the same device changes nothing."""
        head = await self.access_chat(user_id, chat_id)
        ev = await self._visible_message(user_id, head, message_id)
        if ev.sender != user_id and await self._is_direct(user_id, head):
            raise Forbidden("Only its sender may delete a message of a direct chat")
        await self.rooms.redact(user_id, device_id, chat_id, message_id, None, f"simple/delete/{message_id}")

    async def leave_chat(self, user_id: str, chat_id: str) -> None:
        """Leave a chat (or decline being added to it). Afterwards it reads as any other chat
        the user is not in: 403."""
        head = await self.events.heads.get(chat_id)
        if head is None or head.membership(user_id) not in ("join", "invite"):
            raise Forbidden("You are not a member of this chat")
        await self.rooms.leave(user_id, chat_id)

    async def rename_group(self, user_id: str, chat_id: str, name: str) -> None:
        """A new `m.room.name`; the room's power levels decide who may (a group's admins)."""
        head = await self.access_chat(user_id, chat_id)
        name = name.strip()
        if not name:
            raise MatrixError("'name' must not be empty", "M_INVALID_PARAM")
        if len(name) > MAX_NAME_LENGTH:
            raise MatrixError(f"'name' is longer than {MAX_NAME_LENGTH} characters", "M_INVALID_PARAM")
        if not self.rooms.may(user_id, head, "state", event_type="m.room.name"):
            raise Forbidden("Only a group admin can rename it")
        await self.rooms.send_state(user_id, chat_id, "m.room.name", "", {"name": name})

    async def _direct_rooms(self, user_id: str) -> set[str]:
        return {r for rooms in (await self.account_data.direct_rooms(user_id)).values() for r in rooms}

    async def _is_direct(self, user_id: str, head: RoomHead) -> bool:
        return _direct(head, await self._direct_rooms(user_id))

    async def chat_list(self, user_id: str) -> list[dict[str, Any]]:
        memberships = await self.timeline.rooms_for_user(user_id)
        direct_rooms = await self._direct_rooms(user_id)
        out: list[dict[str, Any]] = []
        for room_id, (membership, _) in sorted(memberships.items()):
            if membership not in ("join", "invite"):
                continue
            head = await self.events.heads.get(room_id)
            if head is None:
                continue
            members = head.members("join", "invite")
            is_direct = _direct(head, direct_rooms)
            last = await self._last_message(user_id, head)
            create = head.get("m.room.create")
            created_ms = create.origin_server_ts if create is not None else 0
            out.append(
                {
                    "chatId": room_id,
                    "name": head.content("m.room.name").get("name"),
                    "createdAt": iso_time(created_ms),
                    "createdAtMs": created_ms,
                    "isGroup": not is_direct,
                    "membership": membership,
                    "members": [
                        {
                            "userId": m,
                            "isOnline": self.presence.is_online(m),
                            "isAdmin": self.rooms.may(m, head, "kick")
                            if head.membership(m) == "join"
                            else False,
                        }
                        for m in sorted(members)
                    ],
                    "lastMessage": last,
                    "unreadCount": (await self.unread.counts(user_id, room_id))["notification_count"]
                    if membership == "join"
                    else 0,
                }
            )
        # Most recent first: by the last message, or by creation for a chat with none yet.
        out.sort(key=lambda c: -int((c["lastMessage"] or {}).get("timestampMs", c["createdAtMs"])))
        return out

    async def _last_message(self, user_id: str, head: RoomHead) -> dict[str, Any] | None:
        if head.membership(user_id) != "join":
            return None
        rows = await self.storage.events.room_events_between(
            head.room_id, 0, self.timeline.room_last.get(head.room_id, 0), 20
        )
        rows = [ev for ev in rows if ev.type in MESSAGE_TYPES and ev.redacted_by is None and not is_edit(ev)]
        # Not one sent before the user may see the chat's history (e.g. before they joined).
        for ev in await self.messages.visibility.filter_for_user(user_id, head, rows):
            last = {"messageId": ev.event_id, "senderId": ev.sender, "content": simple_content(ev)}
            edits = (await self.storage.events.edits([ev.event_id])).get(ev.event_id, [])
            seen = await self.messages.visibility.filter_for_user(user_id, head, edits)
            if seen:
                last["content"] = self._edited_content({"type": seen[-1].type, "content": seen[-1].content})
            return with_timestamp(last, ev.origin_server_ts)
        return None

    # Profiles ----------------------------------------------------------------------

    async def profile(self, user_id: str) -> dict[str, Any]:
        """A user's display name, avatar (`mxc://`) and presence, as Matrix shows them to anyone
        signed in (`GET /profile`, `GET /presence`); 404 for a user this server does not have."""
        check_user_id(user_id, "userId")
        fields = await self.storage.accounts.get_profile(user_id)
        if fields is None:
            raise NotFound("Unknown user")
        display_name, avatar = fields
        presence = self.presence.get(user_id)
        last_seen = presence.last_active_ts if presence is not None else None
        return {
            "userId": user_id,
            "displayName": display_name,
            "avatarContentUri": avatar,
            "isOnline": self.presence.is_online(user_id),
            "lastSeen": iso_time(last_seen) if last_seen is not None else None,
            "lastSeenMs": last_seen,
        }

    # Groups ------------------------------------------------------------------------

    async def create_group(
        self, user_id: str, name: str, members: list[str], encrypted: bool | None = None
    ) -> str:
        if not name.strip():
            raise MatrixError("'name' must not be empty", "M_INVALID_PARAM")
        if len(name.strip()) > MAX_NAME_LENGTH:
            raise MatrixError(f"'name' is longer than {MAX_NAME_LENGTH} characters", "M_INVALID_PARAM")
        return await self.rooms.create_room(
            user_id, {"preset": "private_chat", "name": name, "invite": members}, encrypted=encrypted
        )

    async def add_member(self, admin: str, chat_id: str, user_id: str) -> None:
        head = await self.access_chat(admin, chat_id)
        if not self.rooms.may(admin, head, "kick"):
            raise Forbidden("Only a group admin can add members")
        await self.rooms.invite(admin, chat_id, check_user_id(user_id, "userId"))

    async def remove_member(self, admin: str, chat_id: str, user_id: str) -> None:
        await self.access_chat(admin, chat_id)
        await self.rooms.kick(admin, chat_id, check_user_id(user_id, "userId"), None)


def _direct(head: RoomHead, direct_rooms: set[str]) -> bool:
    """Whether a chat is direct: in the user's m.direct (both sides of a chat opened here, and
    whoever joined from an is_direct invite), or with an is_direct invite pending."""
    return head.room_id in direct_rooms or any(
        head.content("m.room.member", m).get("is_direct") for m in head.members("join", "invite")
    )
