"""Serving a room's events to other servers (Server-Server API, "Retrieving events",
"Backfilling and retrieving missing events", "Authentication": /event, /state,
/state_ids, /event_auth, /get_missing_events, /backfill).

Who may ask: a server with a user joined to the room now (the spec's "server in the room"),
else 403 M_FORBIDDEN. Which events it sees whole, per the history visibility at each event
("History visibility" for servers): `world_readable` and `shared` ones, `invited` ones if
one of its users was invited or joined then, `joined` ones if one was joined then. Others
are sent redacted: the DAG stays whole (their IDs, hashes and auth keys) without the
content. Rejected, soft-failed and outlier events are never served as the room's events
nor as state (they are not in the timeline tables); auth chains may name outliers, and
those are served from where they are kept.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.federation.server_acl import check_server_allowed
from homeserver.core.federation.user_ids import server_of
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.errors import BadJson, Forbidden, NotFound
from homeserver.events.redaction import redact
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.federation_events import FederationEventStore

MAX_BACKFILL = 100
MAX_MISSING = 20


def hosts_in_room(head: RoomHead) -> set[str]:
    """The servers with a user joined to the room (from the head's current state)."""
    return {server_of(user) for user in head.members("join")}


class EventServer:
    def __init__(
        self,
        server_name: str,
        store: EventStore,
        fed_store: FederationEventStore,
        heads: RoomHeads,
        clock: Clock,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.fed_store = fed_store
        self.heads = heads
        self.clock = clock

    async def _room_for(self, origin: str, room_id: str) -> RoomHead:
        head = await self.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        check_server_allowed(origin, head)  # the room's m.room.server_acl, before anything else
        if origin not in hosts_in_room(head):
            raise Forbidden("Your server has no user in this room")
        return head

    async def _event_in(self, head: RoomHead, event_id: str) -> StoredEvent:
        ev = (await self.store.get_events([event_id])).get(event_id)
        if ev is None or ev.room_id != head.room_id:
            raise NotFound("Unknown event")
        return ev

    def _envelope(self, pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {"origin": self.server_name, "origin_server_ts": self.clock.time_ms(), "pdus": pdus}

    async def _visible_pdus(
        self, origin: str, head: RoomHead, events: list[StoredEvent]
    ) -> list[dict[str, Any]]:
        out = []
        for ev in events:
            pdu = _as_sent(ev, head.room_version)
            if not await self._server_sees(origin, head, ev):
                pdu = redact(pdu, head.room_version)
            out.append(pdu)
        return out

    async def _server_sees(self, origin: str, head: RoomHead, ev: StoredEvent) -> bool:
        setting = await self.store.state_event_at(
            head.room_id, "m.room.history_visibility", "", ev.stream_ordering
        )
        value = setting.content.get("history_visibility") if setting is not None else "shared"
        if value in ("world_readable", "shared") or value not in ("invited", "joined"):
            return True
        state = await self.fed_store.state_ids_at(head.room_id, ev.stream_ordering)
        members = [
            eid
            for (kind, user), eid in state.items()
            if kind == "m.room.member" and server_of(user) == origin
        ]
        wanted = ("join", "invite") if value == "invited" else ("join",)
        for member in (await self.store.get_events(members)).values():
            if member.content.get("membership") in wanted:
                return True
        return False

    # The routes ---------------------------------------------------------------------------

    async def event(self, origin: str, event_id: str) -> dict[str, Any]:
        ev = (await self.store.get_events([event_id])).get(event_id)
        if ev is None:
            raise NotFound("Unknown event")
        head = await self._room_for(origin, ev.room_id)
        return self._envelope(await self._visible_pdus(origin, head, [ev]))

    async def state_ids(self, origin: str, room_id: str, event_id: str | None) -> dict[str, Any]:
        head = await self._room_for(origin, room_id)
        state = await self._state_before(head, event_id)
        return {
            "pdu_ids": sorted(state.values()),
            "auth_chain_ids": sorted(await self._auth_chain(state.values())),
        }

    async def state(self, origin: str, room_id: str, event_id: str | None) -> dict[str, Any]:
        head = await self._room_for(origin, room_id)
        state = await self._state_before(head, event_id)
        chain = await self._auth_chain(state.values())
        return {"pdus": await self._pdus(head, state.values()), "auth_chain": await self._pdus(head, chain)}

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        head = await self._room_for(origin, room_id)
        ev = await self._event_in(head, event_id)
        chain = await self._auth_chain(ev.pdu.get("auth_events", []), include_start=True)
        return {"auth_chain": await self._pdus(head, chain)}

    async def missing_events(self, origin: str, room_id: str, body: dict[str, Any]) -> dict[str, Any]:
        head = await self._room_for(origin, room_id)
        earliest, latest = body.get("earliest_events"), body.get("latest_events")
        limit, min_depth = body.get("limit", 10), body.get("min_depth", 0)
        if not isinstance(earliest, list) or not isinstance(latest, list):
            raise BadJson("earliest_events and latest_events must be lists of event IDs")
        if not _id_list(earliest) or not _id_list(latest) or not latest:
            raise BadJson("earliest_events and latest_events must be lists of event IDs")
        if not _int(limit) or not _int(min_depth):
            raise BadJson("limit and min_depth must be integers")
        limit = max(0, min(limit, MAX_MISSING))
        frontier = [
            p
            for ev in (await self.store.get_events(latest)).values()
            if ev.room_id == room_id
            for p in ev.pdu.get("prev_events", [])
        ]
        found = await self._walk_back(room_id, frontier, set(earliest) | set(latest), limit, min_depth)
        found.sort(key=lambda e: (e.depth, e.stream_ordering))
        return {"events": await self._visible_pdus(origin, head, found)}

    async def backfill(self, origin: str, room_id: str, starts: list[str], limit: int) -> dict[str, Any]:
        head = await self._room_for(origin, room_id)
        limit = max(0, min(limit, MAX_BACKFILL))
        found = await self._walk_back(room_id, list(starts), set(), limit)
        found.sort(key=lambda e: (-e.depth, -e.stream_ordering))
        return self._envelope(await self._visible_pdus(origin, head, found))

    # Helpers ------------------------------------------------------------------------------

    async def _walk_back(
        self, room_id: str, frontier: list[str], seen: set[str], limit: int, min_depth: int = 0
    ) -> list[StoredEvent]:
        """Up to `limit` events of the room we hold, from `frontier` back along prev_events,
        one database read per generation (deepest first within one); `seen` are not taken."""
        found: list[StoredEvent] = []
        while frontier and len(found) < limit:
            step = [e for e in dict.fromkeys(frontier) if e not in seen]
            seen.update(step)
            events = await self.store.get_events(step)
            frontier = []
            for ev in sorted(events.values(), key=lambda e: -e.depth):
                if ev.room_id != room_id or ev.depth < min_depth or len(found) >= limit:
                    continue
                found.append(ev)
                frontier.extend(ev.pdu.get("prev_events", []))
        return found

    async def _state_before(self, head: RoomHead, event_id: str | None) -> dict[tuple[str, str], str]:
        if event_id is None:
            raise BadJson("event_id is required")
        ev = await self._event_in(head, event_id)
        if ev.stream_ordering <= 0:
            # Backfilled history (core/federation/backfill.py): we hold only part of the
            # state there, and a partial answer would mislead.
            raise NotFound("The state at this event is not held here")
        return await self.fed_store.state_ids_at(head.room_id, ev.stream_ordering - 1)

    async def _auth_chain(self, start: Any, include_start: bool = False) -> set[str]:
        """Every event reachable over auth_events from `start` (with `start` if asked)."""
        chain: set[str] = set(start) if include_start else set()
        frontier = list(start)
        while frontier:
            found = await self._load(frontier)
            frontier = []
            for pdu in found.values():
                for auth_id in pdu.get("auth_events", []):
                    if auth_id not in chain:
                        chain.add(auth_id)
                        frontier.append(auth_id)
        return chain

    async def _load(self, event_ids: list[str]) -> dict[str, dict[str, Any]]:
        """PDUs by ID: timeline events, and accepted outliers (never rejected ones)."""
        found = {eid: ev.pdu for eid, ev in (await self.store.get_events(event_ids)).items()}
        rest = [e for e in event_ids if e not in found]
        if rest:
            for eid, (status, _, pdu) in (await self.fed_store.outcomes(rest)).items():
                if status == "outlier":
                    found[eid] = pdu
        return found

    async def _pdus(self, head: RoomHead, event_ids: Any) -> list[dict[str, Any]]:
        ids = sorted(event_ids)
        timeline = await self.store.get_events(ids)
        out = [_as_sent(ev, head.room_version) for eid, ev in sorted(timeline.items())]
        rest = [e for e in ids if e not in timeline]
        if rest:
            out += [
                pdu
                for _, (status, _, pdu) in sorted((await self.fed_store.outcomes(rest)).items())
                if status == "outlier"
            ]
        return out


def _as_sent(ev: StoredEvent, room_version: str) -> dict[str, Any]:
    """The PDU as other servers need it: redacted if it was redacted here."""
    return redact(ev.pdu, room_version) if ev.redacted_by is not None else dict(ev.pdu)


def _id_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= 100 and all(isinstance(e, str) for e in value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
