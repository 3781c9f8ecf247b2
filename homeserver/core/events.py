"""Building, authorising and persisting events (spec: rooms v10/v11 event format).

`build` is synchronous on purpose: it checks the auth rules against the room's
head, creates the PDU (hashes, signature, reference-hash event id), takes the
next stream position and applies the event to the head, with no await in
between. So events of one room are always chained in stream order, and the
group commit (`core/persist.py`) writes them in that order.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from signedjson.types import SigningKey
from twisted.internet.defer import Deferred

from homeserver.core.clock import Clock
from homeserver.core.persist import EarlierEventFailed, EventPersister
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.restrictions import AccountRestrictions
from homeserver.core.retention import check_policy_content
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.core.txn_ids import TxnIdCache
from homeserver.errors import BadJson, Forbidden, MatrixError, NotFound, TooLarge
from homeserver.events.auth_rules import AuthError, auth_event_types, auth_types_for_event, check_auth
from homeserver.events.canonical import check_canonical_values, encode_canonical_event_json
from homeserver.events.room_versions import redacts_in_content, room_id_is_create_hash
from homeserver.events.signing import sign_event_with_id
from homeserver.storage.events import EventStore, PersistItem, StoredEvent
from homeserver.workers.event_writes import event_from_json, forwarded

if TYPE_CHECKING:
    from homeserver.workers.event_writes import RoomWriters

# Spec: "The complete event MUST NOT be larger than 65536 bytes" (canonical JSON, as sent over federation).
MAX_PDU_SIZE = 65536
# prev_events kept per event: local rooms have one forward extremity.
MAX_PREV_EVENTS = 10


class EventService:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
        heads: RoomHeads,
        persister: EventPersister,
        store: EventStore,
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.clock = clock
        self.heads = heads
        self.persister = persister
        self.store = store
        self.txn_ids = TxnIdCache(store, clock)
        # Set by the server: limits what clients send (`send(..., rate_limited=True)`).
        self.ratelimiter: RateLimiter | None = None
        # Set by the server: suspended and shadow-banned senders (core/restrictions.py).
        self.restrictions: AccountRestrictions | None = None
        self._in_flight_txns: dict[tuple[str, str, str], list[Deferred[StoredEvent]]] = {}
        self._last_create_ms = 0  # see `build`: v12 create events
        # Set by the server with several processes: a room another process writes is sent
        # there (workers/event_writes.py); None: every room is written here.
        self.writers: RoomWriters | None = None

    # Building --------------------------------------------------------------------

    def build(
        self,
        head: RoomHead,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        redacts: str | None = None,
        now_ms: int | None = None,
    ) -> StoredEvent:
        """Authorise and build the next event of `head`'s room and apply it to the head.

        @raise Forbidden: the auth rules refuse it.
        @raise TooLarge: the PDU would exceed 64 KiB.
        @raise BadJson: `content` holds a float or an integer past 2**53 (room versions 6+).
        """
        if self.heads.has_failed(head.room_id):
            raise EarlierEventFailed()
        try:
            check_canonical_values(content)
        except ValueError as e:
            raise BadJson(f"Bad JSON value: {e}") from None
        now = now_ms if now_ms is not None else self.clock.time_ms()
        mints_room_id = event_type == "m.room.create" and room_id_is_create_hash(head.room_version)
        if mints_room_id:
            # A v12 room ID is the create event's hash: two rooms created by one user in the
            # same millisecond would get the same ID, so create timestamps never repeat here.
            now = max(now, self._last_create_ms + 1)
            self._last_create_ms = now
        while True:
            pdu, event_id = self._signed_pdu(head, sender, event_type, content, state_key, redacts, now)
            if not mints_room_id or self.writers is None or self.writers.is_mine("!" + event_id[1:]):
                break
            # With several event writers a room is written by the one its ID maps to: the
            # writer creating it takes the next millisecond until the ID maps to itself.
            now += 1
            self._last_create_ms = now
        if mints_room_id:
            head.room_id = "!" + event_id[1:]
        unsigned: dict[str, Any] = {}
        if state_key is not None:
            previous = head.get(event_type, state_key)
            if previous is not None:
                unsigned = {
                    "replaces_state": previous.event_id,
                    "prev_content": previous.content,
                    "prev_sender": previous.sender,
                }
        event = StoredEvent(event_id, head.room_id, self.persister.allocate_stream_ordering(), pdu, unsigned)
        head.apply(event)
        return event

    def _signed_pdu(
        self,
        head: RoomHead,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None,
        redacts: str | None,
        now: int,
    ) -> tuple[dict[str, Any], str]:
        """The authorised, hashed and signed PDU of `build`, and its event ID."""
        pdu: dict[str, Any] = {
            "room_id": head.room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": now,
            "depth": head.depth + 1,
            "prev_events": head.extremities[:MAX_PREV_EVENTS],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        # v12: the create event has no room ID; the room ID is derived from its event ID.
        if event_type == "m.room.create" and room_id_is_create_hash(head.room_version):
            del pdu["room_id"]
        if redacts is not None:
            if redacts_in_content(head.room_version):
                pdu["content"] = {**content, "redacts": redacts}
            else:
                pdu["redacts"] = redacts
        auth_state = {key: head.state[key].pdu for key in auth_types_for_event(pdu) if key in head.state}
        try:
            check_auth(pdu, auth_state, head.room_version)
        except AuthError as e:
            raise Forbidden(str(e)) from None
        pdu["auth_events"] = sorted(
            head.state[key].event_id for key in auth_event_types(pdu, head.room_version) if key in head.state
        )
        # Signing adds the content hash; the event ID is hashed from the bytes it signs.
        pdu, event_id = sign_event_with_id(pdu, self.server_name, self.signing_key, head.room_version)
        if len(encode_canonical_event_json(pdu)) > MAX_PDU_SIZE:
            raise TooLarge("Event is larger than 65536 bytes")
        return pdu, event_id

    def new_room_head(self, room_version: str) -> RoomHead:
        """A head for a new room; in v12 its room ID is set by building the create event.
        With several event writers, an ID this process writes (they are random: a few tries)."""
        if room_id_is_create_hash(room_version):
            return RoomHead("", room_version)
        while True:
            room_id = f"!{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}:{self.server_name}"
            if self.writers is None or self.writers.is_mine(room_id):
                return RoomHead(room_id, room_version)

    # Persisting -------------------------------------------------------------------

    async def persist(
        self,
        head: RoomHead,
        events: Sequence[StoredEvent],
        *,
        txn: tuple[str, str, str] | None = None,
        is_new_room: bool = False,
    ) -> None:
        """Write `events` (just built on `head`) in the next group commit and wait for it."""
        now = self.clock.time_ms()
        items = [
            PersistItem(
                ev,
                head.room_version,
                is_create=is_new_room and i == 0,
                txn=txn if i == len(events) - 1 else None,
                now_ms=now,
            )
            for i, ev in enumerate(events)
        ]
        await self.persister.persist(items)

    async def send(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        txn: tuple[str, str] | None = None,
        redacts: str | None = None,
        rate_limited: bool = False,
    ) -> StoredEvent:
        """Build and persist one event; with `txn` (device id, txn id) a retry returns the first event.
        `rate_limited`: a client's own send, counted against `rate_limits.send_per_user` (a retry
        answered with the first event is not counted).

        @raise NotFound: unknown room. @raise Forbidden: refused by the auth rules.
        @raise LimitExceeded: over the sender's rate limit.
        """
        args = {
            "sender": sender,
            "room_id": room_id,
            "event_type": event_type,
            "content": content,
            "state_key": state_key,
            "txn": list(txn) if txn is not None else None,
            "redacts": redacts,
            "rate_limited": rate_limited,
        }
        if (answer := forwarded(self.writers, room_id, "events.send", args)) is not None:
            # The room's writer checks, limits, dedupes the txn and commits.
            return event_from_json(await answer)
        if txn is None:
            if rate_limited:
                self._limit(sender)
                if (shadowed := await self._restricted(sender, room_id, event_type, content)) is not None:
                    return shadowed
            return await self._send_now(sender, room_id, event_type, content, state_key, redacts, None)
        key = (sender, txn[0], txn[1])
        waiters = self._in_flight_txns.get(key)
        if waiters is not None:
            # A concurrent retry: wait for the first attempt's answer.
            waiter: Deferred[StoredEvent] = Deferred()
            waiters.append(waiter)
            return await waiter
        self._in_flight_txns[key] = waiters = []
        try:
            existing = await self.txn_ids.lookup(*key)
            if existing is not None:
                event = (await self.store.get_events([existing]))[existing]
            else:
                shadowed = None
                if rate_limited:
                    self._limit(sender)
                    shadowed = await self._restricted(sender, room_id, event_type, content)
                if shadowed is not None:
                    event = shadowed
                else:
                    event = await self._send_now(
                        sender, room_id, event_type, content, state_key, redacts, key
                    )
        except Exception as e:
            del self._in_flight_txns[key]
            for w in waiters:
                w.errback(e)
            raise
        del self._in_flight_txns[key]
        for w in waiters:
            w.callback(event)
        return event

    async def _restricted(
        self, sender: str, room_id: str, event_type: str, content: dict[str, Any]
    ) -> StoredEvent | None:
        """A client's send by a restricted account: a suspended one is refused; a shadow-banned
        one gets an event that looks sent (an id, a timestamp) but is stored nowhere, so it
        reaches no one and the sender cannot tell. None: send normally."""
        if self.restrictions is None:
            return None
        self.restrictions.check_may_send(sender)
        if not self.restrictions.is_shadow_banned(sender):
            return None
        if await self.heads.get(room_id) is None:
            raise NotFound("Unknown room")
        pdu = {
            "type": event_type,
            "room_id": room_id,
            "sender": sender,
            "content": content,
            "origin_server_ts": self.clock.time_ms(),
        }
        return StoredEvent("$" + secrets.token_urlsafe(32), room_id, 0, pdu)

    def _limit(self, sender: str) -> None:
        if self.ratelimiter is not None:
            self.ratelimiter.check_user("send", sender)

    async def _send_now(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None,
        redacts: str | None,
        txn: tuple[str, str, str] | None,
    ) -> StoredEvent:
        if not isinstance(content, dict):
            raise MatrixError("Event content must be a JSON object", "M_BAD_JSON")
        check_policy_content(event_type, state_key, content)
        head = await self.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        event = self.build(head, sender, event_type, content, state_key, redacts=redacts)
        await self.persist(head, [event], txn=txn)
        if txn is not None:
            self.txn_ids.remember(*txn, event.event_id)
        return event
