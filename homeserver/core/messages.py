"""Reading history: /messages, /context, /event, /relations, members and state.

Every read goes through `access_room_for_reading`: a user who was never in the
room gets 403, and what a former member sees is cut by history visibility
(a kicked or banned member sees nothing sent after they left); a former member who
forgot the room gets 403 as well, as POST /forget says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.core.event_format import client_event
from homeserver.core.filters import EventFilter
from homeserver.core.room_heads import RoomHead
from homeserver.core.rooms import RoomService
from homeserver.core.streams import pagination_token, parse_pagination_token
from homeserver.core.threads import thread_summaries
from homeserver.core.visibility import HistoryJudge, VisibilityFilter
from homeserver.errors import Forbidden, MatrixError, NotFound
from homeserver.storage import Storage
from homeserver.storage.events import EventStore, StoredEvent

MAX_LIMIT = 1000
# Below every stream position: backfilled events are at negative ones.
HISTORY_START = -(2**62)
# Backfill batches fetched at most for one /messages page.
BACKFILL_ROUNDS = 3
# Jump to date: events read per query, and at most in all, looking for a visible one.
TIMESTAMP_PAGE = 100
TIMESTAMP_SCAN = 2000


async def state_at(store: EventStore, head: RoomHead, position: int) -> list[StoredEvent]:
    """The room's state as of stream `position`. The head may hold newer state events (not yet
    committed, or after a member left): for those keys, the one in force then is read back."""
    out = []
    for ev in list(head.state.values()):
        current: StoredEvent | None = ev
        hops = 0
        # Walk back through `replaces_state` (cheap lookups by id); if the replaced event is not
        # committed either, or the walk is long, ask for the key's event at `position` directly.
        while current is not None and current.stream_ordering > position:
            replaced = current.unsigned_extra.get("replaces_state")
            if not isinstance(replaced, str):
                current = None  # the key did not exist before
                break
            hops += 1
            found = (await store.get_events([replaced])).get(replaced) if hops <= 3 else None
            if found is None:
                current = await store.state_event_at(head.room_id, ev.type, ev.state_key or "", position)
                break
            current = found
        if current is not None:
            out.append(current)
    return out


class MessagesService:
    def __init__(self, storage: Storage, rooms: RoomService, persisted_upto: Any) -> None:
        self.storage = storage
        self.rooms = rooms
        self.visibility = VisibilityFilter(storage, rooms.events.heads, persisted_upto)
        self._persisted_upto = persisted_upto
        # core/federation/backfill.py's `Backfiller.backfill`, set when federation is on.
        self.backfill: Callable[[str], Awaitable[int]] | None = None

    async def access_room_for_reading(self, user_id: str, room_id: str) -> RoomHead:
        """The room's head if the user is, or was, in it; else Forbidden."""
        head = await self.rooms.events.heads.get(room_id)
        if head is None:
            raise Forbidden("You are not a member of this room")
        membership = head.membership(user_id)
        world_readable = (
            head.content("m.room.history_visibility").get("history_visibility") == "world_readable"
        )
        # Former members keep access to what they could see; the visibility filter cuts the rest.
        if membership is None and not world_readable:
            raise Forbidden("You are not a member of this room")
        # Unless they forgot the room (spec: POST /forget: "a user will no longer be able to
        # retrieve history for this room"); joining or an invite clears that.
        if membership != "join" and not world_readable and room_id in await self.rooms.forgotten(user_id):
            raise Forbidden("You have forgotten this room")
        return head

    async def serialize(
        self, head: RoomHead, events: list[StoredEvent], judge: HistoryJudge | None = None
    ) -> list[dict[str, Any]]:
        """Client events, with their bundled aggregations if a judge is given (spec: Aggregations
        of child events): the latest edit as `m.replace`, a thread's summary as `m.thread`
        (core/threads.py), and reaction counts as `m.annotation`
        (MSC2675's shape, which clients read where present). Only edits and reactions the
        judge lets the reader see count: the content of an edit sent after they left is as
        private as any other event of that time."""
        await self.rooms.load_redactions(events)
        edits, reactions = await self._aggregations(events, judge) if judge is not None else ({}, {})
        threads = (
            await thread_summaries(self.storage.events, events, judge, head.room_version)
            if judge is not None
            else {}
        )
        out = []
        for ev in events:
            body = client_event(ev, head.room_version, redaction=self.rooms.redaction_of(ev))
            if ev.redacted_by is None:
                relations: dict[str, Any] = {}
                edit = edits.get(ev.event_id)
                if edit is not None and edit.sender == ev.sender:
                    relations["m.replace"] = client_event(edit, head.room_version)
                if ev.event_id in reactions:
                    relations["m.annotation"] = {"chunk": reactions[ev.event_id]}
                if ev.event_id in threads:
                    relations["m.thread"] = threads[ev.event_id]
                if relations:
                    body.setdefault("unsigned", {})["m.relations"] = relations
            out.append(body)
        return out

    async def _aggregations(
        self, events: list[StoredEvent], judge: HistoryJudge
    ) -> tuple[dict[str, StoredEvent], dict[str, list[dict[str, Any]]]]:
        """The latest visible edit of each event, and the counts of its visible reactions."""
        ids = [e.event_id for e in events]
        store = self.storage.events
        all_edits = await store.edits(ids)
        reaction_rows = await store.annotations(ids)
        visible = await judge.visible_positions(
            [e.stream_ordering for edits in all_edits.values() for e in edits]
            + [position for *_, position in reaction_rows]
        )
        edits = {}
        for parent, candidates in all_edits.items():
            seen = [e for e in candidates if e.stream_ordering in visible]
            if seen:
                edits[parent] = seen[-1]
        counts: dict[str, Counter[tuple[str, str]]] = {}
        for parent, event_type, key, position in reaction_rows:
            if position in visible:
                counts.setdefault(parent, Counter())[(event_type, key)] += 1
        reactions = {
            parent: [
                {"type": t, "key": k, "count": n}
                for (t, k), n in sorted(found.items(), key=lambda item: (-item[1], item[0][1]))
            ]
            for parent, found in counts.items()
        }
        return edits, reactions

    async def messages(
        self,
        user_id: str,
        room_id: str,
        from_token: str | None,
        direction: str,
        limit: int,
        to_token: str | None,
        event_filter: EventFilter,
        lazy_load_members: bool,
    ) -> dict[str, Any]:
        if direction not in ("b", "f"):
            raise MatrixError("'dir' must be b or f", "M_INVALID_PARAM")
        limit = max(0, min(limit, MAX_LIMIT))
        head = await self.access_room_for_reading(user_id, room_id)
        upto = self._persisted_upto()
        if from_token is None:
            start = upto if direction == "b" else 0
        else:
            start = min(parse_pagination_token(from_token), upto)
        stop = parse_pagination_token(to_token) if to_token else None
        # One row past the page says whether there is more: at the start of the timeline (or
        # its end, going forward) there is no `end` (spec: omitted when nothing further).
        if direction == "b":
            low = stop if stop is not None else HISTORY_START
            rows = await self.storage.events.room_events_between(
                room_id, low, start, limit + 1, newest_first=True
            )
            # Past what we hold of a room joined over federation: older events from a
            # resident, then the page again (they sort below everything we held).
            for _ in range(BACKFILL_ROUNDS):
                if len(rows) > limit or stop is not None or self.backfill is None:
                    break
                if not await self.backfill(room_id):
                    break
                rows = await self.storage.events.room_events_between(
                    room_id, low, start, limit + 1, newest_first=True
                )
            more, rows = len(rows) > limit, rows[:limit]
            end = rows[-1].stream_ordering - 1 if rows and more else None
        else:
            high = min(stop, upto) if stop is not None else upto
            rows = await self.storage.events.room_events_between(
                room_id, start, high, limit + 1, newest_first=False
            )
            more, rows = len(rows) > limit, rows[:limit]
            end = rows[-1].stream_ordering if rows and more else None
        judge = self.visibility.judge(user_id, room_id)
        visible = [ev for ev in rows if event_filter.allows(ev.type, ev.sender)]
        visible = await judge.filter(visible)
        response: dict[str, Any] = {
            "start": pagination_token(start),
            "chunk": await self.serialize(head, visible, judge),
        }
        if end is not None:
            response["end"] = pagination_token(end)
        if lazy_load_members:
            senders = {ev.sender for ev in visible}
            state = await self.state_at(head, self._state_position(head, user_id))
            members = sorted(
                (ev for ev in state if ev.type == "m.room.member" and ev.state_key in senders),
                key=lambda ev: ev.state_key or "",
            )
            response["state"] = await self.serialize(head, members)
        return response

    async def timestamp_to_event(self, user_id: str, room_id: str, ts: int, direction: str) -> dict[str, Any]:
        """`GET /v1/rooms/{roomId}/timestamp_to_event` (jump to date): the event nearest to `ts`
        in `direction` (`f`: at or after it, `b`: at or before it) that the user may see.

        Hidden events are skipped, not reported: the closest visible one is the answer, looked
        for among the nearest TIMESTAMP_SCAN events at most (after that, 404 as if none).
        """
        if direction not in ("b", "f"):
            raise MatrixError("'dir' must be b or f", "M_INVALID_PARAM")
        await self.access_room_for_reading(user_id, room_id)
        judge = self.visibility.judge(user_id, room_id)
        upto = self._persisted_upto()
        # Walk outwards from `ts` page by page; a page ends on the (ts, position) to resume from.
        cursor = ts
        skip: set[str] = set()
        scanned = 0
        while scanned < TIMESTAMP_SCAN:
            rows = await self.storage.events.events_near_timestamp(
                room_id, cursor, direction == "f", upto, TIMESTAMP_PAGE + len(skip)
            )
            rows = [ev for ev in rows if ev.event_id not in skip]
            if not rows:
                break
            visible = {
                ev.event_id for ev in await judge.filter(sorted(rows, key=lambda e: e.stream_ordering))
            }
            for ev in rows:
                if ev.event_id in visible:
                    return {"event_id": ev.event_id, "origin_server_ts": ev.origin_server_ts}
            scanned += len(rows)
            # Events sharing the last timestamp may continue on the next page: skip the seen ones.
            cursor = rows[-1].origin_server_ts
            skip = {ev.event_id for ev in rows if ev.origin_server_ts == cursor}
        raise NotFound(f"No event found from {ts} in direction {direction}")

    async def _visible_event(self, judge: HistoryJudge, room_id: str, event_id: str) -> StoredEvent:
        """The event if the judge lets its reader see it; else not found (hidden and missing
        events look the same)."""
        ev = (await self.storage.events.get_events([event_id])).get(event_id)
        if ev is None or ev.room_id != room_id or not await judge.filter([ev]):
            raise NotFound("Event not found")
        return ev

    async def get_event(self, user_id: str, room_id: str, event_id: str) -> dict[str, Any]:
        head = await self.access_room_for_reading(user_id, room_id)
        judge = self.visibility.judge(user_id, room_id)
        ev = await self._visible_event(judge, room_id, event_id)
        return (await self.serialize(head, [ev], judge))[0]

    async def context(self, user_id: str, room_id: str, event_id: str, limit: int) -> dict[str, Any]:
        head = await self.access_room_for_reading(user_id, room_id)
        judge = self.visibility.judge(user_id, room_id)
        ev = await self._visible_event(judge, room_id, event_id)
        limit = max(0, min(limit, MAX_LIMIT))
        before_n = limit // 2
        after_n = limit - before_n
        store = self.storage.events
        # From the start of history: backfilled events sit at negative positions.
        before = await store.room_events_between(
            room_id, HISTORY_START, ev.stream_ordering - 1, before_n, newest_first=True
        )
        after = await store.room_events_between(
            room_id, ev.stream_ordering, self._persisted_upto(), after_n, newest_first=False
        )
        before = await judge.filter(before)
        after = await judge.filter(after)
        state = await self.state_at(head, self._state_position(head, user_id))
        return {
            "event": (await self.serialize(head, [ev], judge))[0],
            "events_before": await self.serialize(head, before, judge),
            "events_after": await self.serialize(head, after, judge),
            "start": pagination_token((before[-1].stream_ordering - 1) if before else ev.stream_ordering - 1),
            "end": pagination_token(after[-1].stream_ordering if after else ev.stream_ordering),
            "state": await self.serialize(head, state),
        }

    def _state_position(self, head: RoomHead, user_id: str) -> int:
        """Up to where `user_id` may see the room's state: a former member sees it as it
        was when they left, not what changed since."""
        position = int(self._persisted_upto())
        member = head.get("m.room.member", user_id)
        if member is not None and head.membership(user_id) != "join":
            position = min(position, member.stream_ordering)
        return position

    async def state_at(self, head: RoomHead, position: int) -> list[StoredEvent]:
        return await state_at(self.storage.events, head, position)

    async def relations(
        self,
        user_id: str,
        room_id: str,
        event_id: str,
        rel_type: str | None,
        event_type: str | None,
        from_token: str | None,
        direction: str,
        limit: int,
    ) -> dict[str, Any]:
        head = await self.access_room_for_reading(user_id, room_id)
        judge = self.visibility.judge(user_id, room_id)
        await self._visible_event(judge, room_id, event_id)
        limit = max(1, min(limit, MAX_LIMIT))
        position = parse_pagination_token(from_token) if from_token else None
        newest_first = direction != "f"
        rows = await self.storage.events.relations(
            event_id,
            rel_type,
            event_type,
            before=position + 1 if newest_first and position is not None else None,
            after=position if not newest_first and position is not None else None,
            limit=limit + 1,
            newest_first=newest_first,
        )
        more, rows = len(rows) > limit, rows[:limit]  # one past the page: is there a next one?
        response: dict[str, Any] = {"chunk": await self.serialize(head, await judge.filter(rows))}
        if more:
            last = rows[-1].stream_ordering
            response["next_batch"] = pagination_token(last - 1 if newest_first else last)
        return response

    async def threads(
        self, user_id: str, room_id: str, include: str, from_token: str | None, limit: int
    ) -> dict[str, Any]:
        """GET /rooms/{roomId}/threads: thread roots, newest activity first, each with its
        `m.thread` summary. A former member sees threads as they were when they left."""
        if include not in ("all", "participated"):
            raise MatrixError("'include' must be all or participated", "M_INVALID_PARAM")
        head = await self.access_room_for_reading(user_id, room_id)
        judge = self.visibility.judge(user_id, room_id)
        limit = max(1, min(limit, MAX_LIMIT))
        before = parse_pagination_token(from_token) if from_token else None
        rows = await self.storage.events.thread_roots(
            room_id,
            self._state_position(head, user_id),
            before,
            limit + 1,
            user_id if include == "participated" else None,
        )
        more, rows = len(rows) > limit, rows[:limit]  # one past the page: is there a next one?
        found = await self.storage.events.get_events([root for root, _ in rows])
        roots = await judge.filter([found[root] for root, _ in rows if root in found])
        response: dict[str, Any] = {"chunk": await self.serialize(head, roots, judge)}
        if more:
            response["next_batch"] = pagination_token(rows[-1][1])
        return response

    async def members(
        self, user_id: str, room_id: str, membership: str | None, not_membership: str | None
    ) -> list[dict[str, Any]]:
        head = await self.access_room_for_reading(user_id, room_id)
        if head.membership(user_id) != "join":
            raise Forbidden("You are not a member of this room")
        events = [
            ev
            for (event_type, _), ev in head.state.items()
            if event_type == "m.room.member"
            and (membership is None or ev.content.get("membership") == membership)
            and (not_membership is None or ev.content.get("membership") != not_membership)
        ]
        return await self.serialize(head, events)

    async def state(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        head = await self.rooms.access_room_as_member(user_id, room_id)
        upto = self._persisted_upto()
        return await self.serialize(head, await self.state_at(head, upto))

    async def state_event(
        self, user_id: str, room_id: str, event_type: str, state_key: str
    ) -> dict[str, Any]:
        head = await self.rooms.access_room_as_member(user_id, room_id)
        ev = head.get(event_type, state_key)
        if ev is None:
            raise NotFound("State event not found")
        return ev.content
