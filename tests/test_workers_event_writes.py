"""Event writes sharded by room (docs/architecture.md, "Past one process"): three HomeServers
in one reactor over one PostgreSQL database, two of them event writers, joined by an
in-process bus and RPC transport. Whatever process a write arrives at, the room's own writer
builds and commits it; the others never persist an event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted

from homeserver.config import parse_config
from homeserver.core.persist import NotRoomWriter
from homeserver.errors import Forbidden
from homeserver.server import HomeServer
from homeserver.workers.bus import MemoryHub
from homeserver.workers.rpc import MemoryTransport

NAMES = ("w1", "w2", "w3")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Cluster:
    def __init__(self, pg_url: str, tmp_path: Path) -> None:
        self.pg_url = pg_url
        self.hub = MemoryHub()
        self.transport = MemoryTransport()
        self.raw: dict[str, Any] = {
            "server_name": "w.test",
            # One data dir: the instances of one server share its signing key and token secret.
            "data_dir": str(tmp_path / "data"),
            "database": {"url": pg_url},
            "auth": {"password_hashing": "fast"},
            "rate_limits": {"enabled": False},
            "encryption": {"enabled_by_default_for_room_type": "off"},
            "plugins": [],
            "workers": {
                "redis_url": "redis://127.0.0.1:6379/0",  # unused: the bus is the MemoryHub
                "secret": "a-secret-for-the-tests",
                "instances": {n: {"internal": f"127.0.0.1:{9100 + i}"} for i, n in enumerate(NAMES)},
                "event_writers": ["w1", "w2"],
                "drain_delay": "0s",  # no balancer to tell
            },
        }
        self.servers: dict[str, HomeServer] = {}
        self.commits: dict[str, list[int]] = {n: [] for n in NAMES}

    async def start(self) -> None:
        config = parse_config(self.raw, "cluster.yaml", env={})
        for name in NAMES:
            hs = HomeServer(
                config, _reactor(), worker=name, bus=self.hub.bus(name), rpc_transport=self.transport
            )
            self.transport.add(hs.rpc)
            hs.persister.on_commit = self.commits[name].append
            await hs.start()
            self.servers[name] = hs

    async def stop(self) -> None:
        for hs in self.servers.values():
            await hs.stop(None)

    def writer_of(self, room_id: str) -> str:
        return self.servers["w3"].topology.event_writer_for(room_id)

    def stored(self, event_id: str) -> list[tuple[str, int]]:
        """(room_id, stream_ordering) of every row of the event: the database is the judge."""
        conn = psycopg2.connect(self.pg_url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT room_id, stream_ordering FROM events WHERE event_id = %s", (event_id,))
                return list(cur.fetchall())
        finally:
            conn.close()

    def persisted_by(self, event_id: str) -> str:
        """The writer whose position the event has: writer k of n writes those = k (mod n)."""
        ((_, position),) = self.stored(event_id)
        return ("w1", "w2")[position % 2]


async def state_of(hs: HomeServer, room_id: str, event_type: str, state_key: str) -> Any:
    """The room's current state event of that key, as the database holds it."""
    snapshot = await hs.storage.events.load_room(room_id)
    assert snapshot is not None
    return snapshot.state.get((event_type, state_key))


@pytest_twisted.async_yield_fixture
async def cluster(pg_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(pg_url, tmp_path)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_create_room_lands_on_a_writer_that_owns_the_new_room(cluster: Cluster) -> None:
    c = cluster
    alice = await c.servers["w1"].accounts.register("alice", "correct horse battery")
    for via in NAMES:
        for version in ("11", "12"):
            room_id = await c.servers[via].rooms.create_room(alice, {"room_version": version})
            owner = c.writer_of(room_id)
            # Created on an event writer: its own; on w3 (no events): the creator's writer.
            assert owner == via if via != "w3" else owner in ("w1", "w2")
            create = await state_of(c.servers["w3"], room_id, "m.room.create", "")
            assert create is not None and c.persisted_by(create.event_id) == owner
    assert c.commits["w3"] == []


@pytest_twisted.ensureDeferred
async def test_sends_state_joins_and_profile_changes_land_on_the_rooms_writer(cluster: Cluster) -> None:
    c = cluster
    w1, w2, w3 = (c.servers[n] for n in NAMES)
    alice = await w1.accounts.register("alice", "correct horse battery")
    bob = await w1.accounts.register("bob", "correct horse battery")
    rooms = {}
    for via in ("w1", "w2"):
        # Each writer creates rooms it owns: one room per writer.
        rooms[via] = await c.servers[via].rooms.create_room(alice, {"preset": "public_chat"})
    assert {c.writer_of(r) for r in rooms.values()} == {"w1", "w2"}
    for owner, room_id in rooms.items():
        other = "w2" if owner == "w1" else "w1"
        for via in (other, "w3"):
            sent = await c.servers[via].events.send(alice, room_id, "m.room.message", {"body": f"via {via}"})
            assert c.persisted_by(sent.event_id) == owner, (owner, via)
            topic = await c.servers[via].events.send(alice, room_id, "m.room.topic", {"topic": via}, "")
            assert c.persisted_by(topic.event_id) == owner
        assert await c.servers[other].rooms.join(bob, room_id) == room_id
        member = await state_of(c.servers[owner], room_id, "m.room.member", bob)
        assert member is not None and member.content["membership"] == "join"
        assert c.persisted_by(member.event_id) == owner
    # A profile change fanned out from a process that writes neither room: each room's
    # member event comes from its own writer.
    await w3.profiles.set_field(bob, bob, "displayname", "Bobby")
    for owner, room_id in rooms.items():
        member = await state_of(w3, room_id, "m.room.member", bob)
        assert member is not None and member.content.get("displayname") == "Bobby"
        assert c.persisted_by(member.event_id) == owner
    # Leaving through the other writer.
    await c.servers["w2"].rooms.leave(bob, rooms["w1"])
    member = await state_of(w3, rooms["w1"], "m.room.member", bob)
    assert member is not None and member.content["membership"] == "leave"
    assert c.persisted_by(member.event_id) == "w1"
    # Errors come back as themselves: the writer's auth rules refuse a stranger's message.
    carol = await w1.accounts.register("carol", "correct horse battery")
    with pytest.raises(Forbidden):
        await w3.events.send(carol, rooms["w2"], "m.room.message", {"body": "not a member"})
    assert c.commits["w3"] == []
    assert {method for _, method in c.transport.calls} >= {
        "events.send",
        "rooms.join",
        "rooms.leave",
        "rooms.member_profiles",
    }
    # An event built here for a room written elsewhere (a path that forgot to forward) is
    # refused by the persister, never written.
    head = await w3.room_heads.get(rooms["w1"])
    assert head is not None
    stray = w3.events.build(head, alice, "m.room.message", {"body": "stray"})
    with pytest.raises(NotRoomWriter):
        await w3.events.persist(head, [stray])
    assert c.stored(stray.event_id) == []


@pytest_twisted.ensureDeferred
async def test_a_retried_transaction_through_another_process_returns_the_same_event_once(
    cluster: Cluster,
) -> None:
    c = cluster
    alice = await c.servers["w1"].accounts.register("alice", "correct horse battery")
    room_id = await c.servers["w1"].rooms.create_room(alice, {})
    txn = ("DEVICE", "txn-1")
    first = await c.servers["w3"].events.send(alice, room_id, "m.room.message", {"body": "once"}, txn=txn)
    again = await c.servers["w2"].events.send(alice, room_id, "m.room.message", {"body": "once"}, txn=txn)
    on_writer = await c.servers["w1"].events.send(alice, room_id, "m.room.message", {"body": "once"}, txn=txn)
    assert first.event_id == again.event_id == on_writer.event_id
    assert c.stored(first.event_id) == [(room_id, first.stream_ordering)]


@pytest_twisted.ensureDeferred
async def test_a_writer_that_cannot_be_reached_is_a_retryable_503(cluster: Cluster) -> None:
    c = cluster
    alice = await c.servers["w1"].accounts.register("alice", "correct horse battery")
    room_id = await c.servers["w1"].rooms.create_room(alice, {})
    c.transport.down.add("w1")
    with pytest.raises(Exception) as unavailable:
        await c.servers["w3"].events.send(alice, room_id, "m.room.message", {"body": "later"}, txn=("D", "t"))
    assert getattr(unavailable.value, "status", None) == 503
    c.transport.down.discard("w1")
    sent = await c.servers["w3"].events.send(
        alice, room_id, "m.room.message", {"body": "later"}, txn=("D", "t")
    )
    assert c.persisted_by(sent.event_id) == "w1"


THEM = "them.example"


@pytest_twisted.ensureDeferred
async def test_an_inbound_transaction_at_another_process_is_stored_by_the_rooms_writer(
    cluster: Cluster,
) -> None:
    from signedjson.key import generate_signing_key

    from homeserver.events.hashing import add_content_hash, compute_event_id
    from homeserver.events.signing import sign_event
    from homeserver.signing_key import verify_key_base64
    from homeserver.storage.server_keys import StoredKey

    c = cluster
    w1, w3 = c.servers["w1"], c.servers["w3"]
    key = generate_signing_key("t1")
    far = w1.clock.time_ms() + 86_400_000
    await w1.federation.key_ring._remember(
        [StoredKey(THEM, "ed25519:t1", verify_key_base64(key), far, None, "{}")]
    )
    alice = await w1.accounts.register("alice", "correct horse battery")
    room_id = await w1.rooms.create_room(alice, {"preset": "public_chat", "room_version": "10"})
    head = await w1.room_heads.get(room_id)
    assert head is not None and c.writer_of(room_id) == "w1"
    ids = {k: ev.event_id for k, ev in head.state.items()}
    user = f"@x:{THEM}"

    def pdu(
        kind: str, content: dict[str, Any], prev: list[str], auth: list[str], depth: int, **extra: Any
    ) -> Any:
        body = {
            "room_id": room_id,
            "sender": user,
            "type": kind,
            "content": content,
            "depth": depth,
            "origin_server_ts": w1.clock.time_ms(),
            "prev_events": prev,
            "auth_events": auth,
            **extra,
        }
        signed = sign_event(add_content_hash(body), THEM, key, "10")
        return compute_event_id(signed, "10"), signed

    join_auth = [ids[("m.room.create", "")], ids[("m.room.join_rules", "")], ids[("m.room.power_levels", "")]]
    join_id, join = pdu(
        "m.room.member",
        {"membership": "join"},
        list(head.extremities),
        join_auth,
        head.depth + 1,
        state_key=user,
    )
    auth = [ids[("m.room.create", "")], ids[("m.room.power_levels", "")], join_id]
    message_id, message = pdu(
        "m.room.message", {"msgtype": "m.text", "body": "hi"}, [join_id], auth, head.depth + 2
    )
    body = {"origin": THEM, "origin_server_ts": 0, "pdus": [join, message], "edus": []}
    answer = await w3.federation_transactions.receive(THEM, "txn-1", body)
    assert answer == {"pdus": {join_id: {}, message_id: {}}}
    assert c.persisted_by(join_id) == "w1" and c.persisted_by(message_id) == "w1"
    member = await state_of(w3, room_id, "m.room.member", user)
    assert member is not None and member.event_id == join_id
    assert ("w1", "federation.pdu") in c.transport.calls
    # A second remote user joins by make_join / send_join arriving at w3: the template comes
    # from the writer's head (it names the message as prev_event) and the writer stores it.
    other = f"@y:{THEM}"
    made = await w3.federation.membership.make("join", THEM, room_id, other, ["10"])
    template = made["event"]
    assert template["prev_events"] == [message_id]
    signed = sign_event(add_content_hash(template), THEM, key, "10")
    join2_id = compute_event_id(signed, "10")
    answer = await w3.federation.membership.answer_send("join", THEM, room_id, join2_id, signed)
    assert answer["event"]["state_key"] == other  # the join, countersigned by the writer
    assert "w.test" in answer["event"]["signatures"]
    assert {ev["sender"] for ev in answer["state"] if ev["type"] == "m.room.member"} == {alice, user}
    assert c.persisted_by(join2_id) == "w1"
    assert c.commits["w3"] == []
