"""Account data, global and per room (m.direct, m.fully_read, m.push_rules...)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from homeserver.core.room_heads import RoomHeads
from homeserver.core.streams import StreamIdGenerator
from homeserver.errors import BadJson, Forbidden, MatrixError, NotFound, TooLarge
from homeserver.events.canonical import ints_in_canonical_range
from homeserver.notifier import Notifier
from homeserver.storage import Storage

# Written by the server only (spec: m.fully_read via /read_markers, m.push_rules via /pushrules).
SERVER_MANAGED = ("m.fully_read", "m.push_rules")


def _own(requester: str, user_id: str) -> None:
    if requester != user_id:
        raise Forbidden("You may only access your own account data")


class AccountDataService:
    def __init__(
        self,
        storage: Storage,
        notifier: Notifier,
        heads: RoomHeads | None = None,
        max_per_user: int = 16 * 1024 * 1024,
    ) -> None:
        self.storage = storage
        # What one user's account data may hold in all (limits.max_account_data_per_user):
        # each entry is only bounded by the request body, and the types are the client's
        # choice, so a loop of PUTs with fresh types filled the database.
        self.max_per_user = max_per_user
        self.notifier = notifier
        self.heads = heads
        self.stream = StreamIdGenerator()
        self._started_at = 0
        self._last_change: dict[str, int] = {}
        # Called with (user id, room id, type, content) after each write (e.g. the ignore list's cache).
        self.on_put: list[Callable[[str, str, str, dict[str, Any]], None]] = []
        # Checks of the content of some types a client writes, by type.
        self.checks: dict[str, Callable[[dict[str, Any]], None]] = {}
        # Several processes (homeserver/workers/streams.py): `forward(verb, args)` hands a
        # write to the stream's writer; `replicate(rows)` tells the others of one made here.
        self.forward: Any = None
        self.replicate: Any = None

    def start(self, current: int) -> None:
        self.stream = StreamIdGenerator(current)
        self._started_at = current

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        if self.forward is not None:
            args = {"user_id": user_id, "room_id": room_id, "type": data_type, "content": content}
            return int(await self.forward("put", args))
        position = self.stream.allocate()
        try:
            await self.storage.user_data.put_account_data(user_id, room_id, data_type, content, position)
        finally:
            # The stream is shared by all users: remember whose position it is, so that
            # everyone else's sync can skip the query.
            self._last_change[user_id] = max(position, self._last_change.get(user_id, 0))
            self.stream.done(position)
        for listener in self.on_put:
            listener(user_id, room_id, data_type, content)
        self.notifier.wake_users([user_id])
        if self.replicate is not None:
            row = {"user_id": user_id, "room_id": room_id, "type": data_type, "content": content}
            self.replicate([{**row, "position": position}])
        return position

    def apply(self, rows: list[dict[str, Any]], position: int) -> None:
        """Account data the writer process stored (homeserver/workers/streams.py): the same
        caches as a local write, then readers may read up to `position`, then wake-ups."""
        for row in rows:
            user_id = row["user_id"]
            self._last_change[user_id] = max(row["position"], self._last_change.get(user_id, 0))
            for listener in self.on_put:
                listener(user_id, row["room_id"], row["type"], row["content"])
        self.stream.advance_to(position)
        self.notifier.wake_users({row["user_id"] for row in rows})

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        return await self.storage.user_data.get_account_data(user_id, room_id, data_type)

    async def get_global_many(self, user_ids: Sequence[str], data_type: str) -> dict[str, dict[str, Any]]:
        """Each of these users' global account data of one type, by user (those that have it)."""
        return await self.storage.user_data.global_account_data_many(user_ids, data_type)

    async def rooms_with(self, user_id: str, data_type: str) -> dict[str, dict[str, Any]]:
        """The user's room account data of one type, by room (e.g. every room's m.tag)."""
        return await self.storage.user_data.room_account_data_of_type(user_id, data_type)

    # The client API: a user's own data, global ("" room) or per room ------------------------------

    async def put_by_client(
        self, requester: str, user_id: str, room_id: str, data_type: str, content: dict[str, Any]
    ) -> None:
        _own(requester, user_id)
        if data_type in SERVER_MANAGED:
            raise MatrixError(
                f"Cannot set {data_type} through the account_data API", "M_BAD_JSON", status=405
            )
        if room_id and (self.heads is None or await self.heads.get(room_id) is None):
            raise MatrixError("Unknown room", "M_INVALID_PARAM")
        if not ints_in_canonical_range(content):  # canonical JSON's range, as push rules
            raise BadJson("Integers must be within ±(2**53 - 1) (canonical JSON)")
        check = self.checks.get(data_type)
        if check is not None and not room_id:
            check(content)
        await self.check_quota(user_id, room_id, data_type, content)
        await self.put(user_id, room_id, data_type, content)

    async def check_quota(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        """Raise TooLarge if storing `content` as this entry would take the user's account data
        past `max_per_user` (what it replaces is counted out). Checked before the write, so
        writes racing each other may pass it together; each is bounded by the request body."""
        used, replaced = await self.storage.user_data.account_data_size(user_id, room_id, data_type)
        size = len(json.dumps(content)) + len(data_type) + len(room_id)
        if size > replaced and used - replaced + size > self.max_per_user:
            raise TooLarge(
                f"Your account data would exceed {self.max_per_user} bytes"
                " (an entry set to {} takes almost none)"
            )

    async def get_by_client(
        self, requester: str, user_id: str, room_id: str, data_type: str
    ) -> dict[str, Any]:
        _own(requester, user_id)
        content = await self.get(user_id, room_id, data_type)
        if content is None:
            raise NotFound("Account data not found")
        return content

    # Direct chats (m.direct: user id -> the ids of the direct rooms with them) --------------------

    async def direct_rooms(self, user_id: str) -> dict[str, list[str]]:
        """The user's m.direct, keeping only well-formed entries (clients may store anything)."""
        content = await self.get(user_id, "", "m.direct") or {}
        return {
            peer: [r for r in rooms if isinstance(r, str)]
            for peer, rooms in content.items()
            if isinstance(rooms, list)
        }

    async def add_direct_room(self, user_id: str, peer: str, room_id: str) -> None:
        """Record `room_id` as a direct chat with `peer` in the user's m.direct."""
        content = await self.get(user_id, "", "m.direct") or {}
        rooms = content.get(peer)
        rooms = [r for r in rooms if isinstance(r, str)] if isinstance(rooms, list) else []
        if room_id in rooms:
            return
        await self.put(user_id, "", "m.direct", {**content, peer: [*rooms, room_id]})

    async def copy_direct_room(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """A direct chat replaced by a room upgrade: the new room is a direct chat with the same
        people in the user's m.direct (Synapse does the same; clients list DMs by it)."""
        content = await self.get(user_id, "", "m.direct") or {}
        changed = {
            peer: [*rooms, new_room_id]
            for peer, rooms in content.items()
            if isinstance(rooms, list) and old_room_id in rooms and new_room_id not in rooms
        }
        if changed:
            await self.put(user_id, "", "m.direct", {**content, **changed})

    async def since(self, user_id: str, after: int, upto: int) -> list[tuple[str, str, dict[str, Any]]]:
        if after >= upto:
            return []
        if after >= self._started_at and self._last_change.get(user_id, 0) <= after:
            return []  # nothing of this user's changed since `after`
        return await self.storage.user_data.account_data_since(user_id, after, upto)
