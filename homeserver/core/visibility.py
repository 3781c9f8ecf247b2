"""Which events of a room a user may see (spec: Client-Server API, Room History Visibility).

Each event is judged by the room's state *at that event*: the `history_visibility`
in force when it was sent and the user's membership then. For an event E and user U,
allowed if one of:
1. the visibility at E was `world_readable`;
2. U's membership at E was `join`;
3. the visibility at E was `shared` and U joined the room at some point after E;
4. the visibility at E was `invited` and U's membership at E was `invite`.
A missing or unknown visibility counts as `shared`. For an `m.room.history_visibility`
event the value before *or* after it may allow it; for U's own membership events,
U's membership before *or* after it; and U always sees their own leave from `join`,
`invite` or `knock` (so a client sees the room go, e.g. a rejected invite or knock). The table in
docs/architecture.md ("History visibility") lists each case with its test.

State is linear here (one writer per room), so "at E" means "at E's stream position":
the visibility changes of the room and the membership changes of U, each a short list
of (position, value), are looked up by bisection. A judge is made per request; most
answers need neither list from the database (see `HistoryJudge._quick`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from typing import Any

from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.errors import NotFound
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent

HISTORY_VISIBILITY = "m.room.history_visibility"
VISIBILITIES = ("world_readable", "shared", "invited", "joined")
NOTHING_READ = -(2**63)


def visibility_of(content: dict[str, Any]) -> str:
    """The setting an m.room.history_visibility content means (`shared` if not understood)."""
    value = content.get("history_visibility")
    return value if isinstance(value, str) and value in VISIBILITIES else "shared"


def allowed(visibility: str, membership: str | None, joins_later: bool) -> bool:
    """The spec's four rules, for one (visibility, membership) at an event."""
    return (
        visibility == "world_readable"
        or membership == "join"
        or (visibility == "shared" and joins_later)
        or (visibility == "invited" and membership == "invite")
    )


class Changes:
    """A value over stream positions: (position, value) changes, oldest first."""

    __slots__ = ("positions", "values", "default")

    def __init__(self, changes: Iterable[tuple[int, str]], default: str | None) -> None:
        pairs = list(changes)
        self.positions = [p for p, _ in pairs]
        self.values = [v for _, v in pairs]
        self.default = default

    def at(self, position: int) -> str | None:
        """In force at `position` (a change at `position` included)."""
        i = bisect_right(self.positions, position)
        return self.values[i - 1] if i else self.default

    def before(self, position: int) -> str | None:
        i = bisect_left(self.positions, position)
        return self.values[i - 1] if i else self.default


_NEVER_SET = Changes((), "shared")


class HistoryJudge:
    """Judges the events of one room for one user, for one request.

    Every event it is given must be committed (read from the database or the timeline
    cache). What it reads from the database covers what was committed when it read it;
    an event past that makes it read again. The room's head is looked up afresh for
    each call: a head dropped from memory (and reloaded) meanwhile would be stale.
    """

    def __init__(
        self,
        storage: Storage,
        heads: RoomHeads,
        user_id: str,
        room_id: str,
        persisted_upto: Callable[[], int],
    ) -> None:
        self.storage = storage
        self.heads = heads
        self.user_id = user_id
        self.room_id = room_id
        self._persisted_upto = persisted_upto
        self._head: RoomHead | None = None
        # Nothing read yet: below every position (backfilled history is at negative ones).
        self._visibility = Changes((), "shared")
        self._visibility_covered = NOTHING_READ
        self._membership = Changes((), None)
        self._membership_covered = NOTHING_READ
        self._last_join = NOTHING_READ  # U's last join (none yet)

    async def filter(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """The events the user may see, in their order."""
        if not events:
            return events
        upto = max(ev.stream_ordering for ev in events)
        await self._load(upto, membership=False)
        verdicts = [self._quick(ev.stream_ordering, ev) for ev in events]
        if None in verdicts:
            await self._load(upto, membership=True)
            verdicts = [
                v if v is not None else self._full(ev.stream_ordering, ev)
                for v, ev in zip(verdicts, events, strict=True)
            ]
        return [ev for ev, v in zip(events, verdicts, strict=True) if v]

    async def visible_positions(self, positions: Iterable[int]) -> set[int]:
        """Which of these positions of non-state events (reactions, edits) the user may see."""
        wanted = set(positions)
        if not wanted:
            return wanted
        upto = max(wanted)
        await self._load(upto, membership=False)
        verdicts = {p: self._quick(p, None) for p in wanted}
        if None in verdicts.values():
            await self._load(upto, membership=True)
            verdicts = {p: v if v is not None else self._full(p, None) for p, v in verdicts.items()}
        return {p for p, v in verdicts.items() if v}

    # Reading what decides ----------------------------------------------------------------

    async def _load(self, upto: int, membership: bool) -> None:
        """The current head, and the visibility changes (and, if asked, U's membership
        changes) complete up to `upto`."""
        head = await self.heads.get(self.room_id)
        if head is None:
            raise NotFound("Unknown room")
        self._head = head
        kept = self._kept_visibility(head)
        if kept is not None:
            self._visibility = kept
        elif upto > self._visibility_covered:
            self._visibility, self._visibility_covered = await self._read_visibility(head)
        if membership and upto > self._membership_covered:
            # Read before the query: everything up to here is committed, so the query sees it.
            covered = self._persisted_upto()
            history = await self.storage.events.membership_history(self.user_id, self.room_id)
            self._membership, self._membership_covered = Changes(history, None), covered
            self._last_join = max((p for p, m in history if m == "join"), default=NOTHING_READ)

    @staticmethod
    def _kept_visibility(head: RoomHead) -> Changes | None:
        """The room's visibility changes kept on its head, if they end with its current
        m.room.history_visibility event: the head has every event of the room applied to
        it, committed or not, so such a list is complete."""
        current = head.get(HISTORY_VISIBILITY)
        if current is None:
            return _NEVER_SET
        kept = head.visibility_changes
        return kept[1] if kept is not None and kept[0] == current.event_id else None

    async def _read_visibility(self, head: RoomHead) -> tuple[Changes, int]:
        """The visibility changes from the database, and the position up to which they are
        complete. Kept on the head if they end with its current event (not if a change is
        still in flight: the next read will have it)."""
        covered = self._persisted_upto()
        events = await self.storage.events.state_history(self.room_id, HISTORY_VISIBILITY)
        # Backfilled history carries marks of the visibility in force below each batch
        # (core/federation/backfill.py); both are positions on the one stream.
        marks = await self.storage.backfill.visibility_marks(self.room_id)
        pairs = sorted([*((ev.stream_ordering, visibility_of(ev.content)) for ev in events), *marks])
        changes = Changes(pairs, "shared")
        current = head.get(HISTORY_VISIBILITY)
        if events and current is not None and events[-1].event_id == current.event_id:
            head.visibility_changes = (current.event_id, changes)
        return changes, covered

    # Deciding ------------------------------------------------------------------------------

    def _visibilities(self, position: int, ev: StoredEvent | None) -> tuple[str, ...]:
        at = self._visibility.at(position) or "shared"
        if ev is not None and ev.type == HISTORY_VISIBILITY and ev.state_key == "":
            return (at, self._visibility.before(position) or "shared")
        return (at,)

    def _quick(self, position: int, ev: StoredEvent | None) -> bool | None:
        """The verdict from the visibility and the head alone, or None if U's history is needed.

        The head's membership event of U is U's latest, so if it is a join, U was joined at
        every position from it on, and joins at or after any earlier position (rule 3)."""
        visibilities = self._visibilities(position, ev)
        if "world_readable" in visibilities:
            return True
        assert self._head is not None
        member = self._head.get("m.room.member", self.user_id)
        if member is None:
            return False  # never in the room: only rule 1 can allow
        joined = member.content.get("membership") == "join"
        if joined and (position >= member.stream_ordering or "shared" in visibilities):
            return True
        return None

    def _full(self, position: int, ev: StoredEvent | None) -> bool:
        visibilities = self._visibilities(position, ev)
        joins_later = self._last_join > position
        at = self._membership.at(position)
        if ev is not None and ev.type == "m.room.member" and ev.state_key == self.user_id:
            before = self._membership.before(position)
            if at == "leave" and before in ("join", "invite", "knock"):
                return True
            memberships: tuple[str | None, ...] = (at, before)
        else:
            memberships = (at,)
        return any(allowed(v, m, joins_later) for v in visibilities for m in memberships)


class VisibilityFilter:
    def __init__(self, storage: Storage, heads: RoomHeads, persisted_upto: Callable[[], int]) -> None:
        self.storage = storage
        self.heads = heads
        self._persisted_upto = persisted_upto

    def judge(self, user_id: str, room_id: str) -> HistoryJudge:
        return HistoryJudge(self.storage, self.heads, user_id, room_id, self._persisted_upto)

    async def filter_for_user(
        self, user_id: str, head: RoomHead, events: list[StoredEvent]
    ) -> list[StoredEvent]:
        return await self.judge(user_id, head.room_id).filter(events)

    async def can_see_event(self, user_id: str, head: RoomHead, ev: StoredEvent) -> bool:
        return bool(await self.filter_for_user(user_id, head, [ev]))
