"""Joining, leaving and knocking across servers (Server-Server API, "Joining rooms",
"Leaving rooms", "Knocking upon a room"), both ways.

Inbound, for a room of ours: `make_*` answers a template event the remote server fills and
signs; `send_*` checks the signed event (format, the sender's server is the origin, its
signature from a key of that server, its content hash, the auth rules against its own
auth events and against our current state), then chains it onto the room's head and
persists it like a local event, so local clients see it in /sync.

Outbound, our user into a room on another server: make_join at a resident server, the
event signed by us, send_join; the returned state and auth chain are checked the same way,
and the room's state events and our join are stored, the join last. The room head is
built from them (its one extremity our join), so the user's next sends chain onto it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.defer import TimeoutError as AttemptTimedOut
from twisted.logger import Logger

from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.discovery import split_server_name
from homeserver.core.federation.join_state import BadJoinState, checked_state, pdu_only, verified_signatures
from homeserver.core.federation.keys import KeyRing
from homeserver.core.federation.server_acl import check_server_allowed
from homeserver.core.federation.user_ids import server_of
from homeserver.core.join_rules import join_authoriser
from homeserver.core.room_heads import RoomHead
from homeserver.errors import BadJson, Forbidden, MatrixError, NotFound, RemoteServerError
from homeserver.events.auth_chain import MissingEvent
from homeserver.events.auth_rules import AuthError, auth_types_for_event, check_auth
from homeserver.events.hashing import check_content_hash, compute_event_id
from homeserver.events.pdu_checks import InvalidPdu, PduStatus, check_pdu, check_pdu_signatures, validate_pdu
from homeserver.events.room_versions import room_id_is_create_hash
from homeserver.events.signing import InvalidSignature, sign_event, verify_event_signature
from homeserver.storage.events import PersistItem, StoredEvent
from homeserver.workers.event_writes import forwarded

if TYPE_CHECKING:
    from homeserver.core.events import EventService
    from homeserver.core.federation.ingest import IngestOutcome

SUPPORTED_VERSIONS = ("10", "11", "12")
STRIPPED_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)

log = Logger()

# At most this many servers are asked per join, knock or leave of a remote room, after
# dropping duplicates, ourselves and names that are not server names. Synapse asks every
# one named; one request naming thousands that never answer then runs for hours. Clients
# name three or so (matrix.to links name up to three, Element the room's top servers).
MAX_SERVERS_TRIED = 10
# And this long in all: each request has the federation request timeout (30 s by
# default), but ten servers with two requests each could still take ten minutes.
MAX_ATTEMPT_S = 120.0


def servers_to_try(servers: list[str], own: str) -> list[str]:
    """The servers a handshake asks, in order: each once, not `own`, only well-formed
    server names (spec appendix "Server Name"; a bad one is skipped, as the spec names no
    error for it and Synapse lets it fail like an unreachable one), at most
    MAX_SERVERS_TRIED."""
    out: list[str] = []
    for server in dict.fromkeys(servers):
        if len(out) == MAX_SERVERS_TRIED:
            break
        if not server or server == own or len(server) > 255:
            continue
        try:
            split_server_name(server)
        except ValueError:
            continue
        out.append(server)
    return out


@dataclass(frozen=True)
class _Handshake:
    """What make_* and send_* with one server brought: the signed event and the answer."""

    membership: str
    server: str
    room_id: str
    room_version: str
    pdu: dict[str, Any]
    event_id: str
    answer: Any


_pdu_only = pdu_only


class FederatedMembership:
    def __init__(
        self,
        server_name: str,
        events: "EventService",
        key_ring: KeyRing,
        client: FederationClient,
        user_exists: Callable[[str], Awaitable[bool]],
        is_blocked: Callable[[str], bool] = lambda room_id: False,
        run_blocking: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self.user_exists = user_exists
        # A worker pool's run(fn, *args): a send_join answer's signatures are verified there.
        self.run_blocking = run_blocking
        # Rooms a server admin blocked (core/admin.py): no joins, knocks or invites into them.
        self.is_blocked = is_blocked
        self._room_locks: dict[str, DeferredLock] = {}
        self.server_name = server_name
        self.events = events
        self.key_ring = key_ring
        self.client = client
        # Set by the server to the federation sender's queue_remote_event: a remote user's
        # join, leave or knock taken by send_* is ours to hand on to the room's other servers.
        self.on_remote_event: Callable[[StoredEvent, str], Awaitable[None]] | None = None
        # Set by the server to PduIngest.receive_pdu(origin, room_version, pdu): where a join
        # that lost the race with another of ours goes (remote_membership).
        self.ingest_pdu: Callable[[str, str, dict[str, Any]], Awaitable["IngestOutcome"]] | None = None

    # Inbound: a remote user and a room of ours -----------------------------------------------

    async def make(
        self, membership: str, origin: str, room_id: str, user_id: str, versions: list[str] | None
    ) -> dict[str, Any]:
        """The template for GET /make_{join,leave,knock}/{roomId}/{userId}."""
        # From the room's writer: its head is the current one, so the template's
        # prev_events and auth events are the room's latest.
        args = {
            "membership": membership,
            "origin": origin,
            "room_id": room_id,
            "user_id": user_id,
            "versions": versions,
        }
        forward = forwarded(self.events.writers, room_id, "federation.make_membership", args)
        if forward is not None:
            return await forward
        if server_of(user_id) != origin:
            raise Forbidden(f"{user_id} is not a user of {origin}")
        if membership != "leave" and self.is_blocked(room_id):
            raise Forbidden("This room has been blocked on this server")
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        check_server_allowed(origin, head)  # the room's m.room.server_acl
        if versions is not None and head.room_version not in versions:
            raise MatrixError(
                f"Your server does not support room version {head.room_version}",
                "M_INCOMPATIBLE_ROOM_VERSION",
                room_version=head.room_version,
            )
        template: dict[str, Any] = {
            "room_id": room_id,
            "sender": user_id,
            "type": "m.room.member",
            "state_key": user_id,
            "content": {"membership": membership},
            "origin_server_ts": self.events.clock.time_ms(),
            "depth": head.depth + 1,
            "prev_events": head.extremities[:10],
        }
        if membership == "join" and (authoriser := await self._authoriser(head, user_id)) is not None:
            template["content"]["join_authorised_via_users_server"] = authoriser
        self._authorise(head, template)
        template["auth_events"] = self._auth_event_ids(head, template)
        return {"event": template, "room_version": head.room_version}

    async def _authoriser(self, head: RoomHead, user_id: str) -> str | None:
        return await join_authoriser(self.events.heads, self.server_name, head, user_id)

    async def send(
        self, membership: str, origin: str, room_id: str, event_id: str, pdu: Any
    ) -> tuple[RoomHead, StoredEvent, list[StoredEvent]]:
        """Check and persist the signed event of PUT /send_{join,leave,knock}; returns the
        head, the stored event and the room's state before it."""
        if not isinstance(pdu, dict):
            raise BadJson("The body must be an event")
        if membership != "leave" and self.is_blocked(room_id):
            raise Forbidden("This room has been blocked on this server")
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        check_server_allowed(origin, head)  # the room's m.room.server_acl
        pdu = _pdu_only(pdu)
        if pdu.get("room_id") != room_id:
            raise BadJson("The event's room_id is not the room of the path")
        if pdu.get("type") != "m.room.member" or not isinstance(pdu.get("content"), dict):
            raise BadJson("The event must be an m.room.member event")
        if pdu["content"].get("membership") != membership:
            raise BadJson(f"The event's membership must be {membership}")
        sender = pdu.get("sender")
        if not isinstance(sender, str) or pdu.get("state_key") != sender:
            raise BadJson("The event's state_key must be its sender")
        if server_of(sender) != origin:
            raise Forbidden(f"The sender {sender} is not a user of {origin}")
        room_version = head.room_version
        existing = head.get("m.room.member", sender)
        if existing is not None and existing.event_id == event_id == _event_id_or_none(pdu, room_version):
            # A retry of a handshake that went through (the same event: its ID is its hash).
            return head, existing, [ev for ev in head.state.values() if ev is not existing]
        authoriser = pdu["content"].get("join_authorised_via_users_server")
        if membership == "join" and isinstance(authoriser, str) and server_of(authoriser) == self.server_name:
            # A restricted join we are asked to vouch for: only if we would have offered it.
            if authoriser != await self._authoriser(head, sender):
                raise Forbidden(f"{sender} may not join this room through {authoriser}")
            pdu = sign_event(pdu, self.server_name, self.events.signing_key, room_version)
        await self._fetch_keys([pdu])
        lookup = await self._auth_lookup(head, pdu)
        current = {key: {**ev.pdu, "event_id": ev.event_id} for key, ev in head.state.items()}
        try:
            outcome = check_pdu(
                pdu,
                room_version,
                keys=self.key_ring.cached_key,
                events=lookup,
                state_before=current,
                current_state=current,
            )
        except MissingEvent as e:
            raise Forbidden(f"The event names an auth event this room does not have: {e}") from None
        if outcome.event_id != event_id:
            if outcome.status is PduStatus.DROPPED and outcome.event_id is None:
                raise BadJson(outcome.reason)
            if outcome.event_id is not None:
                raise BadJson("The event ID of the path is not the event's")
        if outcome.status is PduStatus.DROPPED:
            raise Forbidden(outcome.reason)
        if outcome.redacted:
            raise Forbidden("The event's content hash does not match")
        if not outcome.accepted:
            raise Forbidden(outcome.reason)
        sent_before = await self.events.store.event_stored(event_id)
        existing = head.get("m.room.member", sender)
        if existing is not None and existing.event_id == event_id:
            # The same event, sent again while we checked it the first time.
            return head, existing, [ev for ev in head.state.values() if ev is not existing]
        if sent_before:
            raise Forbidden("This event was sent before and is no longer the user's membership")
        if membership == "join":
            # The resident server countersigns a join (spec: send_join v2 "the signed event").
            pdu = sign_event(pdu, self.server_name, self.events.signing_key, room_version)
        state_before = list(head.state.values())
        stored = self._chain(head, pdu, event_id)
        await self.events.persist(head, [stored])
        if self.on_remote_event is not None:
            # Queued (committed) before we answer: the origin retries until we do.
            await self.on_remote_event(stored, origin)
        return head, stored, state_before

    async def answer_send(
        self, membership: str, origin: str, room_id: str, event_id: str, pdu: Any
    ) -> dict[str, Any]:
        """The answer to PUT /v2/send_join, /v2/send_leave or /v1/send_knock."""
        args = {
            "membership": membership,
            "origin": origin,
            "room_id": room_id,
            "event_id": event_id,
            "pdu": pdu,
        }
        forward = forwarded(self.events.writers, room_id, "federation.send_membership", args)
        if forward is not None:
            return await forward
        head, stored, state_before = await self.send(membership, origin, room_id, event_id, pdu)
        if membership == "leave":
            return {}
        if membership == "knock":
            return {"knock_room_state": self.stripped_state(head)}
        chain = await self.load_auth_chain(head, [*state_before, stored])
        return {
            "origin": self.server_name,
            "event": stored.pdu,
            "state": [ev.pdu for ev in state_before],
            "auth_chain": [ev.pdu for ev in chain],
            "members_omitted": False,
            "servers_in_room": sorted({server_of(u) for u in head.members("join")}),
        }

    def stripped_state(self, head: RoomHead) -> list[dict[str, Any]]:
        """Stripped state shown with a knock or an invite (spec: "stripped state")."""
        out = []
        for event_type in STRIPPED_TYPES:
            ev = head.get(event_type)
            if ev is not None:
                out.append({"type": ev.type, "state_key": "", "content": ev.content, "sender": ev.sender})
        return out

    def _authorise(self, head: RoomHead, pdu: dict[str, Any]) -> None:
        auth_state = {key: head.state[key].pdu for key in auth_types_for_event(pdu) if key in head.state}
        try:
            check_auth(pdu, auth_state, head.room_version)
        except AuthError as e:
            raise Forbidden(str(e)) from None

    def _auth_event_ids(self, head: RoomHead, pdu: dict[str, Any]) -> list[str]:
        from homeserver.events.auth_rules import auth_event_types

        return sorted(
            head.state[key].event_id for key in auth_event_types(pdu, head.room_version) if key in head.state
        )

    def _chain(self, head: RoomHead, pdu: dict[str, Any], event_id: str) -> StoredEvent:
        """Apply a checked remote event to the head, as `EventService.build` does for ours."""
        unsigned: dict[str, Any] = {}
        previous = head.get(pdu["type"], pdu["state_key"])
        if previous is not None:
            unsigned = {
                "replaces_state": previous.event_id,
                "prev_content": previous.content,
                "prev_sender": previous.sender,
            }
        stored = StoredEvent(
            event_id, head.room_id, self.events.persister.allocate_stream_ordering(), pdu, unsigned
        )
        head.apply(stored)
        return stored

    async def _auth_lookup(self, head: RoomHead, pdu: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The event's auth events and their auth chains, from our store (check_pdu's lookup)."""
        found: dict[str, dict[str, Any]] = {}
        wanted = {a for a in pdu.get("auth_events", []) if isinstance(a, str)}
        create = head.get("m.room.create")
        if create is not None:
            wanted.add(create.event_id)
        while wanted:
            batch = list(wanted)[:200]
            wanted.difference_update(batch)
            got = await self.events.store.get_events(batch)
            for eid, ev in got.items():
                found[eid] = ev.pdu
                wanted.update(a for a in ev.pdu.get("auth_events", []) if a not in found)
            wanted.difference_update(found)
        return found

    async def _fetch_keys(self, pdus: list[Mapping[str, Any]]) -> None:
        wanted: set[tuple[str, str, int]] = set()
        for pdu in pdus:
            signatures = pdu.get("signatures")
            ts = pdu.get("origin_server_ts")
            if not isinstance(signatures, dict) or not isinstance(ts, int):
                continue
            for server, keys in signatures.items():
                if isinstance(keys, dict) and server != self.server_name:
                    wanted.update((server, kid, ts) for kid in keys if isinstance(kid, str))
        await self.key_ring.ensure_keys(sorted(wanted))

    def auth_chain_of(
        self, head: RoomHead, events: list[StoredEvent], known: dict[str, StoredEvent]
    ) -> list[str]:
        """IDs in the auth chains of `events`, from `known` (loaded by the caller)."""
        seen: set[str] = set()
        todo = [a for ev in events for a in ev.pdu.get("auth_events", [])]
        while todo:
            eid = todo.pop()
            if eid in seen or eid not in known:
                continue
            seen.add(eid)
            todo.extend(known[eid].pdu.get("auth_events", []))
        if room_id_is_create_hash(head.room_version):
            create = head.get("m.room.create")
            if create is not None:
                seen.add(create.event_id)
        return sorted(seen)

    async def load_auth_chain(self, head: RoomHead, events: list[StoredEvent]) -> list[StoredEvent]:
        known: dict[str, StoredEvent] = {ev.event_id: ev for ev in events}
        wanted = {a for ev in events for a in ev.pdu.get("auth_events", [])} - set(known)
        create = head.get("m.room.create")
        if create is not None:
            known[create.event_id] = create
        while wanted:
            got = await self.events.store.get_events(list(wanted))
            known.update(got)
            wanted = {a for ev in got.values() for a in ev.pdu.get("auth_events", [])} - set(known)
        return [known[e] for e in self.auth_chain_of(head, events, known)]

    # Invites ---------------------------------------------------------------------------------

    async def receive_invite(self, origin: str, room_id: str, event_id: str, body: Any) -> dict[str, Any]:
        """PUT /v2/invite/{roomId}/{eventId}: a remote server invites one of our users. The
        event is checked, countersigned and, unless we are in the room already (then it
        arrives with the room's other events), kept so the invitee's /sync shows it."""
        args = {"origin": origin, "room_id": room_id, "event_id": event_id, "body": body}
        if (forward := forwarded(self.events.writers, room_id, "federation.invite", args)) is not None:
            return await forward
        if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
            raise BadJson("'event' must be an object")
        room_version = body.get("room_version")
        if room_version not in SUPPORTED_VERSIONS:
            raise MatrixError(
                f"Room version {room_version} is not supported here",
                "M_INCOMPATIBLE_ROOM_VERSION",
                room_version=room_version if isinstance(room_version, str) else None,
            )
        pdu = _pdu_only(body["event"])
        content = pdu.get("content")
        target = pdu.get("state_key")
        if pdu.get("room_id") != room_id:
            raise BadJson("The event's room_id is not the room of the path")
        if pdu.get("type") != "m.room.member" or not isinstance(content, dict):
            raise BadJson("The event must be an m.room.member event")
        if content.get("membership") != "invite" or not isinstance(target, str):
            raise BadJson("The event must be an invite")
        sender = pdu.get("sender")
        if not isinstance(sender, str) or server_of(sender) != origin:
            raise Forbidden(f"The sender {sender} is not a user of {origin}")
        if server_of(target) != self.server_name or not await self.user_exists(target):
            raise NotFound(f"{target} is not a user of this server")
        if self.is_blocked(room_id):
            raise Forbidden("This room has been blocked on this server")
        check_server_allowed(origin, await self.events.heads.get(room_id))  # when we are in it
        try:
            validate_pdu(pdu, room_version)
        except InvalidPdu as e:
            raise BadJson(f"Invalid event: {e.reason}") from None
        if compute_event_id(pdu, room_version) != event_id:
            raise BadJson("The event ID of the path is not the event's")
        await self._fetch_keys([pdu])
        try:
            check_pdu_signatures(pdu, room_version, self.key_ring.cached_key)
        except InvalidSignature as e:
            raise Forbidden(f"Bad signature: {e}") from None
        if not check_content_hash(pdu):
            raise Forbidden("The event's content hash does not match")
        signed = sign_event(pdu, self.server_name, self.events.signing_key, room_version)
        lock = self._room_locks.setdefault(room_id, DeferredLock())
        await lock.acquire()  # one invite stored at a time per room (a retry racing the first)
        try:
            await self._keep_invite(room_id, room_version, target, signed, event_id, body)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._room_locks.pop(room_id, None)
        return {"event": signed}

    async def _keep_invite(
        self,
        room_id: str,
        room_version: str,
        target: str,
        signed: dict[str, Any],
        event_id: str,
        body: dict[str, Any],
    ) -> None:
        if await self.events.store.event_stored(event_id):
            return  # a retry: kept already
        head = await self.events.heads.get(room_id)
        if head is not None and head.has_joined_member_of(self.server_name):
            # We are in the room: the invite joins our copy of it now (it may come again by
            # /send later; the event ID makes that a duplicate).
            current = head.get("m.room.member", target)
            if current is None or current.event_id != event_id:
                stored = self._chain(head, signed, event_id)
                await self.events.persist(head, [stored])
            return
        stripped = _stripped(body.get("invite_room_state"))
        unsigned = {"invite_room_state": stripped}
        await self._store_outlier(room_id, room_version, signed, event_id, head, unsigned)

    async def invite_remote(
        self, head: RoomHead, sender: str, target: str, content: dict[str, Any]
    ) -> StoredEvent:
        """Our member invites a user of another server: the event goes to their server to
        be countersigned (PUT /v2/invite), then into the room like any other."""
        server = server_of(target)
        pdu: dict[str, Any] = {
            "room_id": head.room_id,
            "sender": sender,
            "type": "m.room.member",
            "state_key": target,
            "content": content,
            "origin_server_ts": self.events.clock.time_ms(),
            "depth": head.depth + 1,
            "prev_events": head.extremities[:10],
        }
        self._authorise(head, pdu)
        pdu["auth_events"] = self._auth_event_ids(head, pdu)
        pdu = sign_event(pdu, self.server_name, self.events.signing_key, head.room_version)
        event_id = compute_event_id(pdu, head.room_version)
        stripped = self.stripped_state(head)
        body = {"event": pdu, "room_version": head.room_version, "invite_room_state": stripped}
        try:
            answer = await self.client.put_json(
                server, f"/_matrix/federation/v2/invite/{_q(head.room_id)}/{_q(event_id)}", body
            )
        except RemoteError as e:
            status = e.status if 400 <= e.status < 500 else 502
            raise MatrixError(f"{server} refused the invite: {e.message}", e.errcode, status=status) from None
        signed = answer.get("event") if isinstance(answer, dict) else None
        if not isinstance(signed, dict):
            raise RemoteServerError(f"{server} answered the invite without the event")
        signed = _pdu_only(signed)
        if compute_event_id(signed, head.room_version) != event_id:
            raise RemoteServerError(f"{server} answered the invite with another event")
        await self._fetch_keys([signed])
        if not any(
            self._signed_by(signed, head.room_version, server, kid)
            for kid in (signed.get("signatures") or {}).get(server, {})
        ):
            raise RemoteServerError(f"{server} did not countersign the invite")
        self._authorise(head, signed)  # the room may have changed while we waited
        stored = self._chain(head, signed, event_id)
        await self.events.persist(head, [stored])
        return stored

    def _signed_by(self, pdu: dict[str, Any], room_version: str, server: str, kid: str) -> bool:
        key = self.key_ring.cached_key(server, kid, int(pdu.get("origin_server_ts", 0)))
        if key is None:
            return False
        try:
            verify_event_signature(pdu, server, key, room_version)
        except InvalidSignature:
            return False
        return True

    async def _store_outlier(
        self,
        room_id: str,
        room_version: str,
        pdu: dict[str, Any],
        event_id: str,
        head: RoomHead | None,
        unsigned: dict[str, Any],
    ) -> StoredEvent:
        """An invite or knock for a room we are not in: kept as the only event we have of it
        (with the stripped state it came with), a room head of its own."""
        is_new = await self.events.store.room_version(room_id) is None
        if head is None:
            head = RoomHead(room_id, room_version)
            self.events.heads.put(head)
        stored = self._chain(head, pdu, event_id)
        stored.unsigned_extra.update(unsigned)
        head.extremities = []
        await self.events.persister.persist(
            [PersistItem(stored, room_version, is_create=is_new, extremity=False)]
        )
        return stored

    # Outbound: our user and a room on another server ----------------------------------------

    async def remote_membership(
        self,
        membership: str,
        user_id: str,
        room_id: str,
        servers: list[str],
        extra: dict[str, Any] | None = None,
    ) -> StoredEvent:
        """Join, leave or knock on a room through one of `servers` (tried in order, at most
        MAX_SERVERS_TRIED of them, for at most MAX_ATTEMPT_S in all).

        The handshakes run without the room's lock, so one user's slow attempt (servers that
        never answer) holds nobody else's join, knock or leave to the same room. Only storing
        what a handshake brought is done one at a time per room: two joins rebuilding the
        room from their send_join answers at once would clash. A join whose handshake ends
        after another of our users' join put this server in the room does not rebuild it:
        its event (accepted by the resident server, so never built twice) goes in like any
        PDU of the room (`ingest_pdu`), onto the room as we hold it.

        @raise NotFound: no server to ask (none left once ourselves, duplicates and names
            that are not server names are dropped), or the servers do not know the room.
        @raise MatrixError: a server's refusal (403, M_INCOMPATIBLE_ROOM_VERSION), or 502
            when none could be reached in time.
        """
        try:
            done = await self._handshake(membership, user_id, room_id, servers, extra)
        except MatrixError:
            async with self._room_lock(room_id):
                out_of_band = await self._leave_out_of_band(membership, user_id, room_id, extra)
            if out_of_band is None:
                raise
            return out_of_band
        async with self._room_lock(room_id):
            return await self._store_handshake(done)

    @asynccontextmanager
    async def _room_lock(self, room_id: str) -> AsyncIterator[None]:
        lock = self._room_locks.setdefault(room_id, DeferredLock())
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._room_locks.pop(room_id, None)

    async def _handshake(
        self,
        membership: str,
        user_id: str,
        room_id: str,
        servers: list[str],
        extra: dict[str, Any] | None,
    ) -> _Handshake:
        clock = self.events.clock
        deadline = clock.monotonic() + MAX_ATTEMPT_S
        last: Exception | None = None
        for server in servers_to_try(servers, self.server_name):
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                break
            attempt = Deferred.fromCoroutine(
                self._handshake_via(membership, user_id, room_id, server, extra or {})
            )
            # Each request has the federation timeout already; this bounds the whole attempt
            # (ten servers, two requests and key fetches each). Nothing is stored in a try,
            # so cancelling one leaves nothing half done.
            attempt.addTimeout(remaining, clock)  # type: ignore[arg-type]
            try:
                return await attempt
            except RemoteError as e:
                if e.status == 403 or e.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                    raise MatrixError(e.message, e.errcode, status=e.status) from None
                last = e
            except RemoteServerError as e:
                last = e
            except AttemptTimedOut:
                last = RemoteServerError(f"{server} did not answer in time", status=504)
        if last is None:
            raise NotFound("No server to ask about this room")
        if isinstance(last, RemoteError) and last.status == 404:
            raise NotFound(last.message)
        raise MatrixError(f"No server in the room could be reached: {last}", status=502)

    async def _leave_out_of_band(
        self, membership: str, user_id: str, room_id: str, extra: dict[str, Any] | None
    ) -> StoredEvent | None:
        """Rejecting an invite (or withdrawing a knock) to a room we are not in when no
        server of the room takes the leave: the leave is kept here only, on top of the
        invite, so the user is rid of it. Without this, an invite naming a room its server
        does not know (or a server that is gone) could never be rejected; Synapse does the
        same ("out-of-band" membership). None when this is not such a case."""
        head = await self.events.heads.get(room_id)
        if membership != "leave" or head is None or head.get("m.room.create") is not None:
            return None
        own = head.get("m.room.member", user_id)
        if own is None or own.content.get("membership") not in ("invite", "knock"):
            return None
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": user_id,
            "type": "m.room.member",
            "state_key": user_id,
            "content": {"membership": "leave", **(extra or {})},
            "depth": _depth(own.pdu) + 1,
            "prev_events": [own.event_id],
            "auth_events": [own.event_id],
            "origin_server_ts": self.events.clock.time_ms(),
        }
        pdu = sign_event(pdu, self.server_name, self.events.signing_key, head.room_version)
        event_id = compute_event_id(pdu, head.room_version)
        log.info(
            "rejected {room} for {user} here only: no server of the room took it", room=room_id, user=user_id
        )
        return await self._store_membership(room_id, head.room_version, pdu, event_id, head)

    async def _handshake_via(
        self, membership: str, user_id: str, room_id: str, server: str, extra: dict[str, Any]
    ) -> _Handshake:
        """make_* and send_* with `server`; nothing is stored here."""
        query: dict[str, Any] | None = {"ver": list(SUPPORTED_VERSIONS)} if membership != "leave" else None
        answer = await self.client.get_json(
            server, f"/_matrix/federation/v1/make_{membership}/{_q(room_id)}/{_q(user_id)}", query
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise RemoteServerError(f"{server} answered make_{membership} without an event")
        room_version = answer.get("room_version", "1" if membership == "leave" else None)
        head = await self.events.heads.get(room_id)
        if head is not None:
            room_version = head.room_version
        if room_version not in SUPPORTED_VERSIONS:
            raise MatrixError(
                f"Room version {room_version} is not supported here", "M_UNSUPPORTED_ROOM_VERSION"
            )
        template = answer["event"]
        content = template.get("content")
        if (
            template.get("room_id") != room_id
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or template.get("type") != "m.room.member"
            or not isinstance(content, dict)
            or content.get("membership") != membership
        ):
            raise RemoteServerError(f"{server} answered make_{membership} with another event")
        content = {**content, **extra}
        pdu = {
            k: template[k]
            for k in ("room_id", "sender", "type", "state_key", "depth", "prev_events", "auth_events")
            if k in template
        }
        pdu["content"] = content
        pdu["origin_server_ts"] = self.events.clock.time_ms()
        pdu = sign_event(pdu, self.server_name, self.events.signing_key, room_version)
        event_id = compute_event_id(pdu, room_version)
        send_version = "v1" if membership == "knock" else "v2"  # send_knock has only v1
        answer = await self.client.put_json(
            server, f"/_matrix/federation/{send_version}/send_{membership}/{_q(room_id)}/{_q(event_id)}", pdu
        )
        if membership == "join":
            if not isinstance(answer, dict):
                raise RemoteServerError(f"{server} answered send_join with something that is not an object")
            signed = answer.get("event")
            if isinstance(signed, dict) and compute_event_id(_pdu_only(signed), room_version) == event_id:
                pdu = _pdu_only(signed)  # with the resident server's countersignature
            # The keys of the state's signers are fetched here, outside the room's lock (and
            # within the attempt's bound): storing the room then finds them held.
            await self._fetch_keys(
                [p for key in ("state", "auth_chain") for p in _list(answer.get(key)) if isinstance(p, dict)]
            )
        return _Handshake(membership, server, room_id, room_version, pdu, event_id, answer)

    async def _store_handshake(self, done: _Handshake) -> StoredEvent:
        """Store what a handshake brought, under the room's lock, onto the room as it is now
        (another handshake may have been stored while this one ran)."""
        room_id, room_version, pdu, event_id = done.room_id, done.room_version, done.pdu, done.event_id
        head = await self.events.heads.get(room_id)
        if done.membership == "knock" and (head is None or head.get("m.room.create") is None):
            answer = done.answer
            stripped = _stripped(answer.get("knock_room_state") if isinstance(answer, dict) else None)
            return await self._store_outlier(
                room_id, room_version, pdu, event_id, head, {"knock_room_state": stripped}
            )
        if done.membership != "join":
            return await self._store_membership(room_id, room_version, pdu, event_id, head)
        suffix = ":" + self.server_name
        if head is not None and any(m.endswith(suffix) for m in head.members("join")):
            return await self._ingest_join(done)
        return await self._store_join(done.server, room_id, room_version, pdu, event_id, done.answer)

    async def _ingest_join(self, done: _Handshake) -> StoredEvent:
        """A join whose handshake ended after another of ours put this server in the room:
        rebuilding the room from its answer would drop what the room got since, so the event
        goes through the PDU checks as the resident server would send it to us."""
        stored = await self.events.store.get_events([done.event_id])
        if done.event_id in stored:
            return stored[done.event_id]  # the resident's transaction brought it first
        if self.ingest_pdu is None:
            raise RemoteServerError("This server cannot take the room's events")
        outcome = await self.ingest_pdu(done.server, done.room_version, done.pdu)
        stored = await self.events.store.get_events([done.event_id])
        if done.event_id not in stored:
            raise RemoteServerError(f"The join through {done.server} was not taken: {outcome.reason}")
        return stored[done.event_id]

    async def _store_membership(
        self, room_id: str, room_version: str, pdu: dict[str, Any], event_id: str, head: RoomHead | None
    ) -> StoredEvent:
        """A leave or knock sent through a resident, chained onto our head of the room."""
        if head is None:
            return await self._store_outlier(room_id, room_version, pdu, event_id, None, {})
        stored = self._chain(head, pdu, event_id)
        if head.get("m.room.create") is None:
            head.extremities = []
            await self.events.persister.persist([PersistItem(stored, room_version, extremity=False)])
        else:
            await self.events.persist(head, [stored])
        return stored

    async def _store_join(
        self,
        server: str,
        room_id: str,
        room_version: str,
        join: dict[str, Any],
        join_id: str,
        answer: dict[str, Any],
    ) -> StoredEvent:
        await self._fetch_keys(
            [p for key in ("state", "auth_chain") for p in _list(answer.get(key)) if isinstance(p, dict)]
        )
        state_pdus, chain_pdus = answer.get("state"), answer.get("auth_chain")
        verified: set[int] = set()
        if self.run_blocking is not None and isinstance(state_pdus, list) and isinstance(chain_pdus, list):
            verified = await verified_signatures(
                room_version, [*chain_pdus, *state_pdus], self.key_ring.cached_key, self.run_blocking, 2
            )
        try:
            state = checked_state(
                room_id, room_version, join, state_pdus, chain_pdus, self.key_ring.cached_key, verified
            )
        except BadJoinState as e:
            raise RemoteServerError(f"{server} answered send_join with a state we cannot use: {e}") from None
        # A room we knew (a past membership, an invite) is rebuilt from the answer too: its
        # state moved on while we were not in it.
        head = RoomHead(room_id, room_version)
        items: list[PersistItem] = []
        is_new = await self.events.store.room_version(room_id) is None
        # Our invite or knock, in the state already, is stored already.
        have = await self.events.store.get_events([p["event_id"] for p in state.values()])
        ordered = sorted(state.values(), key=lambda p: (p["type"] != "m.room.create", p["depth"]))
        for pdu in ordered:
            eid = pdu.pop("event_id")
            if eid in have:
                head.state[(pdu["type"], pdu["state_key"])] = have[eid]
                continue
            stored = StoredEvent(eid, room_id, self.events.persister.allocate_stream_ordering(), pdu)
            head.state[(stored.type, stored.state_key or "")] = stored
            items.append(PersistItem(stored, room_version, is_create=is_new and not items, extremity=False))
        joined = StoredEvent(join_id, room_id, self.events.persister.allocate_stream_ordering(), join)
        head.apply(joined)
        head.extremities = [join_id]
        items.append(PersistItem(joined, room_version))
        self.events.heads.put(head)
        await self.events.persister.persist(items)
        return joined


def _event_id_or_none(pdu: Mapping[str, Any], room_version: str) -> str | None:
    try:
        return compute_event_id(pdu, room_version)
    except Exception:  # a malformed event: check_pdu says what is wrong with it
        return None


def _list(value: Any) -> list[Any]:
    """`value` when another server sent a list there, else nothing (checked_state says why)."""
    return value if isinstance(value, list) else []


def _depth(pdu: Mapping[str, Any]) -> int:
    depth = pdu.get("depth")
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth < 2**53 - 2 else 0


def _stripped(value: Any) -> list[dict[str, Any]]:
    """Stripped state events as another server sent them, the well-formed ones (at most 50)."""
    if not isinstance(value, list):
        return []
    out = []
    for ev in value[:50]:
        if (
            isinstance(ev, dict)
            and isinstance(ev.get("type"), str)
            and isinstance(ev.get("state_key"), str)
            and isinstance(ev.get("content"), dict)
            and isinstance(ev.get("sender"), str)
        ):
            out.append({k: ev[k] for k in ("type", "state_key", "content", "sender")})
    return out


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
