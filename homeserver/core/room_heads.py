"""The head of each room in memory: current state, forward extremities, depth.

New events are authorised against, and chained onto, the head. Building an
event and applying it to the head happen in one synchronous step on the
reactor thread, so two requests for one room can never build on the same
parent, and the next event can be built before the previous one has committed
(it will commit in the same or a later batch, in order).

The head belongs to the room's writer while any of its events is queued or
committing (`hold` / `release`, called by the persister): such a head is never
evicted, since the database does not have those events yet. If an event fails
to persist (`mark_failed`), every later event of its room was built on it and
fails too; the head is dropped once none of them is left in flight, and the
next `get` rebuilds it from the database (waiting until then). A head rebuilt
from the database equals the one dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from homeserver.storage.events import EventStore, StoredEvent

# Rooms whose head stays in memory; the least recently used idle ones are dropped past this.
MAX_HEADS = 50_000


@dataclass
class RoomHead:
    room_id: str
    room_version: str
    state: dict[tuple[str, str], StoredEvent] = field(default_factory=dict)
    extremities: list[str] = field(default_factory=list)
    depth: int = 0
    # The newest event the head includes, where known (a head loaded from the database, or
    # kept by another writer's events: homeserver/workers/event_replication.py).
    position: int = 0
    _members: dict[tuple[str, ...], list[str]] = field(default_factory=dict, repr=False, compare=False)
    # core/visibility.py's cache: (id of the history_visibility event it ends with, its changes).
    visibility_changes: tuple[str, Any] | None = field(default=None, repr=False, compare=False)

    def get(self, event_type: str, state_key: str = "") -> StoredEvent | None:
        return self.state.get((event_type, state_key))

    def content(self, event_type: str, state_key: str = "") -> dict[str, Any]:
        ev = self.state.get((event_type, state_key))
        return ev.content if ev is not None else {}

    def membership(self, user_id: str) -> str | None:
        ev = self.state.get(("m.room.member", user_id))
        membership = ev.content.get("membership") if ev is not None else None
        return membership if isinstance(membership, str) else None

    def members(self, *memberships: str) -> list[str]:
        """Users with one of `memberships`. Remembered until the next member event: a
        message into a big room asks for its members several times (wake-ups, unread
        counts, presence audiences), and a scan of 1,000 members costs ~150 us.
        Callers must not modify the list."""
        found = self._members.get(memberships)
        if found is None:
            found = self._members[memberships] = [
                key[1]
                for key, ev in self.state.items()
                if key[0] == "m.room.member" and ev.content.get("membership") in memberships
            ]
        return found

    def has_joined_member_of(self, server_name: str) -> bool:
        """Whether a user of `server_name` is joined: a room we only hold an invite or knock
        for (one event, no create) has a head too, but we are not in it."""
        suffix = ":" + server_name
        return any(m.endswith(suffix) for m in self.members("join"))

    def apply(self, ev: StoredEvent) -> None:
        """Chain `ev` onto the head: it replaces the extremities it names in prev_events."""
        if ev.state_key is not None:
            self.state[(ev.type, ev.state_key)] = ev
            if ev.type == "m.room.member":
                self._members.clear()
        prevs = ev.pdu.get("prev_events") or ()
        self.extremities = [e for e in self.extremities if e not in prevs]
        self.extremities.append(ev.event_id)
        self.depth = max(self.depth, ev.depth)

    def apply_committed(self, ev: StoredEvent) -> None:
        """Chain on an event another process wrote, unless the head already has it (it was
        loaded from the database after that event committed)."""
        if ev.stream_ordering <= self.position or ev.event_id in self.extremities:
            return
        self.apply(ev)
        self.position = ev.stream_ordering


class RoomHeads:
    def __init__(self, store: EventStore, max_heads: int = MAX_HEADS) -> None:
        self.store = store
        self.max_heads = max_heads
        self._heads: OrderedDict[str, RoomHead] = OrderedDict()
        self._in_flight: dict[str, int] = {}  # room -> its events queued or committing
        self._failed: dict[str, int] = {}  # room -> position of its first event that failed
        self._rebuild_waiters: dict[str, list[Deferred[None]]] = {}

    async def get(self, room_id: str) -> RoomHead | None:
        while room_id in self._failed:
            # Events built on the failed one are still in flight: rebuild once they are gone.
            waiter: Deferred[None] = Deferred()
            self._rebuild_waiters.setdefault(room_id, []).append(waiter)
            await waiter
        head = self._heads.get(room_id)
        if head is not None:
            self._heads.move_to_end(room_id)
            return head
        snapshot = await self.store.load_room(room_id)
        if snapshot is None:
            return None
        # Another request may have loaded (and advanced) it while we waited.
        head = self._heads.get(room_id)
        if head is None:
            head = RoomHead(
                snapshot.room_id,
                snapshot.room_version,
                snapshot.state,
                snapshot.extremities,
                snapshot.depth,
                position=snapshot.position,
            )
            self.put(head)
        return head

    def peek(self, room_id: str) -> RoomHead | None:
        """The head if it is in memory (no loading)."""
        return self._heads.get(room_id)

    def put(self, head: RoomHead) -> None:
        self._heads[head.room_id] = head
        if len(self._heads) > self.max_heads:
            self._evict_one()

    def forget(self, room_id: str) -> None:
        """Drop the head (the next `get` loads it again), unless this process has events of
        the room in flight."""
        if room_id not in self._in_flight:
            self._heads.pop(room_id, None)

    def _evict_one(self) -> None:
        """Drop the least recently used head that has nothing in flight."""
        for room_id in self._heads:
            if room_id not in self._in_flight:
                del self._heads[room_id]
                return

    # The writer's bookkeeping (core/persist.py) ----------------------------------------------

    def hold(self, room_id: str) -> None:
        """An event of the room is queued to persist: keep its head."""
        self._in_flight[room_id] = self._in_flight.get(room_id, 0) + 1

    def release(self, room_id: str) -> None:
        """An event of the room committed or failed."""
        left = self._in_flight[room_id] - 1
        if left:
            self._in_flight[room_id] = left
            return
        del self._in_flight[room_id]
        if room_id in self._failed:
            # Nothing built on the failed event is left: rebuild from the database.
            del self._failed[room_id]
            self._heads.pop(room_id, None)
            for waiter in self._rebuild_waiters.pop(room_id, []):
                waiter.callback(None)

    def mark_failed(self, room_id: str, position: int) -> None:
        """The room's event at `position` will never be stored: later ones, built on it, fail."""
        if position < self._failed.get(room_id, position + 1):
            self._failed[room_id] = position

    def has_failed(self, room_id: str) -> bool:
        """Whether an event of the room failed and its head is waiting to be rebuilt."""
        return room_id in self._failed

    def built_on_failed(self, room_id: str, position: int) -> bool:
        """Whether an event of the room at `position` was built on one that failed."""
        failed = self._failed.get(room_id)
        return failed is not None and position > failed

    def in_flight(self, room_id: str) -> int:
        return self._in_flight.get(room_id, 0)
