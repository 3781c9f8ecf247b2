"""The `workers` config section and Topology: who writes which room and stream, who runs which
job, and the config errors that stop a wrong deployment before it starts."""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import pytest
import pytest_twisted

from homeserver.config import ConfigError, parse_config
from homeserver.errors import Forbidden, LimitExceeded, MatrixError, NotFound, ServiceUnavailable
from homeserver.workers.bus import LocalBus, MemoryHub
from homeserver.workers.event_writes import RoomWriters, forwarded
from homeserver.workers.rpc import MemoryTransport, WorkerRpc, error_from_json
from homeserver.workers.topology import Topology, room_shard

PG = "postgresql://hs@127.0.0.1:5432/hs"


def workers(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "redis_url": "redis://127.0.0.1:6379/0",
        "secret": "s" * 32,
        "instances": {
            "w1": {"listen": "127.0.0.1:8101", "internal": "127.0.0.1:9101"},
            "w2": {"listen": "127.0.0.1:8102", "internal": "127.0.0.1:9102"},
            "w3": {"listen": "127.0.0.1:8103", "internal": "[::1]:9103"},
        },
        "event_writers": ["w1", "w2"],
    }
    section.update(overrides)
    return section


def config(database: str = PG, **section: Any) -> Any:
    raw = {"server_name": "t.test", "database": {"url": database}, "workers": workers(**section)}
    return parse_config(raw, "w.yaml", env={})


def test_without_a_workers_section_one_instance_does_everything() -> None:
    topology = Topology.from_config(parse_config({"server_name": "t.test"}, "w.yaml", env={}), None)
    assert (topology.me, topology.multi) == ("main", False)
    assert topology.writes_room("!any:t.test") and topology.writes("receipts")
    assert topology.runs("pusher") and topology.runs("background")
    assert topology.writer_index() == 0


def test_rooms_are_spread_over_the_event_writers_the_same_way_in_every_process() -> None:
    w1, w3 = Topology.from_config(config(), "w1"), Topology.from_config(config(), "w3")
    rooms = [f"!room{i}:t.test" for i in range(400)]
    owners = Counter(w1.event_writer_for(r) for r in rooms)
    assert set(owners) == {"w1", "w2"} and min(owners.values()) > 150
    assert all(w1.event_writer_for(r) == w3.event_writer_for(r) for r in rooms)
    # The documented rule, which HAProxy computes too (deploy/haproxy.cfg: crc32, mod): its
    # crc32 of these two ids was 1164156912 and 2779426785 (HAProxy 2.6, by hand).
    assert room_shard("!room0:t.test", 2**32) == zlib.crc32(b"!room0:t.test")
    ids = ("!abc:example.org", "!Zx_-9:server.name")
    assert [room_shard(r, 2**32) for r in ids] == [1164156912, 2779426785]
    mine = [r for r in rooms if w1.writes_room(r)]
    assert len(mine) == owners["w1"] and not any(w3.writes_room(r) for r in rooms)
    assert (w1.writer_index(), w3.writer_index()) == (0, None)


def test_streams_and_jobs_default_to_the_first_event_writer() -> None:
    topology = Topology.from_config(config(stream_writers={"typing": "w3"}, pusher="w2"), "w3")
    assert topology.writer_of("typing") == "w3" and topology.writes("typing")
    assert topology.writer_of("receipts") == "w1" and not topology.writes("receipts")
    assert not topology.runs("pusher") and not topology.runs("background")
    assert Topology.from_config(config(pusher="w2"), "w2").runs("pusher")
    assert Topology.from_config(config(), "w1").runs("federation_sender")
    assert topology.internal_address("w3") == ("::1", 9103)
    with pytest.raises(KeyError):
        topology.writer_of("events")


def test_one_instance_named_is_still_one_process() -> None:
    section = {"instances": {"solo": {}}, "event_writers": ["solo"]}
    raw = {"server_name": "t.test", "workers": section}
    topology = Topology.from_config(parse_config(raw, "w.yaml", env={}), None)
    assert (topology.me, topology.multi) == ("solo", False)
    assert topology.writes_room("!x:t.test") and topology.runs("pusher")


@pytest.mark.parametrize(
    ("database", "section", "message"),
    [
        ("sqlite:///x.db", {}, "need PostgreSQL"),
        ("", {}, "need PostgreSQL"),
        (PG, {"redis_url": ""}, "workers.redis_url"),
        (PG, {"secret": ""}, "'workers.secret' or 'workers.secret_file'"),
        (PG, {"secret": "short"}, "at least 16 characters"),
        (PG, {"event_writers": []}, "'workers.event_writers' must name at least one"),
        (PG, {"event_writers": ["w1", "w9"]}, "'workers.event_writers[1]': 'w9' is not in"),
        (PG, {"event_writers": ["w1", "w1"]}, "names an instance twice"),
        (PG, {"stream_writers": {"typing": "w9"}}, "'workers.stream_writers.typing': 'w9'"),
        (PG, {"stream_writers": {"events": "w1"}}, "not a stream"),
        (PG, {"pusher": "w9"}, "'workers.pusher': 'w9' is not in"),
        (PG, {"background": "nope"}, "'workers.background'"),
        (PG, {"instances": {"w1": {"internal": "localhost"}, "w2": {"internal": "h:1"}}}, "HOST:PORT"),
        (PG, {"instances": {"w1": {"internal": "h:1"}, "w2": {}}}, "'workers.instances.w2.internal'"),
        (PG, {"instances": {"w 1": {"internal": "h:1"}, "w2": {"internal": "h:2"}}}, "not a valid instance"),
        (PG, {"instances": {"w1": {"nope": 1}}}, "unknown key 'workers.instances.w1.nope'"),
        (PG, {"rpc_timeout": "10ms"}, "rpc_timeout"),
    ],
)
def test_config_errors_name_the_key(database: str, section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config(database, **section)
    assert message in str(e.value)
    assert str(e.value).startswith("w.yaml: ")


def test_writers_without_instances_are_refused() -> None:
    with pytest.raises(ConfigError, match="no 'workers.instances'"):
        parse_config({"server_name": "t.test", "workers": {"event_writers": ["w1"]}}, "w.yaml", env={})


def test_worker_must_name_an_instance() -> None:
    with pytest.raises(ConfigError, match="--worker w9: not one of 'workers.instances' \\(w1, w2, w3\\)"):
        Topology.from_config(config(), "w9")
    with pytest.raises(ConfigError, match="say which this is with --worker NAME"):
        Topology.from_config(config(), None)
    with pytest.raises(ConfigError, match="the config has no 'workers.instances'"):
        Topology.from_config(parse_config({"server_name": "t.test"}, "w.yaml", env={}), "w1")


def test_the_secret_may_come_from_the_environment() -> None:
    raw = {"server_name": "t.test", "database": {"url": PG}, "workers": workers(secret="")}
    loaded = parse_config(raw, "w.yaml", env={"HOMESERVER_WORKERS_SECRET": "e" * 20})
    assert loaded.workers.secret == "e" * 20


# The bus and RPC in one process ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_memory_hub_delivers_to_the_others_in_order_and_loses_while_disconnected() -> None:
    hub = MemoryHub()
    a, b, c = hub.bus("a"), hub.bus("b"), hub.bus("c")
    got: dict[str, list[Any]] = {"a": [], "b": [], "c": []}
    connects: list[str] = []
    for name, bus in (("a", a), ("b", b), ("c", c)):
        bus.subscribe("ch", lambda m, name=name: got[name].append(m["n"]))

        async def connected(name: str = name) -> None:
            connects.append(name)

        bus.on_connected(connected)
        await bus.start()
    assert connects == ["a", "b", "c"]
    for n in range(3):
        a.publish("ch", {"n": n})
    assert got == {"a": [], "b": [0, 1, 2], "c": [0, 1, 2]}
    hub.disconnect("c")
    a.publish("ch", {"n": 3})
    c.publish("ch", {"n": 99})  # a disconnected process cannot publish either
    await hub.reconnect("c")
    a.publish("ch", {"n": 4})
    assert got == {"a": [], "b": [0, 1, 2, 3, 4], "c": [0, 1, 2, 4]}
    assert connects[-1] == "c"


@pytest_twisted.ensureDeferred
async def test_memory_hub_never_nests_deliveries() -> None:
    """A handler that publishes does not run the next handler inside itself: every
    subscriber sees the first message before the one published in reaction to it."""
    hub = MemoryHub()
    a, b, c = hub.bus("a"), hub.bus("b"), hub.bus("c")
    seen: list[str] = []
    b.subscribe("ch", lambda m: (seen.append(f"b:{m['n']}"), m["n"] == 0 and b.publish("ch", {"n": 1})))
    c.subscribe("ch", lambda m: seen.append(f"c:{m['n']}"))
    for bus in (a, b, c):
        await bus.start()
    a.publish("ch", {"n": 0})
    assert seen == ["b:0", "c:0", "c:1"]


@pytest_twisted.ensureDeferred
async def test_local_bus_publishes_nothing_and_reports_connected_once() -> None:
    bus = LocalBus()
    calls: list[int] = []

    async def connected() -> None:
        calls.append(1)

    bus.on_connected(connected)
    bus.subscribe("ch", lambda m: calls.append(2))
    bus.publish("ch", {"x": 1})
    await bus.start()
    assert calls == [1] and bus.connected


@pytest_twisted.ensureDeferred
async def test_rpc_carries_answers_and_matrix_errors_between_instances() -> None:
    transport = MemoryTransport()
    a, b = WorkerRpc("a", b"s", transport), WorkerRpc("b", b"s", transport)
    transport.add(a)
    transport.add(b)

    async def echo(args: dict[str, Any]) -> dict[str, Any]:
        return {"got": args, "on": "b"}

    async def refuse(args: dict[str, Any]) -> dict[str, Any]:
        raise LimitExceeded(1500)

    b.register("test.echo", echo)
    b.register("test.refuse", refuse)
    assert await a.call("b", "test.echo", {"x": [1, "2"]}) == {"got": {"x": [1, "2"]}, "on": "b"}
    with pytest.raises(LimitExceeded) as limited:
        await a.call("b", "test.refuse", {})
    assert (limited.value.status, limited.value.retry_after_ms) == (429, 1500)
    assert limited.value.to_json() == {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "Too many requests",
        "retry_after_ms": 1500,
    }
    with pytest.raises(MatrixError) as unknown:
        await a.call("b", "test.nope", {})
    assert (unknown.value.status, unknown.value.errcode) == (404, "M_UNRECOGNIZED")
    # To itself: the handler runs directly, nothing crosses the transport.
    calls = len(transport.calls)
    assert (await b.call("b", "test.echo", {}))["on"] == "b" and len(transport.calls) == calls
    transport.down.add("b")
    with pytest.raises(ServiceUnavailable):
        await a.call("b", "test.echo", {})


def test_errors_come_back_as_their_own_class() -> None:
    forbidden = error_from_json(403, {"errcode": "M_FORBIDDEN", "error": "no"})
    assert type(forbidden) is Forbidden and forbidden.message == "no"
    assert type(error_from_json(404, {"errcode": "M_NOT_FOUND", "error": ""})) is NotFound
    odd = error_from_json(418, {"errcode": "M_TEAPOT", "error": "short and stout", "spout": 1})
    assert type(odd) is MatrixError and odd.to_json() == {
        "errcode": "M_TEAPOT",
        "error": "short and stout",
        "spout": 1,
    }
    assert odd.status == 418


@pytest_twisted.ensureDeferred
async def test_a_write_is_forwarded_only_when_another_process_writes_the_room() -> None:
    """`forwarded`, the one check of every entry point that writes a room (core/rooms.py,
    events.py, federation/*): None when single or when this process writes the room (the
    caller writes it), else the room's writer's answer."""
    transport = MemoryTransport()
    topologies = {name: Topology.from_config(config(), name) for name in ("w1", "w2")}
    rpcs = {name: WorkerRpc(name, b"s", transport) for name in topologies}
    for name, rpc in rpcs.items():
        transport.add(rpc)
        rpc.register("rooms.join", lambda args, name=name: _answer(name, args))
    rooms = [f"!r{i}:t.test" for i in range(40)]
    w1 = RoomWriters(topologies["w1"], rpcs["w1"])
    for room_id in rooms:
        assert forwarded(None, room_id, "rooms.join", {"room_id": room_id}) is None
        forward = forwarded(w1, room_id, "rooms.join", {"room_id": room_id})
        if topologies["w1"].writes_room(room_id):
            assert forward is None
        else:
            assert forward is not None
            assert await forward == {"by": "w2", "room_id": room_id}
    assert {m for _, m in transport.calls} == {"rooms.join"} and {i for i, _ in transport.calls} == {"w2"}
    assert 0 < len(transport.calls) < len(rooms)


async def _answer(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"by": name, "room_id": args["room_id"]}


def test_every_single_writer_stream_has_one_entry_of_replication_behaviour() -> None:
    """workers/streams.py: what differs per stream is one table row, for each stream the
    config knows; typing alone lives in memory (copied whole, positions per process)."""
    from homeserver.config import STREAMS
    from homeserver.workers.streams import KINDS

    assert set(KINDS) == set(STREAMS)
    assert [n for n, k in KINDS.items() if k.missed is None or not k.shared_positions] == ["typing"]
    assert {n for n, k in KINDS.items() if k.wakes_audience} == {"presence", "device_lists"}
