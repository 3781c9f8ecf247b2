"""Several event writers (homeserver/workers/event_positions.py, event_replication.py): two
writers and a reader as HomeServers in one reactor over a MemoryHub, on one fresh PostgreSQL
schema each.

- interleaved sends in rooms of both writers reach a /sync long-poll on every process once
  each, in order, and each process's stream publishes every stored event once, in position
  order; sync tokens never go backwards;
- a reader cut off from the bus while events are written reads them from PostgreSQL when it
  reconnects;
- a writer stopped gracefully hands over: the other writer carries its promise and every
  process goes on; one stopped without a word (as a kill -9 leaves it) holds the stream
  until the other writer fences it (silent for SILENT_S, its lock free). Restarted (a new
  HomeServer on the same database) it writes above every stored position, and everyone
  goes on;
- a writer that was only slow (its lock's session ended, as after a SIGSTOP past the lease)
  and was fenced meanwhile stores nothing more: its next send answers 503, rolled back, and
  it stops; restarted, it writes again.
"""

from __future__ import annotations

import json
from inspect import isawaitable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fast.harness import CS, Client, real_reactor, room_path, until
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from homeserver.config import parse_config
from homeserver.server import HomeServer
from homeserver.workers import event_replication, writer_fence
from homeserver.workers.bus import MemoryHub
from homeserver.workers.rpc import MemoryTransport

WRITERS = ["w1", "w2"]
INSTANCES = ["w1", "w2", "w3"]
FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})


class Cluster:
    def __init__(self, pg_url: str, tmp_path: Path) -> None:
        self.pg_url = pg_url
        self.tmp_path = tmp_path
        self.hub = MemoryHub()
        self.transport = MemoryTransport()  # requests between instances (other streams' writers)
        self.servers: dict[str, HomeServer] = {}
        self.published: dict[str, list[int]] = {}

    def config(self) -> Any:
        raw = {
            "server_name": "workers.test",
            "data_dir": str(self.tmp_path / "data"),
            "database": {"url": self.pg_url},
            "auth": {"password_hashing": "fast"},
            "rate_limits": {"enabled": False},
            "plugins": [],
            "workers": {
                "redis_url": "redis://127.0.0.1:1/0",  # unused: the MemoryHub is the bus
                "secret": "s" * 24,
                "instances": {
                    name: {"internal": f"127.0.0.1:{9200 + i}"} for i, name in enumerate(INSTANCES)
                },
                "event_writers": WRITERS,
            },
        }
        return parse_config(raw, "workers-test.yaml", env={})

    async def start(self, name: str) -> HomeServer:
        self.hub.buses.pop(name, None)  # a restart: the old process's subscriptions go with it
        hs = HomeServer(
            self.config(), real_reactor(), worker=name, bus=self.hub.bus(name), rpc_transport=self.transport
        )
        self.transport.add(hs.rpc)
        await hs.start()
        hs.site()
        seen = self.published.setdefault(name, [])
        hs.stream.add_inline(
            "test_recorder", lambda items: seen.extend(i.event.stream_ordering for i in items)
        )
        self.servers[name] = hs
        return hs

    async def stop(self, name: str) -> None:
        await self.servers.pop(name).stop(None)

    def writer_of(self, room_id: str) -> HomeServer:
        any_hs = next(iter(self.servers.values()))
        return self.servers[any_hs.topology.event_writer_for(room_id)]

    async def bodies_in_order(self, room_id: str) -> list[str]:
        """The bodies of the room's messages in stream order, as stored."""
        rows = await self.servers["w3"].storage.db.query(
            "test_bodies",
            "SELECT json FROM events WHERE room_id = ? AND type = 'm.room.message' ORDER BY stream_ordering",
            room_id,
        )
        return [json.loads(r[0])["content"]["body"] for r in rows]

    async def stored_positions(self) -> list[int]:
        rows = await self.servers["w3"].storage.db.query(
            "test_positions", "SELECT stream_ordering FROM events ORDER BY stream_ordering"
        )
        return [int(r[0]) for r in rows]


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Cluster:
    return Cluster(pg_url, tmp_path)


async def start_all(cluster: Cluster) -> None:
    for name in INSTANCES:
        await cluster.start(name)


async def stop_all(cluster: Cluster) -> None:
    for name in list(cluster.servers):
        await cluster.stop(name)


async def room_on(cluster: Cluster, writer: str, owner: dict[str, str], guest: dict[str, str]) -> str:
    """A public room written by `writer` (created there), `guest` joined."""
    hs = cluster.servers[writer]
    for _ in range(30):  # until its id is one of `writer`'s (half of them are)
        created = await Client(hs).call(
            "POST", "/createRoom", owner["access_token"], {"preset": "public_chat"}
        )
        room_id = str(created["room_id"])
        if hs.topology.event_writer_for(room_id) == writer:
            break
    else:
        raise AssertionError(f"no room of {writer} in 30 tries")
    await Client(cluster.writer_of(room_id)).call(
        "POST", room_path(room_id) + "/join", guest["access_token"], {}
    )
    return room_id


async def two_rooms(cluster: Cluster) -> tuple[dict[str, str], dict[str, str], str, str]:
    """alice and bob (registered on w1), in a room w1 writes (alice's) and one w2 writes (bob's)."""
    w1 = cluster.servers["w1"]
    alice = await Client(w1).register(w1, "alice")
    bob = await Client(w1).register(w1, "bob")
    r1 = await room_on(cluster, "w1", alice, bob)
    r2 = await room_on(cluster, "w2", bob, alice)
    return alice, bob, r1, r2


def send(cluster: Cluster, room_id: str, token: str, body: str) -> Deferred[tuple[int, dict[str, Any]]]:
    return Client(cluster.writer_of(room_id)).start(
        "PUT",
        CS + room_path(room_id) + f"/send/m.room.message/{body}",
        token,
        {"msgtype": "m.text", "body": body},
    )


async def eventually(condition: Any, what: str, seconds: float = 30.0) -> None:
    """Until `condition()` (or what it returns, awaited) holds, for what takes real time
    (the fence waits SILENT_S)."""
    for _ in range(int(seconds * 20)):
        held = condition()
        if isawaitable(held):
            held = await held
        if held:
            return
        await deferLater(real_reactor(), 0.05, lambda: None)
    raise AssertionError(f"not within {seconds:.0f}s: {what}")


class SyncReader:
    """A /sync long-poll loop on one process: the messages of `rooms` in the order it got them."""

    def __init__(self, hs: HomeServer, token: str, rooms: list[str]) -> None:
        self.client = Client(hs)
        self.token = token
        self.rooms = rooms
        self.got: dict[str, list[str]] = {r: [] for r in rooms}
        self.tokens: list[int] = []
        self.since: str | None = None

    async def poll(self, timeout_ms: int) -> None:
        params = {"timeout": str(timeout_ms), "filter": FILTER}
        if self.since is not None:
            params["since"] = self.since
        status, body = await self.client.start("GET", CS + "/sync", self.token, **params)
        assert status == 200, body
        self.since = body["next_batch"]
        self.tokens.append(int(self.since[1:].split("_")[0]))
        joined = body.get("rooms", {}).get("join", {})
        for room_id in self.rooms:
            for ev in joined.get(room_id, {}).get("timeline", {}).get("events", []):
                if ev["type"] == "m.room.message":
                    self.got[room_id].append(ev["content"]["body"])

    async def skip_history(self) -> None:
        """Take a first token; from then on `got` holds only what comes after it."""
        await self.poll(0)
        self.got = {r: [] for r in self.rooms}

    async def until_count(self, count: int, polls: int = 60) -> None:
        for _ in range(polls):
            if all(len(v) >= count for v in self.got.values()):
                return
            await self.poll(2000)
        raise AssertionError(f"sync never got {count} messages per room: {self.got}")


async def assert_in_position_order_once(published: list[int], stored: list[int], after: int) -> None:
    # A sync woken by the notifier may finish inside the publish, before the recorder (the last
    # inline consumer) is called: wait for the recorder.
    await until(lambda: published[-1:] >= stored[-1:], "the recorder saw the last event")
    assert published == sorted(set(published)), "published out of order or twice"
    assert [p for p in published if p > after] == [p for p in stored if p > after]


@pytest_twisted.ensureDeferred
async def test_every_process_syncs_every_writers_events_once_in_order(cluster: Cluster) -> None:
    await start_all(cluster)
    try:
        w1, w2, w3 = (cluster.servers[n] for n in INSTANCES)
        alice, bob, r1, r2 = await two_rooms(cluster)
        rooms = [r1, r2]
        readers = [SyncReader(w3, bob["access_token"], rooms), SyncReader(w1, alice["access_token"], rooms)]
        readers.append(SyncReader(w2, bob["access_token"], rooms))
        for reader in readers:
            await reader.skip_history()
        after = max(hs.stream.position for hs in cluster.servers.values())
        polling = [Deferred.fromCoroutine(r.until_count(30)) for r in readers]

        sent = {r1: [f"a{i}" for i in range(30)], r2: [f"b{i}" for i in range(30)]}
        answers = []
        for i in range(30):
            answers.append(send(cluster, r1, alice["access_token"], sent[r1][i]))
            answers.append(send(cluster, r2, bob["access_token"], sent[r2][i]))
        for status, body in await gatherResults(answers):
            assert status == 200, body
        await gatherResults(polling)

        # Sent together, they were stored in whatever order the requests were handled.
        stored_order = {r: await cluster.bodies_in_order(r) for r in rooms}
        assert {r: sorted(v) for r, v in stored_order.items()} == {r: sorted(v) for r, v in sent.items()}
        for reader in readers:
            assert reader.got == stored_order
            assert reader.tokens == sorted(reader.tokens), "a sync token went back"
        stored = await cluster.stored_positions()
        await until(lambda: all(hs.stream.position >= stored[-1] for hs in (w1, w2, w3)), "streams caught up")
        for name in INSTANCES:
            await assert_in_position_order_once(cluster.published[name], stored, after)
        for name in WRITERS:
            reached = w3.metrics.get_sample_value("homeserver_event_writer_position", {"writer": name})
            assert reached is not None and reached >= stored[-1]
        assert w3.metrics.get_sample_value("homeserver_events_waiting") == 0
        # Both writers' positions: disjoint residues.
        assert {p % 2 for p in stored if p > after} == {0, 1}
        # The reader's head of a room it does not write knows who joined.
        head = w3.room_heads.peek(r1)
        assert head is not None and head.membership(bob["user_id"]) == "join"
    finally:
        await stop_all(cluster)


@pytest_twisted.ensureDeferred
async def test_a_reader_cut_off_from_the_bus_catches_up_from_the_database(cluster: Cluster) -> None:
    await start_all(cluster)
    try:
        w1, w2, w3 = (cluster.servers[n] for n in INSTANCES)
        alice, bob, r1, r2 = await two_rooms(cluster)
        reader = SyncReader(w3, bob["access_token"], [r1, r2])
        await reader.skip_history()
        cut_at = w3.stream.position

        cluster.hub.disconnect("w3")
        sent = {r1: [f"a{i}" for i in range(5)], r2: [f"b{i}" for i in range(5)]}
        for i in range(5):
            for room_id, token in ((r1, alice["access_token"]), (r2, bob["access_token"])):
                status, body = await send(cluster, room_id, token, sent[room_id][i])
                assert status == 200, body
        stored = await cluster.stored_positions()
        await until(lambda: w1.stream.position >= stored[-1] and w2.stream.position >= stored[-1], "writers")
        assert w3.stream.position == cut_at  # nothing reached it
        # The client moves to w3 with a token from w1, ahead of w3: w3 never answers below it.
        on_w1 = SyncReader(w1, bob["access_token"], [r1, r2])
        await on_w1.poll(0)
        ahead = on_w1.tokens[-1]
        assert ahead > cut_at
        on_w1.client = Client(w3)
        await on_w1.poll(0)
        assert on_w1.tokens[-1] == ahead and on_w1.got == {r1: sent[r1], r2: sent[r2]}

        await cluster.hub.reconnect("w3")
        await reader.until_count(5)
        assert reader.got == sent
        # The token from w1 already covers them: nothing comes twice.
        await on_w1.poll(0)
        assert on_w1.tokens[-1] >= ahead and on_w1.got == {r1: sent[r1], r2: sent[r2]}
        await until(lambda: w3.stream.position >= stored[-1], "the reader caught up")
        await assert_in_position_order_once(cluster.published["w3"], stored, cut_at)
    finally:
        await stop_all(cluster)


async def stop_and_restart_w1(cluster: Cluster, *, handover: bool) -> None:
    """w1 stopped (handing over, as on SIGTERM, or not: as a kill -9 leaves it), a message
    sent in w2's room meanwhile, w1 started again and a message sent in its room."""
    alice, bob, r1, r2 = await two_rooms(cluster)
    for i in range(3):
        for room_id, token in ((r1, alice["access_token"]), (r2, bob["access_token"])):
            status, _ = await send(cluster, room_id, token, f"before{i}-{room_id[1:5]}")
            assert status == 200
    stored = await cluster.stored_positions()
    w3 = cluster.servers["w3"]
    await until(lambda: w3.stream.position >= stored[-1], "the reader caught up")

    if not handover:
        replication = cluster.servers["w1"].replication
        assert replication is not None

        async def unannounced() -> None:
            replication.stop()

        replication.retire = unannounced  # type: ignore[method-assign]
    await cluster.stop("w1")
    promised = (await w3.storage.stream_writers.promises())["w1"]
    if not handover:
        # An idle w1 promised up to AHEAD past w2's events (saved first): w2's events up to
        # there go on without it; send until the next one lands above.
        filler = 0
        while filler < promised:
            status, body = await send(cluster, r2, bob["access_token"], f"below-w1s-promise-{filler}")
            assert status == 200, body
            filler = (await w3.storage.events.get_events([body["event_id"]]))[
                body["event_id"]
            ].stream_ordering
    status, body = await send(cluster, r2, bob["access_token"], "while-w1-is-down")
    assert status == 200, body
    waiting = body["event_id"]
    position = (await w3.storage.events.get_events([waiting]))[waiting].stream_ordering
    if handover:
        # w2 carries the stopped w1's promise: the reader goes on without it.
        await until(lambda: w3.stream.position >= position, "the reader went on while w1 is away")
    else:
        assert w3.stream.position <= promised < position  # the stream waits for w1's promise
        # ... until w2 finds it silent with its lock free, and fences it.
        await eventually(lambda: w3.stream.position >= position, "w2 fenced w1 and carries it")
        assert list(await w3.storage.stream_writers.retired()) == ["w1"]

    w1 = await cluster.start("w1")
    status, body = await send(cluster, r1, alice["access_token"], "after-restart")
    assert status == 200, body
    new = (await w1.storage.events.get_events([body["event_id"]]))[body["event_id"]].stream_ordering
    assert new > position and new > stored[-1] and new % 2 == 0
    reader = SyncReader(w3, bob["access_token"], [r1, r2])
    for _ in range(30):
        await reader.poll(2000 if reader.since else 0)
        if reader.got[r1][-1:] == ["after-restart"] and reader.got[r2][-1:] == ["while-w1-is-down"]:
            break
    else:
        raise AssertionError(f"the reader never got the events after the restart: {reader.got}")
    stored = await cluster.stored_positions()
    await until(lambda: w3.stream.position >= stored[-1], "the reader went on")
    await assert_in_position_order_once(cluster.published["w3"], stored, 0)


@pytest_twisted.ensureDeferred
async def test_a_writer_stopped_gracefully_is_carried_and_restarts_above_everything(cluster: Cluster) -> None:
    await start_all(cluster)
    try:
        await stop_and_restart_w1(cluster, handover=True)
        assert await cluster.servers["w3"].storage.stream_writers.retired() == {}
    finally:
        await stop_all(cluster)


@pytest_twisted.ensureDeferred
async def test_the_stream_waits_for_a_writer_that_stopped_unannounced(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few of w2's events pass an idle w1's promise ahead (not 500 of them).
    monkeypatch.setattr(event_replication, "AHEAD", 8)
    await start_all(cluster)
    try:
        await stop_and_restart_w1(cluster, handover=False)
    finally:
        await stop_all(cluster)


@pytest_twisted.ensureDeferred
async def test_the_indexes_are_filled_on_the_background_worker_alone(cluster: Cluster) -> None:
    """Search and user directory consumers run on `workers.background` (here w1, the first
    event writer) only; a search on another process waits for that one's index."""
    await start_all(cluster)
    try:
        w1, w2, w3 = (cluster.servers[n] for n in INSTANCES)
        alice, bob, r1, r2 = await two_rooms(cluster)
        assert [n for n, hs in cluster.servers.items() if hs.search_index._consumer is not None] == ["w1"]
        assert [n for n, hs in cluster.servers.items() if hs.user_directory._consumer is not None] == ["w1"]
        status, body = await send(cluster, r2, bob["access_token"], "ripe-banana")
        assert status == 200, body
        event_id = body["event_id"]
        position = (await w3.storage.events.get_events([event_id]))[event_id].stream_ordering
        await until(lambda: w3.stream.position >= position, "w3's stream has the message")
        query = {"search_categories": {"room_events": {"search_term": "banana"}}}
        found = await Client(w3).call("POST", "/search", alice["access_token"], query)
        results = found["search_categories"]["room_events"]["results"]
        assert [r["result"]["event_id"] for r in results] == [event_id]
        assert ("w1", "search_index.caught_up") in cluster.transport.calls  # waited for w1's index
        # The public rooms of the directory, kept on w1, asked for from w2.
        people = await Client(w2).call(
            "POST", "/user_directory/search", alice["access_token"], {"search_term": "bob"}
        )
        assert [u["user_id"] for u in people["results"]] == [bob["user_id"]]
        assert ("w1", "user_directory.caught_up") in cluster.transport.calls
    finally:
        await stop_all(cluster)


@pytest_twisted.ensureDeferred
async def test_a_search_whose_index_process_fails_to_answer_is_no_500(cluster: Cluster) -> None:
    """The background worker's wait for its index fails (an error there, not a timeout): a
    search on another process answers from what is indexed."""
    await start_all(cluster)
    try:
        w1, w3 = cluster.servers["w1"], cluster.servers["w3"]
        alice = (await two_rooms(cluster))[0]

        async def broken(position: int, timeout_s: float) -> bool:
            raise RuntimeError("the index's wait failed")

        w1.search_index.reached = broken  # type: ignore[method-assign]
        query = {"search_categories": {"room_events": {"search_term": "banana"}}}
        status, body = await Client(w3).start("POST", CS + "/search", alice["access_token"], query)
        assert status == 200, body
        assert ("w1", "search_index.caught_up") in cluster.transport.calls
    finally:
        await stop_all(cluster)


@pytest_twisted.ensureDeferred
async def test_a_slow_writer_fenced_meanwhile_stores_nothing_more_and_stops(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_fence, "SILENT_S", 1.0)
    await start_all(cluster)
    try:
        alice, bob, r1, r2 = await two_rooms(cluster)
        w1, w3 = cluster.servers["w1"], cluster.servers["w3"]
        status, _ = await send(cluster, r1, alice["access_token"], "before")
        assert status == 200
        replication = w1.replication
        assert replication is not None
        fenced: list[bool] = []
        replication.on_fenced = lambda: fenced.append(True)  # the server would exit
        # w1 pauses: no heartbeat, and PostgreSQL ends its lock's session (the lease).
        replication.stop()
        await w3.storage.db.execute(
            "test_end_lease",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
            "event writer w1",
        )

        async def w1_retired() -> bool:
            return "w1" in await w3.storage.stream_writers.retired()

        await eventually(w1_retired, "w2 fenced w1")
        # w1 resumes, and takes a send: refused (retryable), stored nowhere, and w1 stops.
        status, body = await send(cluster, r1, alice["access_token"], "after-fence")
        assert status == 503, body
        await eventually(lambda: fenced == [True], "w1 knew it was fenced")  # its next save
        assert await cluster.bodies_in_order(r1) == ["before"]
        # w2's rooms go on meanwhile.
        status, body = await send(cluster, r2, bob["access_token"], "in-w2s-room")
        assert status == 200, body
        position = (await w3.storage.events.get_events([body["event_id"]]))[body["event_id"]].stream_ordering
        await eventually(lambda: w3.stream.position >= position, "the reader went on without w1")

        await cluster.stop("w1")
        await cluster.start("w1")
        # The client's retry with the same transaction id: stored once.
        status, body = await send(cluster, r1, alice["access_token"], "after-fence")
        assert status == 200, body
        assert await cluster.bodies_in_order(r1) == ["before", "after-fence"]
        assert await w3.storage.stream_writers.retired() == {}
        reader = SyncReader(w3, bob["access_token"], [r1, r2])
        await reader.until_count(1)
        assert reader.got == {r1: ["before", "after-fence"], r2: ["in-w2s-room"]}
        stored = await cluster.stored_positions()
        await eventually(lambda: w3.stream.position >= stored[-1], "the reader caught up")
        await assert_in_position_order_once(cluster.published["w3"], stored, 0)
    finally:
        await stop_all(cluster)
