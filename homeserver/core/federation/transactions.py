"""Inbound transactions: `PUT /_matrix/federation/v1/send/{txnId}` (Server-Server API,
"Transactions").

A transaction is processed once per (origin, transaction id): its answer is stored, and a
retry (or a copy arriving while the first is still being processed) gets the same answer.
PDUs go to `PduIngest` one by one, in the order sent (the spec leaves the order to us; the
origin sends them oldest first); the answer maps each PDU's event ID to `{}` or
`{"error": ...}`. EDUs go to the EDU receiver after the PDUs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.federation.edus import EduReceiver
from homeserver.core.federation.ingest import PduIngest
from homeserver.core.federation.server_acl import room_acl, server_allowed
from homeserver.errors import BadJson
from homeserver.events.hashing import compute_event_id
from homeserver.events.pdu_checks import PduStatus
from homeserver.events.room_versions import room_id_is_create_hash
from homeserver.logs import log_failure
from homeserver.storage.events import EventStore
from homeserver.storage.federation_events import FederationEventStore

log = Logger()

# Spec: "A transaction can contain at most 50 PDUs and 100 EDUs."
MAX_PDUS = 50
MAX_EDUS = 100
# A transaction's answer is kept this long: its sender retries it only until answered, so
# a day covers any retry; older answers are deleted at most once per PRUNE_EVERY_S.
TXN_KEPT_MS = 86_400_000
PRUNE_EVERY_S = 3600.0
# Rejected remote events are forgotten after a week. A server may send rejected events
# without end (each up to 64 KiB); forgetting one costs at most checking it again, with the
# same answer, should it come back. Outliers and soft-failed events stay: they are in the
# room's DAG, as the auth and prev events of what was accepted.
REJECTED_KEPT_MS = 7 * 86_400_000


class TransactionReceiver:
    def __init__(
        self,
        store: EventStore,
        fed_store: FederationEventStore,
        ingest: PduIngest,
        edus: EduReceiver,
        clock: Clock,
    ) -> None:
        self.store = store
        self.fed_store = fed_store
        self.ingest = ingest
        self.edus = edus
        self.clock = clock
        self._in_flight: dict[tuple[str, str], list[Deferred[dict[str, Any]]]] = {}
        self._pruned_at = -PRUNE_EVERY_S

    async def receive(self, origin: str, txn_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to a transaction; 400 M_BAD_JSON for a malformed one (not stored)."""
        pdus, edus = _parse(body)
        key = (origin, txn_id)
        waiters = self._in_flight.get(key)
        if waiters is not None:
            waiter: Deferred[dict[str, Any]] = Deferred()
            waiters.append(waiter)
            return await waiter
        self._in_flight[key] = waiters = []
        try:
            answer = await self.fed_store.txn_response(origin, txn_id)
            if answer is None:
                answer = await self._process(origin, pdus, edus)
                await self.fed_store.store_txn_response(origin, txn_id, answer, self.clock.time_ms())
                await self._prune_when_due()
        except Exception as e:
            del self._in_flight[key]
            for w in waiters:
                w.errback(e)
            raise
        del self._in_flight[key]
        for w in waiters:
            w.callback(answer)
        return answer

    async def _prune_when_due(self) -> None:
        now = self.clock.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            try:
                await self.fed_store.prune_txns(self.clock.time_ms() - TXN_KEPT_MS)
                await self.fed_store.prune_rejected(self.clock.time_ms() - REJECTED_KEPT_MS)
            except Exception:
                # The answer is stored: the sender gets it; the next prune tries again.
                log_failure(log, "pruning old federation transactions and rejected events failed")

    async def _process(
        self, origin: str, pdus: list[dict[str, Any]], edus: list[dict[str, Any]]
    ) -> dict[str, Any]:
        results: dict[str, dict[str, str]] = {}
        # Each PDU is decided in turn; their commits overlap, and all are awaited before the
        # answer (nothing acknowledged is lost).
        writes: list[tuple[str, Deferred[None]]] = []
        versions: dict[str, str | None] = {}
        allowed: dict[str, bool] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id")
            if not isinstance(room_id, str):
                continue  # no room: we cannot even name the event (v12 create events come by join)
            if room_id not in versions:
                # From the room's head when it is in memory (it is for a room with traffic):
                # one database trip fewer before the event can be checked and stored.
                head = self.ingest.heads.peek(room_id)
                versions[room_id] = (
                    head.room_version if head is not None else await self.store.room_version(room_id)
                )
            version = versions[room_id]
            if version is None:
                continue  # a room we are not in: its version, hence the event ID, is unknown
            if room_id_is_create_hash(version) and pdu.get("type") == "m.room.create":
                continue
            if room_id not in allowed:
                allowed[room_id] = server_allowed(origin, room_acl(await self.ingest.heads.get(room_id)))
            if not allowed[room_id]:
                # The room's m.room.server_acl bans the origin: its events are refused.
                results[compute_event_id(pdu, version)] = {"error": "Your server is banned by the room's ACL"}
                continue
            try:
                outcome = await self.ingest.receive_pdu(origin, version, pdu, wait=False)
            except Exception as e:
                log.failure("PDU from {origin} failed", origin=origin)
                results[compute_event_id(pdu, version)] = {"error": f"Could not process the event: {e}"}
                continue
            if outcome.event_id is None:
                continue
            if outcome.written is not None:
                writes.append((outcome.event_id, outcome.written))
            if outcome.status in (PduStatus.ACCEPTED, PduStatus.SOFT_FAILED):
                results[outcome.event_id] = {}
            else:
                results[outcome.event_id] = {"error": outcome.reason}
        for event_id, written in writes:
            try:
                await written
            except Exception as e:
                results[event_id] = {"error": f"Could not store the event: {e}"}
        await self.edus.receive_all(origin, edus)
        return {"pdus": results}


def _parse(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pdus = body.get("pdus")
    edus = body.get("edus", [])
    if not isinstance(pdus, list) or not all(isinstance(p, dict) for p in pdus):
        raise BadJson("'pdus' must be a list of objects")
    if not isinstance(edus, list) or not all(isinstance(e, dict) for e in edus):
        raise BadJson("'edus' must be a list of objects")
    if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
        raise BadJson(f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")
    if not isinstance(body.get("origin"), str) or not isinstance(body.get("origin_server_ts"), int):
        raise BadJson("'origin' and 'origin_server_ts' are required")
    return pdus, edus
