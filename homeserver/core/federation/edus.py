"""EDUs received over federation: one handler per type (the seam other parts register on).

The /send handler calls `receive_all(origin, edus)` with a transaction's EDUs. Unknown types
are ignored (the spec lets servers drop EDUs they do not understand), and one bad EDU never
fails the others: each handler's error is logged and the next EDU goes on.

The handlers here are typing, receipts and presence (`InboundEdus`): each checks that the user
belongs to the origin server (a server speaks only for its own users) and is joined to the
room it names, whose server ACL admits the origin (or, for presence, shares a room with one
of ours), then hands it to the same
services local clients use, so local /sync shows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

from homeserver.core.federation.server_acl import room_acl, server_allowed
from homeserver.core.presence import PresenceService
from homeserver.core.receipts import ReceiptService
from homeserver.core.room_heads import RoomHeads
from homeserver.core.typing import TypingService
from homeserver.logs import log_failure

log = Logger()

EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]

# Remote typing lasts this long unless renewed (Synapse's federation typing timeout).
REMOTE_TYPING_TIMEOUT_MS = 30_000
PRESENCE_STATES = ("online", "offline", "unavailable")


class EduReceiver:
    def __init__(self) -> None:
        self._handlers: dict[str, EduHandler] = {}

    def register(self, edu_type: str, handler: EduHandler) -> None:
        """Hand every EDU of `edu_type` to `handler(origin, content)` (replacing any before)."""
        self._handlers[edu_type] = handler

    async def receive_all(self, origin: str, edus: list[dict[str, Any]]) -> None:
        """Handle a transaction's EDUs in order; unknown or malformed ones are skipped."""
        for edu in edus:
            if not isinstance(edu, dict):
                continue
            edu_type, content = edu.get("edu_type"), edu.get("content")
            handler = self._handlers.get(edu_type) if isinstance(edu_type, str) else None
            if handler is None or not isinstance(content, dict):
                continue
            try:
                await handler(origin, content)
            except Exception:
                log_failure(log, "EDU {type} from {origin} failed", type=edu_type, origin=origin)


def _server_of(user_id: Any) -> str | None:
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        return None
    return user_id.partition(":")[2]


class InboundEdus:
    """m.typing, m.receipt and m.presence from other servers, checked, into our services."""

    def __init__(
        self,
        room_heads: RoomHeads,
        typing: TypingService,
        receipts: ReceiptService,
        presence: PresenceService,
        shares_room_with_local_user: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.room_heads = room_heads
        self.typing = typing
        self.receipts = receipts
        self.presence = presence
        self._shares_room = shares_room_with_local_user

    def register(self, receiver: EduReceiver) -> None:
        receiver.register("m.typing", self.on_typing)
        receiver.register("m.receipt", self.on_receipt)
        receiver.register("m.presence", self.on_presence)

    async def _joined(self, origin: str, user_id: Any, room_id: Any) -> list[str] | None:
        """The room's joined members if `user_id` is of `origin` and joined to it, else None."""
        if _server_of(user_id) != origin or not isinstance(room_id, str):
            return None
        head = await self.room_heads.get(room_id)
        if head is None or head.membership(user_id) != "join":
            return None
        if not server_allowed(origin, room_acl(head)):
            return None  # banned from the room by its server ACL (as Synapse drops them)
        return head.members("join")

    async def on_typing(self, origin: str, content: dict[str, Any]) -> None:
        user_id, room_id, typing = content.get("user_id"), content.get("room_id"), content.get("typing")
        if not isinstance(typing, bool):
            return
        members = await self._joined(origin, user_id, room_id)
        if members is None:
            log.info(
                "typing from {origin} for {user} in {room} dropped", origin=origin, user=user_id, room=room_id
            )
            return
        assert isinstance(user_id, str) and isinstance(room_id, str)
        if not self.typing.set_by_remote(room_id, user_id, typing, REMOTE_TYPING_TIMEOUT_MS, members):
            log.info("typing from {origin} for {user} dropped: over its rate", origin=origin, user=user_id)

    async def on_receipt(self, origin: str, content: dict[str, Any]) -> None:
        # {room_id: {"m.read": {user_id: {"event_ids": [...], "data": {...}}}}}
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            reads = by_type.get("m.read")
            if not isinstance(reads, dict):
                continue
            for user_id, receipt in reads.items():
                if not isinstance(receipt, dict):
                    continue
                event_ids = receipt.get("event_ids")
                data = receipt.get("data")
                thread_id = data.get("thread_id") if isinstance(data, dict) else None
                if not isinstance(event_ids, list) or not event_ids or not isinstance(event_ids[-1], str):
                    continue
                if thread_id is not None and not isinstance(thread_id, str):
                    continue
                members = await self._joined(origin, user_id, room_id)
                if members is None:
                    continue
                await self.receipts.record_remote_receipt(user_id, room_id, event_ids[-1], thread_id, members)

    async def on_presence(self, origin: str, content: dict[str, Any]) -> None:
        updates = content.get("push")
        if not isinstance(updates, list):
            return
        for update in updates[:1000]:
            if not isinstance(update, dict):
                continue
            user_id, state = update.get("user_id"), update.get("presence")
            if _server_of(user_id) != origin or state not in PRESENCE_STATES:
                continue
            assert isinstance(user_id, str) and isinstance(state, str)
            if not await self._shares_room(user_id):
                continue
            status_msg = update.get("status_msg")
            await self.presence.set_state(
                user_id, state, status_msg if isinstance(status_msg, str) else None, active=state == "online"
            )
