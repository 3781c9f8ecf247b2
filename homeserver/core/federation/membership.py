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

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.keys import KeyRing
from homeserver.core.room_heads import RoomHead
from homeserver.errors import BadJson, Forbidden, MatrixError, NotFound, RemoteServerError
from homeserver.events.auth_chain import MissingEvent
from homeserver.events.auth_rules import AuthError, auth_types_for_event, check_auth
from homeserver.events.hashing import compute_event_id
from homeserver.events.pdu_checks import PduStatus, check_pdu
from homeserver.events.room_versions import room_id_is_create_hash
from homeserver.events.signing import sign_event
from homeserver.storage.events import PersistItem, StoredEvent

if TYPE_CHECKING:
    from homeserver.core.events import EventService

SUPPORTED_VERSIONS = ("10", "11", "12")
# What each handshake makes: the membership of the event, the route names.
MEMBERSHIPS = {"join": "join", "leave": "leave", "knock": "knock"}
STRIPPED_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)
# Fields a PDU carries over federation; anything else (event_id, unsigned) is not ours to keep.
_PDU_DROP = ("event_id", "unsigned")


def domain_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _pdu_only(pdu: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pdu.items() if k not in _PDU_DROP}


class FederatedMembership:
    def __init__(
        self, server_name: str, events: "EventService", key_ring: KeyRing, client: FederationClient
    ) -> None:
        self.server_name = server_name
        self.events = events
        self.key_ring = key_ring
        self.client = client

    # Inbound: a remote user and a room of ours -----------------------------------------------

    async def make(
        self, membership: str, origin: str, room_id: str, user_id: str, versions: list[str] | None
    ) -> dict[str, Any]:
        """The template for GET /make_{join,leave,knock}/{roomId}/{userId}."""
        if domain_of(user_id) != origin:
            raise Forbidden(f"{user_id} is not a user of {origin}")
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
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
        self._authorise(head, template)
        template["auth_events"] = self._auth_event_ids(head, template)
        return {"event": template, "room_version": head.room_version}

    async def send(
        self, membership: str, origin: str, room_id: str, event_id: str, pdu: Any
    ) -> tuple[RoomHead, StoredEvent, list[StoredEvent]]:
        """Check and persist the signed event of PUT /send_{join,leave,knock}; returns the
        head, the stored event and the room's state before it."""
        if not isinstance(pdu, dict):
            raise BadJson("The body must be an event")
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
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
        if domain_of(sender) != origin:
            raise Forbidden(f"The sender {sender} is not a user of {origin}")
        room_version = head.room_version
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
        state_before = list(head.state.values())
        if head.membership(sender) == membership and membership != "knock":
            # A retry of a handshake that already went through: answer as the first time.
            existing = head.get("m.room.member", sender)
            if existing is not None and existing.event_id == event_id:
                return head, existing, state_before
        if membership == "join":
            # The resident server countersigns a join (spec: send_join v2 "the signed event").
            pdu = sign_event(pdu, self.server_name, self.events.signing_key, room_version)
        stored = self._chain(head, pdu, event_id)
        await self.events.persist(head, [stored])
        return head, stored, state_before

    async def answer_send(
        self, membership: str, origin: str, room_id: str, event_id: str, pdu: Any
    ) -> dict[str, Any]:
        """The answer to PUT /v2/send_join, /v2/send_leave or /v1/send_knock."""
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
            "servers_in_room": sorted({domain_of(u) for u in head.members("join")}),
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

    # Outbound: our user and a room on another server ----------------------------------------

    async def remote_membership(
        self,
        membership: str,
        user_id: str,
        room_id: str,
        servers: list[str],
        extra: dict[str, Any] | None = None,
    ) -> StoredEvent:
        """Join, leave or knock on a room through one of `servers` (tried in order)."""
        last: Exception | None = None
        for server in [s for s in dict.fromkeys(servers) if s and s != self.server_name]:
            try:
                return await self._remote_membership_via(membership, user_id, room_id, server, extra or {})
            except RemoteError as e:
                if e.status == 403 or e.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                    raise MatrixError(e.message, e.errcode, status=e.status) from None
                last = e
            except RemoteServerError as e:
                last = e
        if last is None:
            raise NotFound("No server to ask about this room")
        if isinstance(last, RemoteError) and last.status == 404:
            raise NotFound(last.message)
        raise MatrixError(f"No server in the room could be reached: {last}", status=502)

    async def _remote_membership_via(
        self, membership: str, user_id: str, room_id: str, server: str, extra: dict[str, Any]
    ) -> StoredEvent:
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
        if membership != "join":
            return await self._store_membership(room_id, room_version, pdu, event_id, head)
        if not isinstance(answer, dict):
            raise RemoteServerError(f"{server} answered send_join with something that is not an object")
        signed = answer.get("event")
        if isinstance(signed, dict) and compute_event_id(_pdu_only(signed), room_version) == event_id:
            pdu = _pdu_only(signed)  # with the resident server's countersignature
        return await self._store_join(server, room_id, room_version, pdu, event_id, answer)

    async def _store_membership(
        self, room_id: str, room_version: str, pdu: dict[str, Any], event_id: str, head: RoomHead | None
    ) -> StoredEvent:
        """A leave or knock sent through a resident: chained onto our head of the room if we
        have one; else kept as an outlier-like room of its own (the knock waits for an answer)."""
        if head is None:
            head = RoomHead(room_id, room_version)
            self.events.heads.put(head)
            stored = self._chain(head, pdu, event_id)
            head.extremities = []
            await self.events.persister.persist(
                [PersistItem(stored, room_version, is_create=True, extremity=False)]
            )
            return stored
        stored = self._chain(head, pdu, event_id)
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
        state_pdus = answer.get("state")
        chain_pdus = answer.get("auth_chain")
        if not isinstance(state_pdus, list) or not isinstance(chain_pdus, list):
            raise RemoteServerError(f"{server} answered send_join without state and auth_chain")
        by_id: dict[str, dict[str, Any]] = {}
        state_ids: list[str] = []
        for raw in [*chain_pdus, *state_pdus]:
            if not isinstance(raw, dict):
                raise RemoteServerError(f"{server} sent an event that is not an object")
            pdu = _pdu_only(raw)
            try:
                eid = compute_event_id(pdu, room_version)
            except Exception:
                raise RemoteServerError(f"{server} sent a malformed event") from None
            by_id[eid] = pdu
        for raw in state_pdus:
            state_ids.append(compute_event_id(_pdu_only(raw), room_version))
        await self._fetch_keys([*by_id.values(), join])
        checked: dict[str, dict[str, Any]] = {}
        # Check each event against its own auth events, creates first (spec: "the
        # joining server MUST validate the state and auth chain").
        for eid in _auth_order(by_id):
            try:
                outcome = check_pdu(
                    by_id[eid],
                    room_version,
                    keys=self.key_ring.cached_key,
                    events=checked,
                    state_before=None,
                    current_state=None,
                )
            except MissingEvent:
                continue  # an auth event missing from the answer: the event is not used
            if outcome.status in (PduStatus.ACCEPTED,) and outcome.event_id == eid:
                checked[eid] = dict(outcome.event)
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for eid in state_ids:
            good = checked.get(eid)
            if good is None or not isinstance(good.get("state_key"), str):
                continue
            state[(good["type"], good["state_key"])] = {**good, "event_id": eid}
        create = state.get(("m.room.create", ""))
        if create is None:
            raise RemoteServerError(f"{server} sent a room state without a valid create event")
        create_version = create.get("content", {}).get("room_version", "1")
        if create_version != room_version:
            raise RemoteServerError(f"{server} sent a create event of another room version")
        if room_id_is_create_hash(room_version) and "!" + create["event_id"][1:] != room_id:
            raise RemoteServerError(f"{server} sent the create event of another room")
        try:
            check_auth(join, state, room_version)
        except AuthError as e:
            raise Forbidden(f"The room's state does not allow this join: {e}") from None
        head = await self.events.heads.get(room_id)
        if head is not None and head.get("m.room.create") is not None:
            # We knew the room already (a past membership): the join goes on our head.
            stored = self._chain(head, join, join_id)
            await self.events.persist(head, [stored])
            return stored
        head = RoomHead(room_id, room_version)
        items: list[PersistItem] = []
        is_new = await self.events.store.room_version(room_id) is None
        ordered = sorted(state.values(), key=lambda p: (p["type"] != "m.room.create", p["depth"]))
        for pdu in ordered:
            eid = pdu.pop("event_id")
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


def _auth_order(events: dict[str, dict[str, Any]]) -> list[str]:
    """Event IDs ordered so each comes after the auth events it names that are present."""
    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()  # a loop in auth_events is walked once (check_pdu refuses it)
    for start in sorted(events, key=lambda e: events[e].get("depth", 0)):
        stack = [(start, False)]
        while stack:
            eid, expanded = stack.pop()
            if eid in done or eid not in events or (not expanded and eid in visiting):
                continue
            if expanded:
                done.add(eid)
                order.append(eid)
                continue
            visiting.add(eid)
            stack.append((eid, True))
            for a in events[eid].get("auth_events", []):
                if isinstance(a, str) and a not in done:
                    stack.append((a, False))
            room_id = events[eid].get("room_id")
            if isinstance(room_id, str) and room_id.startswith("!") and ":" not in room_id:
                stack.append(("$" + room_id[1:], False))  # v12: the room ID names the create event
    return order


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
