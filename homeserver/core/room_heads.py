"""The head of each room in memory: current state, forward extremities, depth.

New events are authorised against, and chained onto, the head. Building an
event and applying it to the head happen in one synchronous step on the
reactor thread, so two requests for one room can never build on the same
parent, and the next event can be built before the previous one has committed
(it will commit in the same or a later batch, in order). If a commit fails, the
room's head is dropped and reloaded from the database.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from homeserver.storage.events import EventStore, StoredEvent

# Rooms whose head stays in memory; the least recently used are dropped past this.
_MAX_HEADS = 50_000


@dataclass
class RoomHead:
    room_id: str
    room_version: str
    state: dict[tuple[str, str], StoredEvent] = field(default_factory=dict)
    extremities: list[str] = field(default_factory=list)
    depth: int = 0
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

    def apply(self, ev: StoredEvent) -> None:
        """Chain `ev` onto the head (it is now the single forward extremity)."""
        if ev.state_key is not None:
            self.state[(ev.type, ev.state_key)] = ev
            if ev.type == "m.room.member":
                self._members.clear()
        self.extremities = [ev.event_id]
        self.depth = max(self.depth, ev.depth)


class RoomHeads:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._heads: OrderedDict[str, RoomHead] = OrderedDict()

    async def get(self, room_id: str) -> RoomHead | None:
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
                snapshot.room_id, snapshot.room_version, snapshot.state, snapshot.extremities, snapshot.depth
            )
            self.put(head)
        return head

    def peek(self, room_id: str) -> RoomHead | None:
        """The head if it is in memory (no loading)."""
        return self._heads.get(room_id)

    def put(self, head: RoomHead) -> None:
        self._heads[head.room_id] = head
        if len(self._heads) > _MAX_HEADS:
            self._heads.popitem(last=False)

    def invalidate(self, room_id: str) -> None:
        self._heads.pop(room_id, None)
