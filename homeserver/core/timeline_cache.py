"""Recent events per room, and each user's rooms, in memory.

A sync woken by a new message needs only that message: answering from memory
keeps the fan-out of one event to hundreds of waiting members off the database.
The cache is fed after each commit, so it only ever holds persisted events.
A room's cache is complete for positions after `complete_after`; older ranges
go to the database.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from homeserver.storage.events import EventStore, PersistItem, StoredEvent

RECENT_PER_ROOM = 64


@dataclass
class _RoomTimeline:
    complete_after: int
    events: deque[StoredEvent] = field(default_factory=lambda: deque(maxlen=RECENT_PER_ROOM))


class TimelineCache:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.room_last: dict[str, int] = {}
        # Position of each room's newest membership change seen since start-up.
        self.room_last_member: dict[str, int] = {}
        self._timelines: dict[str, _RoomTimeline] = {}
        self._user_rooms: dict[str, dict[str, tuple[str, int]]] = {}
        self._loading: dict[str, dict[str, tuple[str, int]]] = {}
        self._load_waiters: dict[str, list[Deferred[None]]] = {}
        self._started_at = 0

    async def start(self, persisted_upto: int) -> None:
        self._started_at = persisted_upto
        rows = await self.store.db.query(
            "room_last_positions", "SELECT room_id, MAX(stream_ordering) FROM events GROUP BY room_id"
        )
        self.room_last = {r[0]: int(r[1]) for r in rows}
        rows = await self.store.db.query(
            "room_last_member_positions",
            "SELECT room_id, MAX(stream_ordering) FROM room_memberships GROUP BY room_id",
        )
        self.room_last_member = {r[0]: int(r[1]) for r in rows}

    def on_committed(self, items: list[PersistItem]) -> None:
        """A consumer of the committed-event stream."""
        for item in items:
            self.add(item.event)

    def add(self, ev: StoredEvent) -> None:
        """Record a committed event (called in stream order)."""
        self.room_last[ev.room_id] = ev.stream_ordering
        timeline = self._timelines.get(ev.room_id)
        if timeline is None:
            # Every commit passes here, so no event of this room lies between the
            # previous one we saw (none) and this one.
            timeline = self._timelines[ev.room_id] = _RoomTimeline(complete_after=ev.stream_ordering - 1)
        elif len(timeline.events) == RECENT_PER_ROOM:
            timeline.complete_after = timeline.events[0].stream_ordering
        timeline.events.append(ev)
        if ev.type == "m.room.member" and ev.state_key is not None:
            self.room_last_member[ev.room_id] = ev.stream_ordering
            change = (str(ev.content.get("membership")), ev.stream_ordering)
            rooms = self._user_rooms.get(ev.state_key)
            if rooms is not None:
                rooms[ev.room_id] = change
            loading = self._loading.get(ev.state_key)
            if loading is not None:
                loading[ev.room_id] = change

    def forget_below(self, room_id: str, floor: int) -> None:
        """Retention moved the room's history floor: events at or below it are no longer
        timeline (purged, or state kept for the room's sake), as the database reads it."""
        timeline = self._timelines.get(room_id)
        if timeline is not None:
            kept = [ev for ev in timeline.events if ev.stream_ordering > floor]
            if len(kept) < len(timeline.events):
                timeline.events = deque(kept, maxlen=RECENT_PER_ROOM)

    def drop_messages(self, room_id: str) -> None:
        """The room's non-state events were deleted (an admin purged it): forget them too.
        What stays is still every event after `complete_after` that the database has."""
        timeline = self._timelines.get(room_id)
        if timeline is not None:
            kept = [ev for ev in timeline.events if ev.state_key is not None]
            timeline.events = deque(kept, maxlen=RECENT_PER_ROOM)

    def find(self, room_id: str, event_id: str) -> StoredEvent | None:
        timeline = self._timelines.get(room_id)
        if timeline is not None:
            for ev in timeline.events:
                if ev.event_id == event_id:
                    return ev
        return None

    def events_between(self, room_id: str, after: int, upto: int) -> list[StoredEvent] | None:
        """Events with after < position <= upto, oldest first; None if memory cannot tell."""
        last = self.room_last.get(room_id, 0)
        if last <= after:
            return []
        timeline = self._timelines.get(room_id)
        if timeline is None or after < timeline.complete_after:
            return None
        # From the newest back: a woken sync usually wants the last one or two.
        found = []
        for ev in reversed(timeline.events):
            position = ev.stream_ordering
            if position <= after:
                break
            if position <= upto:
                found.append(ev)
        found.reverse()
        return found

    async def rooms_for_user(self, user_id: str) -> dict[str, tuple[str, int]]:
        """room id -> (membership, position of that membership event), cached per user."""
        rooms = self._user_rooms.get(user_id)
        if rooms is not None:
            return rooms
        if user_id in self._loading:
            # Single flight: a second caller waits for the first load.
            waiter: Deferred[None] = Deferred()
            self._load_waiters.setdefault(user_id, []).append(waiter)
            await waiter
            return await self.rooms_for_user(user_id)
        # Memberships committed while we read are collected and win if newer.
        updates = self._loading[user_id] = {}
        try:
            rooms = await self.store.rooms_for_user(user_id)
            for room_id, value in updates.items():
                if room_id not in rooms or rooms[room_id][1] < value[1]:
                    rooms[room_id] = value
            self._user_rooms[user_id] = rooms
        finally:
            del self._loading[user_id]
            for waiter in self._load_waiters.pop(user_id, []):
                waiter.callback(None)
        return rooms
