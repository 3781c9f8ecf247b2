"""Read receipts (m.read, m.read.private) and read markers (m.fully_read)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from homeserver.core.account_data import AccountDataService
from homeserver.core.clock import Clock
from homeserver.core.rooms import RoomService
from homeserver.core.streams import StreamIdGenerator
from homeserver.errors import BadJson, LimitExceeded, MatrixError, NotFound
from homeserver.logs import log_failure
from homeserver.notifier import Notifier
from homeserver.storage import Storage

RECEIPT_TYPES = ("m.read", "m.read.private")

log = Logger()


class ReceiptService:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        notifier: Notifier,
        rooms: RoomService,
        account_data: AccountDataService,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.notifier = notifier
        self.rooms = rooms
        self.account_data = account_data
        self.stream = StreamIdGenerator()
        self._started_at = 0
        self._room_last: dict[str, int] = {}
        # Called as on_read(user_id, room_id) when a read receipt moves (unread counts).
        self.on_read: Any = None
        # Each called as listener(user_id, room_id, stream_id) after that, on every process
        # (the push plugin's badge updates, PluginApi.on_read_receipt).
        self.read_listeners: list[Callable[[str, str, int], None]] = []
        # Awaited as on_local_receipt(user_id, room_id, event_id, thread_id, ts) after a local
        # user's public read receipt is stored (the federation sender).
        self.on_local_receipt: Any = None
        # Several processes (homeserver/workers/streams.py): `forward(verb, args)` hands a
        # write to the stream's writer; `replicate(rows)` tells the others of one made here.
        self.forward: Any = None
        self.replicate: Any = None

    def start(self, current: int) -> None:
        self.stream = StreamIdGenerator(current)
        self._started_at = current

    async def _event_positions(self, room_id: str, event_ids: list[str]) -> list[int]:
        """The stream position of each event, read at once (read_markers' markers often
        name the same one); NotFound for one that is not an event of this room."""
        events = await self.storage.events.get_events(list(dict.fromkeys(event_ids)))
        positions = []
        for event_id in event_ids:
            ev = events.get(event_id)
            if ev is None or ev.room_id != room_id:
                raise NotFound("Unknown event in this room")
            positions.append(ev.stream_ordering)
        return positions

    async def set_receipt(
        self, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: str | None = None
    ) -> None:
        if self.forward is not None:
            args = {"user_id": user_id, "room_id": room_id, "type": receipt_type, "event_id": event_id}
            await self.forward("set", {**args, "thread_id": thread_id})
            return
        await self._set(user_id, room_id, [(receipt_type, event_id, thread_id)])

    async def set_read_markers(self, user_id: str, room_id: str, markers: dict[str, Any]) -> None:
        """`POST /rooms/{roomId}/read_markers`: the fully-read marker and read receipts at once."""
        wanted: list[tuple[str, str, str | None]] = []
        for key in ("m.fully_read", "m.read", "m.read.private"):
            event_id = markers.get(key)
            if event_id is None:
                continue
            if not isinstance(event_id, str):
                raise BadJson(f"'{key}' must be an event id")
            wanted.append((key, event_id, None))
        if self.forward is not None:
            args = {"user_id": user_id, "room_id": room_id}
            await self.forward("markers", {**args, "markers": {key: event for key, event, _ in wanted}})
            return
        await self._set(user_id, room_id, wanted)

    async def _set(self, user_id: str, room_id: str, receipts: list[tuple[str, str, str | None]]) -> None:
        """Every receipt checked (membership, types, events, the rate) before any is stored:
        a request is stored whole or refused whole. The rate takes them all at once (one
        token lets read_markers' two or three through, and the bucket goes below zero)."""
        head = await self.rooms.access_room_as_member(user_id, room_id)
        for receipt_type, _, thread_id in receipts:
            if receipt_type != "m.fully_read" and receipt_type not in RECEIPT_TYPES:
                raise MatrixError(f"Unknown receipt type {receipt_type}", "M_INVALID_PARAM")
            if thread_id is not None and not isinstance(thread_id, str):
                raise MatrixError("'thread_id' must be a string", "M_BAD_JSON")
        if not receipts:
            return
        positions = await self._event_positions(room_id, [event_id for _, event_id, _ in receipts])
        # Each is a write, and a public one wakes every member's sync and goes to the room's
        # servers: a loop of receipts in a big room made that work at request speed.
        self.rooms.limit_user("receipt", user_id, cost=len(receipts))
        for (receipt_type, event_id, thread_id), position in zip(receipts, positions, strict=True):
            if receipt_type == "m.fully_read":
                await self.account_data.put(user_id, room_id, "m.fully_read", {"event_id": event_id})
                continue
            stream_id = await self._record(user_id, room_id, receipt_type, event_id, thread_id, position)
            # A private receipt concerns only its owner; a public one the whole room.
            woken = [user_id] if receipt_type == "m.read.private" else head.members("join")
            self.notifier.wake_users(woken)
            self._replicate(stream_id, user_id, room_id, woken)
            if receipt_type == "m.read" and self.on_local_receipt is not None:
                await self.on_local_receipt(user_id, room_id, event_id, thread_id, self.clock.time_ms())

    async def record_remote_receipt(
        self, user_id: str, room_id: str, event_id: str, thread_id: str | None, members: list[str]
    ) -> None:
        """A read receipt another server sent for its (checked, joined) user; an event we do
        not have is skipped (we may not have fetched it yet)."""
        if self.forward is not None:
            args = {"user_id": user_id, "room_id": room_id, "event_id": event_id, "thread_id": thread_id}
            await self.forward("remote", {**args, "members": members})
            return
        try:
            self.rooms.limit_user("receipt", user_id)  # as the user's own client would be
        except LimitExceeded:
            log.info("read receipt of {user} in {room} dropped: over its rate", user=user_id, room=room_id)
            return
        try:
            (position,) = await self._event_positions(room_id, [event_id])
        except NotFound:
            return
        stream_id = await self._record(user_id, room_id, "m.read", event_id, thread_id, position)
        self.notifier.wake_users(members)
        self._replicate(stream_id, user_id, room_id, members)

    def _replicate(self, stream_id: int, user_id: str, room_id: str, woken: list[str]) -> None:
        if self.replicate is not None:
            self.replicate([{"position": stream_id, "user_id": user_id, "room_id": room_id, "wake": woken}])

    def apply(self, rows: list[dict[str, Any]], position: int) -> None:
        """Receipts the writer process stored (homeserver/workers/streams.py): the same
        bookkeeping as a local write, then readers may read up to `position`, then wake-ups."""
        for row in rows:
            room_id = row["room_id"]
            self._room_last[room_id] = max(row["position"], self._room_last.get(room_id, 0))
            if self.on_read is not None:
                self.on_read(row["user_id"], room_id)
            self._tell_listeners(row["user_id"], room_id, row["position"])
        self.stream.advance_to(position)
        for row in rows:
            self.notifier.wake_users(row["wake"])

    async def _record(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        thread_id: str | None,
        position: int,
    ) -> int:
        stream_id = self.stream.allocate()
        try:
            await self.storage.user_data.put_receipt(
                room_id,
                receipt_type,
                user_id,
                thread_id or "",
                event_id,
                position,
                stream_id,
                self.clock.time_ms(),
            )
        finally:
            self._room_last[room_id] = max(stream_id, self._room_last.get(room_id, 0))
            self.stream.done(stream_id)
        if self.on_read is not None:
            # Before the wake-up, so the woken syncs count afresh.
            self.on_read(user_id, room_id)
        self._tell_listeners(user_id, room_id, stream_id)
        return stream_id

    def _tell_listeners(self, user_id: str, room_id: str, stream_id: int) -> None:
        for listener in self.read_listeners:
            try:
                listener(user_id, room_id, stream_id)
            except Exception:
                log_failure(log, "a read receipt listener failed")

    async def receipts_event(
        self, user_id: str, room_ids: list[str], after: int, upto: int
    ) -> dict[str, dict[str, Any]]:
        """room id -> the m.receipt ephemeral event with receipts changed in (after, upto]."""
        if after >= upto:
            return {}
        if after >= self._started_at:
            # Receipts are one stream for all rooms: query only the rooms that have new ones.
            room_ids = [r for r in room_ids if self._room_last.get(r, 0) > after]
            if not room_ids:
                return {}
        out: dict[str, dict[str, Any]] = {}
        rows = await self.storage.user_data.receipts_for_rooms(room_ids, after, upto)
        for room_id, receipt_type, receipt_user, thread_id, event_id, _pos, ts in rows:
            if receipt_type == "m.read.private" and receipt_user != user_id:
                continue
            content = out.setdefault(room_id, {"type": "m.receipt", "content": {}})["content"]
            entry: dict[str, Any] = {"ts": ts}
            if thread_id:
                entry["thread_id"] = thread_id
            content.setdefault(event_id, {}).setdefault(receipt_type, {})[receipt_user] = entry
        return out
