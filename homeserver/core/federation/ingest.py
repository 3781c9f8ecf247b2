"""Receiving a remote PDU into a room this server holds (Server-Server API, "Checks
performed on receipt of a PDU" and "Retrieving events").

`PduIngest.receive_pdu` runs, for one PDU, under a lock per room:
- the format and size checks and the signatures (`events/pdu_checks.py`), the keys fetched
  through the key ring first; a forged or malformed PDU is dropped, nothing fetched for it;
- prev_events we lack are asked of the origin with `get_missing_events` (one round, at
  most MISSING_LIMIT events, each received like this one but without fetching further);
- auth events we lack come from the origin's `/event_auth`, checked and kept as outliers;
- the state before the event: the room head's state when the event continues exactly our
  forward extremities, else the states after its prev_events resolved with state
  resolution v2 (the state after an event is read in stream order: see
  `FederationEventStore.state_ids_at`);
- `check_pdu` decides. Accepted: the event is chained onto the head (its prev_events leave
  the forward extremities, it becomes one) and written by the group commit, which
  publishes it on the committed-event stream (so /sync shows it). If the head had other
  extremities, the head's state and the state after the event are resolved into the
  room's new current state. Soft-failed and rejected events are kept out of the timeline
  (`remote_event_outcomes`) and rejected ones are never used as state.

The decision and the chaining are one synchronous step (no await), like a local send
(`core/events.py`): the current state checked against is the one the event is built on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure

from homeserver.core.clock import Clock
from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.keys import KeyRing
from homeserver.core.persist import EarlierEventFailed, EventPersister
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.errors import RemoteServerError
from homeserver.events.auth_chain import AuthChainError, MissingEvent
from homeserver.events.auth_rules import auth_types_for_event, servers_required_to_sign
from homeserver.events.hashing import compute_event_id
from homeserver.events.pdu_checks import (
    InvalidPdu,
    PduOutcome,
    PduStatus,
    check_pdu,
    check_pdu_signatures,
    validate_pdu,
)
from homeserver.events.room_versions import room_id_is_create_hash
from homeserver.events.signing import InvalidSignature
from homeserver.events.state_resolution import resolve_state
from homeserver.storage.events import EventStore, PersistItem, StoredEvent
from homeserver.storage.federation_events import FederationEventStore
from homeserver.workers.event_writes import RoomWriters, forwarded, outcome_from_json

log = Logger()

# get_missing_events: how many events one PDU may make us fetch, and how far below our
# deepest event we look (a gap wider than that is left open: the event goes on anyway).
MISSING_LIMIT = 10
MISSING_DEPTH = 20
# /event_auth: an auth chain longer than this is not taken.
MAX_AUTH_CHAIN = 500
# A gap get_missing_events did not close: the state at up to MAX_GAP_PREVS prev_events is
# asked of the origin, fetching at most MAX_GAP_FETCH events we lack for each.
MAX_GAP_PREVS = 3
MAX_GAP_FETCH = 200
MAX_STATE_IDS = 5000
# Rounds of loading unknown events from the database before giving up on a PDU.
MAX_LOAD_ROUNDS = 50

StateIds = dict[tuple[str, str], str]


@dataclass(frozen=True)
class IngestOutcome:
    """What became of one PDU: `status` (accepted, soft_failed, rejected, dropped), `reason`
    for all but accepted, and `duplicate` when the event was already known."""

    event_id: str | None
    status: PduStatus
    reason: str = ""
    duplicate: bool = False
    # With `receive_pdu(..., wait=False)`: fires once an accepted event is committed.
    written: Deferred[None] | None = field(default=None, compare=False)


class _Known:
    """Events loaded for the checks: event id -> PDU with its `event_id`; the timeline ones
    as StoredEvents; the ids this server rejected."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.stored: dict[str, StoredEvent] = {}
        self.rejected: set[str] = set()
        self.absent: set[str] = set()  # asked for, in neither table


class PduIngest:
    def __init__(
        self,
        server_name: str,
        store: EventStore,
        fed_store: FederationEventStore,
        heads: RoomHeads,
        persister: EventPersister,
        key_ring: KeyRing,
        client: FederationClient,
        clock: Clock,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.fed_store = fed_store
        self.heads = heads
        self.persister = persister
        self.key_ring = key_ring
        self.client = client
        self.clock = clock
        self._locks: dict[str, DeferredLock] = {}
        self._committing: set[str] = set()  # accepted, not yet committed: known all the same
        # Set by the server with several processes: a PDU of a room another process writes
        # is checked and stored there (workers/event_writes.py).
        self.writers: RoomWriters | None = None

    async def receive_pdu(
        self, origin: str, room_version: str, pdu_json: Any, *, wait: bool = True
    ) -> IngestOutcome:
        """Check and store one PDU. With `wait` (the default) return once an accepted event is
        committed; without, return after the decision, the commit in `outcome.written`: the
        next PDU of the room can be checked while this one commits (a transaction's 50)."""
        room_id = pdu_json.get("room_id") if isinstance(pdu_json, dict) else None
        if isinstance(room_id, str):
            # Its writer answers once the event is committed (so `wait` holds either way).
            args = {"origin": origin, "room_version": room_version, "pdu": pdu_json, "room_id": room_id}
            if (forward := forwarded(self.writers, room_id, "federation.pdu", args)) is not None:
                return outcome_from_json(await forward)
        outcome = await self._receive_pdu(origin, room_version, pdu_json)
        if wait and outcome.written is not None:
            await outcome.written
        return outcome

    async def _receive_pdu(self, origin: str, room_version: str, pdu_json: Any) -> IngestOutcome:
        try:
            validate_pdu(pdu_json, room_version)
        except InvalidPdu as e:
            return IngestOutcome(
                _event_id_or_none(pdu_json, room_version), PduStatus.DROPPED, f"Invalid event: {e.reason}"
            )
        room_id = pdu_json.get("room_id")
        event_id = compute_event_id(pdu_json, room_version)
        if not isinstance(room_id, str):
            return IngestOutcome(event_id, PduStatus.DROPPED, "A create event arrives by a join")
        lock = self._locks.setdefault(room_id, DeferredLock())
        await lock.acquire()
        try:
            return await self._receive(origin, room_version, dict(pdu_json), event_id, fetch_missing=True)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(room_id, None)

    async def _receive(
        self, origin: str, room_version: str, pdu: dict[str, Any], event_id: str, *, fetch_missing: bool
    ) -> IngestOutcome:
        room_id = pdu["room_id"]
        earlier = await self._known_status(event_id)
        if earlier is not None:
            return IngestOutcome(event_id, earlier[0], earlier[1], duplicate=True)
        head = await self.heads.get(room_id)
        # A room we only hold an invite or knock for has a head of one event: not joined.
        if head is None or not head.has_joined_member_of(self.server_name):
            return IngestOutcome(event_id, PduStatus.DROPPED, "This server is not in the room")
        if head.room_version != room_version:
            return IngestOutcome(event_id, PduStatus.DROPPED, "Wrong room version for the room")
        await self._ensure_keys(pdu)
        forged = IngestOutcome(
            event_id, PduStatus.DROPPED, "Bad signature: no valid signature from its server"
        )
        # Signatures are checked before anything is fetched for the event (a forged PDU costs
        # us no requests); otherwise once, by check_pdu.
        if fetch_missing and await self._missing_prevs(head, pdu):
            if not self._verified(pdu, room_version):
                return forged
            await self._fetch_missing_prevs(origin, head, pdu, event_id)
        known = _Known()
        sets = await self._states_after_prevs(head, pdu, known)
        if fetch_missing and (gap := await self._missing_prevs(head, pdu)):
            # get_missing_events did not close the gap: the state after each prev_event we
            # lack, as the origin says it is, checked event by event.
            for state in await self._state_across_gap(origin, head, gap, known):
                sets = sets or []
                if state not in sets:
                    sets.append(state)
        fetched_auth = False
        for _ in range(MAX_LOAD_ROUNDS):
            if self.heads.peek(room_id) is not head:
                # Dropped while we waited (rebuilt after a failed write, or evicted).
                reloaded = await self.heads.get(room_id)
                if reloaded is None:
                    return IngestOutcome(event_id, PduStatus.DROPPED, "This server is not in the room")
                head = reloaded
                continue
            try:
                outcome, done = self._decide(head, room_version, pdu, event_id, sets, known)
                break
            except MissingEvent as e:
                if e.event_id in known.absent:
                    if fetched_auth:
                        return IngestOutcome(
                            event_id, PduStatus.DROPPED, f"Cannot fetch auth event {e.event_id}"
                        )
                    fetched_auth = True
                    if not self._verified(pdu, room_version):
                        return forged
                    await self._fetch_auth_chain(origin, room_version, pdu, event_id, known)
                    known.absent.discard(e.event_id)
                else:
                    await self._load([e.event_id], known)
            except AuthChainError as e:
                outcome, done = PduOutcome(PduStatus.REJECTED, str(e), pdu, event_id), None
                break
        else:
            return IngestOutcome(event_id, PduStatus.DROPPED, "Too many unknown events")
        if done is not None:
            return IngestOutcome(
                event_id, outcome.status, outcome.reason, written=self._track(event_id, done)
            )
        if outcome.status in (PduStatus.REJECTED, PduStatus.SOFT_FAILED):
            await self.fed_store.store_outcome(
                event_id,
                room_id,
                outcome.status.value,
                outcome.reason,
                dict(outcome.event),
                self.clock.time_ms(),
            )
        if outcome.status is not PduStatus.ACCEPTED:
            log.info(
                "PDU {id} from {origin}: {status}: {reason}",
                id=event_id,
                origin=origin,
                status=outcome.status.value,
                reason=outcome.reason,
            )
        return IngestOutcome(event_id, outcome.status, outcome.reason)

    # History fetched for a local reader (core/federation/backfill.py) ---------------------

    async def check_history(
        self, origin: str, room_version: str, room_id: str, candidates: list[Any]
    ) -> list[tuple[str, dict[str, Any], bool]]:
        """Events of `room_id` a /backfill answer gave, checked like any fetched event:
        format, signatures of the servers that must sign, content hash (a mismatch
        redacts), auth against their own auth events (fetched with /event_auth when we
        lack them). The current state does not judge history: nothing is soft-failed.
        Returns (event id, PDU, held) of those that pass, oldest first, `held` for those
        the timeline holds already (the state a join gave us); failing ones are kept as
        rejected."""
        known = _Known()
        valid: list[tuple[str, dict[str, Any]]] = []
        for candidate in candidates:
            try:
                validate_pdu(candidate, room_version)
            except InvalidPdu:
                continue
            if candidate.get("room_id") == room_id:
                valid.append((compute_event_id(candidate, room_version), dict(candidate)))
        passed = []
        # v12: the create event is no auth event but the checks need it; its ID is the room's.
        create = ["$" + room_id[1:]] if room_id_is_create_hash(room_version) else []
        for cid, candidate in sorted(valid, key=lambda item: (item[1]["depth"], item[0])):
            await self._load([cid, *candidate["auth_events"], *create], known)
            if cid in known.stored:
                passed.append((cid, known.events[cid], True))
                continue
            if cid in known.rejected:
                continue
            # check_pdu verifies the signatures before the auth checks (so a forged event
            # drops before it can send us fetching its auth chain): only the keys are ours to get.
            await self._ensure_keys(candidate)
            outcome = None
            for attempt in range(2):
                try:
                    outcome = self._check_alone(candidate, room_version, known)
                    break
                except MissingEvent:
                    if attempt == 0:
                        await self._fetch_auth_chain(origin, room_version, candidate, cid, known)
                except AuthChainError as e:
                    outcome = PduOutcome(PduStatus.REJECTED, str(e), candidate, cid)
                    break
            if outcome is None or outcome.status is PduStatus.DROPPED:
                continue
            if outcome.status is PduStatus.REJECTED:
                known.rejected.add(cid)
                await self.fed_store.store_outcome(
                    cid, room_id, "rejected", outcome.reason, dict(outcome.event), self.clock.time_ms()
                )
                continue
            event = dict(outcome.event)
            known.events[cid] = {**event, "event_id": cid}
            passed.append((cid, event, False))
        return passed

    async def fetch_checked(
        self, origin: str, room_version: str, room_id: str, event_ids: list[str], max_fetch: int
    ) -> dict[str, dict[str, Any]]:
        """The events of these IDs, from the database or else (at most `max_fetch`) fetched
        from `origin`, each checked against its own auth events and kept as an outlier;
        rejected ones left out."""
        known = _Known()
        await self._load(event_ids, known)
        unknown = [e for e in event_ids if e not in known.events][:max_fetch]
        fetched = [pdu for e in unknown if (pdu := await self._fetch_event(origin, e)) is not None]
        await self._keep_outliers(fetched, room_version, room_id, known, set(unknown))
        return {e: known.events[e] for e in event_ids if e in known.events and e not in known.rejected}

    # The decision: synchronous, against the head as it is now ---------------------------

    def _decide(
        self,
        head: RoomHead,
        room_version: str,
        pdu: dict[str, Any],
        event_id: str,
        sets: list[StateIds] | None,
        known: _Known,
    ) -> tuple[PduOutcome, Deferred[None] | None]:
        """Check the PDU and, if accepted, chain it onto the head and queue its write.
        Raises MissingEvent for an event to load first (nothing changed then)."""
        if self.heads.has_failed(head.room_id):
            raise EarlierEventFailed()
        head_ids = {key: ev.event_id for key, ev in head.state.items()}
        by_id = {ev.event_id: ev for ev in head.state.values()}

        def lookup(wanted: str) -> Mapping[str, Any] | None:
            found = known.events.get(wanted)
            if found is None and wanted in by_id:
                found = known.events[wanted] = {**by_id[wanted].pdu, "event_id": wanted}
            return found

        def strict(wanted: str) -> Mapping[str, Any]:
            found = lookup(wanted)
            if found is None:
                raise MissingEvent(wanted)
            return found

        if sets is None:
            before = None
        elif len(sets) == 1:
            before = sets[0]
        else:
            before = resolve_state(room_version, sets, lookup, rejected=known.rejected)
        auth_keys = auth_types_for_event(pdu)
        before_map = None if before is None else {k: strict(before[k]) for k in auth_keys if k in before}
        current_map = {k: strict(head_ids[k]) for k in auth_keys if k in head_ids}
        outcome = check_pdu(
            pdu,
            room_version,
            keys=self.key_ring.cached_key,
            events=lookup,
            state_before=before_map,
            current_state=current_map,
            rejected=known.rejected,
        )
        if not outcome.accepted:
            return outcome, None

        event = dict(outcome.event)
        after = dict(before if before is not None else head_ids)
        state_key = event.get("state_key")
        if isinstance(state_key, str):
            after[(event["type"], state_key)] = event_id
        prevs = set(event["prev_events"])
        if set(head.extremities) <= prevs:
            new_state = after  # it continues every branch we have
        else:
            known.events[event_id] = {**event, "event_id": event_id}
            new_state = resolve_state(room_version, [head_ids, after], lookup, rejected=known.rejected)
        return outcome, self._chain(head, room_version, event, event_id, new_state, head_ids, by_id, known)

    def _chain(
        self,
        head: RoomHead,
        room_version: str,
        event: dict[str, Any],
        event_id: str,
        new_state: StateIds,
        head_ids: StateIds,
        by_id: dict[str, StoredEvent],
        known: _Known,
    ) -> Deferred[None]:
        unsigned: dict[str, Any] = {}
        state_key = event.get("state_key")
        if isinstance(state_key, str) and (previous := head.get(event["type"], state_key)) is not None:
            unsigned = {
                "replaces_state": previous.event_id,
                "prev_content": previous.content,
                "prev_sender": previous.sender,
            }
        stored = StoredEvent(
            event_id, head.room_id, self.persister.allocate_stream_ordering(), event, unsigned
        )
        expected = dict(head_ids)
        if isinstance(state_key, str):
            expected[(event["type"], state_key)] = event_id
        override = None
        if new_state != expected:
            # A fork merged: the head takes the resolved state. Only timeline events can be
            # current state here; an outlier the resolution picked leaves the key as it was.
            state: dict[tuple[str, str], StoredEvent] = {}
            for key, value in new_state.items():
                chosen = (
                    by_id.get(value) or known.stored.get(value) or (stored if value == event_id else None)
                )
                if chosen is None:
                    chosen = head.state.get(key)
                if chosen is not None:
                    state[key] = chosen
            override = {key: ev.event_id for key, ev in state.items()}
        head.apply(stored)
        if override is not None:
            head.state = state  # after `apply`, which would set the event's own key
            head._members.clear()
        item = PersistItem(stored, room_version, now_ms=self.clock.time_ms(), current_state=override)
        return self.persister.persist([item])

    # Loading and fetching ----------------------------------------------------------------

    def _track(self, event_id: str, done: Deferred[None]) -> Deferred[None]:
        """Remember `event_id` as known while its commit runs; a Deferred for its commit."""
        self._committing.add(event_id)
        written: Deferred[None] = Deferred()

        def finished(result: Any) -> None:
            self._committing.discard(event_id)
            if isinstance(result, Failure):
                written.errback(result)
            else:
                written.callback(None)

        done.addBoth(finished)
        return written

    async def _known_status(self, event_id: str) -> tuple[PduStatus, str] | None:
        if event_id in self._committing:
            return PduStatus.ACCEPTED, ""
        found = await self.fed_store.known_status(event_id)
        if found is None or found[0] == "outlier":
            return None
        return PduStatus(found[0]), found[1]

    async def _ensure_keys(self, pdu: dict[str, Any]) -> None:
        signatures = pdu.get("signatures") or {}
        wanted = [
            (server, key_id, pdu["origin_server_ts"])
            for server in servers_required_to_sign(pdu)
            for key_id in (signatures.get(server) or {})
            if key_id.startswith("ed25519:")
        ]
        try:
            await self.key_ring.ensure_keys(wanted)
        except Exception as e:  # unreachable key servers: the check below fails on its own
            log.info("could not fetch keys for a PDU: {e}", e=e)

    def _verified(self, pdu: dict[str, Any], room_version: str) -> bool:
        try:
            check_pdu_signatures(pdu, room_version, self.key_ring.cached_key)
        except InvalidSignature:
            return False
        return True

    async def _load(self, event_ids: list[str], known: _Known) -> None:
        """Load events and their auth chains from the database into `known`."""
        wanted = [e for e in event_ids if e not in known.events]
        while wanted:
            found = await self.store.get_events(wanted)
            rest = [e for e in wanted if e not in found]
            outcomes = await self.fed_store.outcomes(rest) if rest else {}
            next_ids: list[str] = []
            for eid in wanted:
                if eid in found:
                    known.stored[eid] = found[eid]
                    pdu = found[eid].pdu
                elif eid in outcomes:
                    status, _, pdu = outcomes[eid]
                    if status == "rejected":
                        known.rejected.add(eid)
                else:
                    known.absent.add(eid)
                    continue
                known.events[eid] = {**pdu, "event_id": eid}
                next_ids.extend(a for a in pdu.get("auth_events", []) if isinstance(a, str))
            wanted = [e for e in dict.fromkeys(next_ids) if e not in known.events and e not in known.absent]

    async def _states_after_prevs(
        self, head: RoomHead, pdu: dict[str, Any], known: _Known
    ) -> list[StateIds] | None:
        """The states after each prev_event we hold in the timeline (one set when the event
        continues exactly our extremities); None when we hold none of them."""
        prevs = list(pdu["prev_events"])
        if set(prevs) == set(head.extremities):
            return [{key: ev.event_id for key, ev in head.state.items()}]
        stored = await self.store.get_events(prevs)
        sets: list[StateIds] = []
        for prev in prevs:
            # Not after a backfilled event (negative position): we hold only part of the
            # state there; the checks against the current state still apply.
            if prev in stored and stored[prev].stream_ordering > 0:
                state = await self.fed_store.state_ids_at(head.room_id, stored[prev].stream_ordering)
                if state not in sets:
                    sets.append(state)
        if not sets:
            return None
        ids = {eid for state in sets for eid in state.values()}
        await self._load(sorted(ids), known)
        return sets

    async def _missing_prevs(self, head: RoomHead, pdu: dict[str, Any]) -> list[str]:
        """The PDU's prev_events this server does not hold (in the timeline, committing, or
        kept out of it as soft-failed or rejected)."""
        missing = [p for p in pdu["prev_events"] if p not in head.extremities and p not in self._committing]
        if not missing:
            return []
        stored = await self.store.get_events(missing)
        missing = [p for p in missing if p not in stored]
        if missing:
            outcomes = await self.fed_store.outcomes(missing)
            missing = [p for p in missing if p not in outcomes or outcomes[p][0] == "outlier"]
        return missing

    async def _fetch_missing_prevs(
        self, origin: str, head: RoomHead, pdu: dict[str, Any], event_id: str
    ) -> None:
        body = {
            "earliest_events": list(head.extremities),
            "latest_events": [event_id],
            "limit": MISSING_LIMIT,
            "min_depth": max(0, head.depth - MISSING_DEPTH),
        }
        try:
            answer = await self.client.post_json(
                origin, f"/_matrix/federation/v1/get_missing_events/{quote(head.room_id, safe='')}", body
            )
        except (RemoteError, RemoteServerError) as e:
            log.info("get_missing_events from {origin} failed: {e}", origin=origin, e=e)
            return
        events = answer.get("events") if isinstance(answer, dict) else None
        if not isinstance(events, list):
            return
        fetched = []
        for candidate in events[:MISSING_LIMIT]:
            try:
                validate_pdu(candidate, head.room_version)
            except InvalidPdu:
                continue
            if candidate.get("room_id") == head.room_id:
                fetched.append(dict(candidate))
        for candidate in sorted(fetched, key=lambda e: e["depth"]):
            cid = compute_event_id(candidate, head.room_version)
            fetched_outcome = await self._receive(
                origin, head.room_version, candidate, cid, fetch_missing=False
            )
            if fetched_outcome.written is not None:
                # Committed before the event that needs it (commits keep their order); a
                # failure is that event's failure too (core/persist.py), reported there.
                fetched_outcome.written.addErrback(lambda _: None)

    async def _state_across_gap(
        self, origin: str, head: RoomHead, gap: list[str], known: _Known
    ) -> list[StateIds]:
        """For each of (at most MAX_GAP_PREVS) prev_events we lack: `/state_ids` at it from the
        origin, the events we lack fetched with `/event` (at most MAX_GAP_FETCH) and kept as
        outliers, and the state after it built from those that passed their checks."""
        room = quote(head.room_id, safe="")
        sets: list[StateIds] = []
        for prev in gap[:MAX_GAP_PREVS]:
            try:
                answer = await self.client.get_json(
                    origin, f"/_matrix/federation/v1/state_ids/{room}", {"event_id": prev}
                )
            except (RemoteError, RemoteServerError) as e:
                log.info("state_ids from {origin} failed: {e}", origin=origin, e=e)
                continue
            state_ids = answer.get("pdu_ids") if isinstance(answer, dict) else None
            chain_ids = answer.get("auth_chain_ids") if isinstance(answer, dict) else None
            if not _id_list(state_ids) or not _id_list(chain_ids):
                continue
            needed = list(dict.fromkeys([prev, *state_ids, *chain_ids]))
            await self._load(needed, known)
            unknown = [e for e in needed if e not in known.events]
            if len(unknown) > MAX_GAP_FETCH:
                log.info("state at {prev} needs {n} events: not fetched", prev=prev, n=len(unknown))
                continue
            fetched = [pdu for e in unknown if (pdu := await self._fetch_event(origin, e)) is not None]
            await self._keep_outliers(fetched, head.room_version, head.room_id, known, set(unknown))
            if prev not in known.events or prev in known.rejected:
                continue
            state: StateIds = {}
            for eid in [*state_ids, prev]:
                ev = known.events.get(eid)
                if ev is None or eid in known.rejected or not isinstance(ev.get("state_key"), str):
                    continue
                state[(ev["type"], ev["state_key"])] = eid
            sets.append(state)
        return sets

    async def _fetch_event(self, origin: str, event_id: str) -> dict[str, Any] | None:
        try:
            answer = await self.client.get_json(
                origin, f"/_matrix/federation/v1/event/{quote(event_id, safe='')}"
            )
        except (RemoteError, RemoteServerError) as e:
            log.info("event {id} from {origin} failed: {e}", id=event_id, origin=origin, e=e)
            return None
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if isinstance(pdus, list) and len(pdus) == 1 and isinstance(pdus[0], dict):
            return pdus[0]
        return None

    async def _fetch_auth_chain(
        self, origin: str, room_version: str, pdu: dict[str, Any], event_id: str, known: _Known
    ) -> None:
        """The event's auth chain from the origin: each event checked against its own auth
        events and kept as an outlier (or rejected)."""
        path = (
            f"/_matrix/federation/v1/event_auth/{quote(pdu['room_id'], safe='')}/{quote(event_id, safe='')}"
        )
        try:
            answer = await self.client.get_json(origin, path)
        except (RemoteError, RemoteServerError) as e:
            log.info("event_auth from {origin} failed: {e}", origin=origin, e=e)
            return
        chain = answer.get("auth_chain") if isinstance(answer, dict) else None
        if not isinstance(chain, list) or len(chain) > MAX_AUTH_CHAIN:
            return
        await self._keep_outliers(chain, room_version, pdu["room_id"], known)

    def _check_alone(self, candidate: dict[str, Any], room_version: str, known: _Known) -> PduOutcome:
        """Check a fetched event against its own auth events only (no state judges it):
        the signatures with the keys we hold, then auth. Raises MissingEvent or
        AuthChainError like check_pdu."""
        return check_pdu(
            candidate,
            room_version,
            keys=self.key_ring.cached_key,
            events=known.events,
            state_before=None,
            current_state=None,
            rejected=known.rejected,
        )

    async def _keep_outliers(
        self,
        candidates: list[Any],
        room_version: str,
        room_id: str,
        known: _Known,
        wanted: set[str] | None = None,
    ) -> None:
        """Check events fetched from another server (oldest first), each against its own
        auth events, and keep them out of the timeline: outliers, or rejected. With `wanted`,
        only events of those IDs are taken."""
        valid = []
        for candidate in candidates:
            try:
                validate_pdu(candidate, room_version)
            except InvalidPdu:
                continue
            if candidate.get("room_id", room_id) == room_id:
                valid.append(dict(candidate))
        for candidate in sorted(valid, key=lambda e: e["depth"]):
            cid = compute_event_id(candidate, room_version)
            if wanted is not None and cid not in wanted:
                continue
            await self._load([cid, *candidate["auth_events"]], known)
            if cid in known.events:
                continue
            await self._ensure_keys(candidate)  # check_pdu verifies the signatures with them
            try:
                outcome = self._check_alone(candidate, room_version, known)
            except (MissingEvent, AuthChainError):
                continue
            if outcome.status is PduStatus.DROPPED:
                continue
            status = "outlier" if outcome.accepted else "rejected"
            if status == "rejected":
                known.rejected.add(cid)
            known.events[cid] = {**outcome.event, "event_id": cid}
            await self.fed_store.store_outcome(
                cid, room_id, status, outcome.reason, dict(outcome.event), self.clock.time_ms()
            )


def _event_id_or_none(pdu: Any, room_version: str) -> str | None:
    """The ID of a PDU that failed the format checks, if one can be computed (to name it
    in the transaction's answer)."""
    try:
        return compute_event_id(pdu, room_version) if isinstance(pdu, dict) else None
    except Exception:
        return None


def _id_list(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and len(value) <= MAX_STATE_IDS and all(isinstance(e, str) for e in value)
