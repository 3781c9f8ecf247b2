"""homeserver/workers/event_replication.py on one reader, its writers played by the test: what
the reader's stream publishes from the writers' messages on a MemoryHub, and what it reads
from the database (a store the test fills) when messages were lost.

- events of two writers are published in position order, only up to the lowest promise;
- a message whose `since` is above what the reader has of that writer makes it read the
  missing range of that writer's positions; messages arriving meanwhile wait, and one that
  asks for more while a page is being read makes it read that too;
- after a bus reconnect the reader reads up to the promises saved in the database;
- an item it has already (read from the database) is not published twice;
- an event whose room head cannot take it is published anyway, and the head dropped;
- behind a writer that holds the stream, at most MAX_WAITING events wait in memory;
- a process starts its stream no lower than its durable consumers have handled;
- (a writer played by EventReplication itself, its persister faked) a writer stopped
  gracefully retires and the other writer carries its promise, so readers go on; back, it
  starts above everything carried for it, and is carried no more;
- a writer's promise passes a failed request's positions only once saved: killed right
  after, it restarts above everything it announced.
- a writer retiring while its promise ahead is being saved is carried past that save, and,
  back, writes above it;
- (fencing, ADR 0008) a writer silent on the bus for SILENT_S whose lock is free is fenced by
  another and carried, not a moment before; one silent but holding its lock (a Redis outage)
  or with its lock free but heard (a PostgreSQL restart) is not; a fenced writer finds out at
  its next save (or on taking its lock again) and stops announcing.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from harness import TestClock
from twisted.internet.defer import Deferred

from homeserver.core.event_stream import EventStream
from homeserver.core.room_heads import RoomHeads
from homeserver.storage.events import PersistItem, StoredEvent
from homeserver.storage.stream_writers import WriterFenced
from homeserver.workers import event_replication, writer_fence
from homeserver.workers.bus import MemoryHub
from homeserver.workers.event_positions import WriterPositions
from homeserver.workers.event_replication import CHANNEL, EventReplication, decode_item, encode_item

WRITERS = ["w1", "w2"]


def item(position: int) -> PersistItem:
    pdu = {"type": "m.room.message", "sender": "@a:x", "content": {"body": str(position)}, "depth": 1}
    return PersistItem(StoredEvent(f"$e{position}", "!r:x", position, pdu), "10")


class Events:
    """Committed events by position; each read can be held by the test until it lets it go."""

    def __init__(self) -> None:
        self.stored: dict[int, PersistItem] = {}
        self.newest = 0
        self.reads: list[tuple[int, int, int]] = []
        self.hold: Deferred[None] | None = None

    async def max_stream_ordering(self) -> int:
        return self.newest

    async def committed_events_of_writer(
        self, after: int, upto: int, limit: int, writers: int, index: int
    ) -> list[PersistItem]:
        self.reads.append((after, upto, index))
        if self.hold is not None:
            await self.hold
        found = [i for p, i in sorted(self.stored.items()) if after < p <= upto and p % writers == index]
        return found[:limit]

    async def load_room(self, room_id: str) -> None:
        return None


class Promises:
    """stream_writers as storage/stream_writers.py keeps it; `hold` delays each save."""

    def __init__(self) -> None:
        self.saved: dict[str, int] = {}
        self.retired_at: dict[str, int] = {}
        self.hold: Deferred[None] | None = None
        # The writers whose lock a process holds, and those retired by another (sql/099).
        self.locked: set[str] = set()
        self.fenced: set[str] = set()

    async def promises(self) -> dict[str, int]:
        return dict(self.saved)

    async def save(self, name: str, position: int) -> None:
        if self.hold is not None:
            await self.hold
        if name in self.fenced:
            raise WriterFenced(name)
        self.saved[name] = max(self.saved.get(name, position), position)

    async def retired(self) -> dict[str, int]:
        return dict(self.retired_at)

    async def retire(self, name: str, position: int) -> None:
        self.saved[name] = max(self.saved.get(name, position), position)
        self.retired_at[name] = position

    async def carry(self, position: int) -> list[tuple[str, int, int]]:
        for name in self.retired_at:
            self.saved[name] = max(self.saved[name], position)
        return [(name, at, self.saved[name]) for name, at in self.retired_at.items()]

    async def rejoin(self, name: str) -> int:
        self.retired_at.pop(name, None)
        self.fenced.discard(name)
        return 0

    async def fence(self, name: str) -> int | None:
        if name in self.locked or name not in self.saved:
            return None
        if name not in self.retired_at:
            self.retired_at[name] = self.saved[name]
            self.fenced.add(name)
        return self.retired_at[name]


class Consumers:
    def __init__(self) -> None:
        self.saved: dict[str, tuple[int, int]] = {}

    async def all(self) -> dict[str, tuple[int, int]]:
        return dict(self.saved)


class Reader:
    def __init__(self) -> None:
        self.hub = MemoryHub()
        self.events = Events()
        self.promises = Promises()
        self.consumers = Consumers()
        self.clock = TestClock()
        self.stream = EventStream(self.events, None, self.clock, self.clock.time_ms)  # type: ignore[arg-type]
        self.published: list[int] = []
        self.stream.add_inline(
            "record", lambda items: self.published.extend(i.event.stream_ordering for i in items)
        )
        self.replication = EventReplication(
            me="w3",
            writers=WRITERS,
            bus=self.hub.bus("w3"),
            stream=self.stream,
            events=self.events,  # type: ignore[arg-type]
            promises=self.promises,  # type: ignore[arg-type]
            heads=RoomHeads(self.events),  # type: ignore[arg-type]
            writes_room=lambda room_id: True,  # heads are not under test here
            clock=self.clock,
            consumers=self.consumers,  # type: ignore[arg-type]
        )
        self.writers = {w: self.hub.bus(w) for w in WRITERS}
        self.since = {w: 0 for w in WRITERS}
        self.seq = 0

    async def start(self) -> None:
        self.stream.start(await self.replication.start())
        for bus in (*self.writers.values(), self.hub.bus("w3")):
            await bus.start()

    def send(self, writer: str, promise: int, *positions: int, since: int | None = None) -> None:
        """`writer` commits events at `positions` and announces `promise` (they are stored too)."""
        for p in positions:
            self.events.stored[p] = item(p)
        self.seq += 1
        message = {
            "writer": writer,
            "seq": self.seq,
            "since": self.since[writer] if since is None else since,
            "promise": promise,
            "items": [encode_item(item(p)) for p in positions],
        }
        self.since[writer] = promise
        self.writers[writer].publish(CHANNEL, message)


@pytest_twisted.ensureDeferred
async def test_events_of_both_writers_are_published_in_order_up_to_the_lowest_promise() -> None:
    r = Reader()
    await r.start()
    r.send("w1", 5, 2, 4)
    assert r.published == [] and r.stream.position == 0  # w2 promised nothing yet
    r.send("w2", 3, 1, 3)
    assert r.published == [1, 2, 3] and r.stream.position == 3
    r.send("w2", 7, 5, 7)
    assert r.published == [1, 2, 3, 4, 5] and r.stream.position == 5
    r.send("w1", 9)  # an idle writer moved above the other's events
    assert r.published == [1, 2, 3, 4, 5, 7] and r.stream.position == 7
    assert r.events.reads == []  # nothing lost, nothing read


@pytest_twisted.ensureDeferred
async def test_a_lost_message_is_read_from_the_database_and_later_ones_wait_for_it() -> None:
    r = Reader()
    await r.start()
    r.send("w2", 101)
    r.hub.disconnect("w3")
    r.send("w1", 5, 2, 4)  # lost
    await r.hub.reconnect("w3")  # the saved promises are not there yet: nothing to read
    r.events.hold = Deferred()
    r.send("w1", 9, 6, 8)  # since 5 > 0: a gap
    assert r.events.reads == [(0, 5, 0)]
    r.send("w1", 13, 10, 12)  # waits behind the gap
    r.events.hold.callback(None)
    r.events.hold = None
    assert r.published == [2, 4, 6, 8, 10, 12]
    assert r.stream.position == 13


@pytest_twisted.ensureDeferred
async def test_a_range_asked_for_while_a_page_is_read_is_read_too() -> None:
    r = Reader()
    await r.start()
    r.send("w2", 101)
    r.hub.disconnect("w3")
    r.send("w1", 5, 2, 4)  # lost
    await r.hub.reconnect("w3")
    r.events.hold = Deferred()
    r.send("w1", 9, 6, 8)  # since 5: (0, 5] is read
    r.hub.disconnect("w3")
    r.send("w1", 13, 10, 12)  # lost as well
    r.promises.saved = {"w1": 13, "w2": 101}
    await r.hub.reconnect("w3")  # asks for up to 13 while (0, 5] is being read
    r.events.hold.callback(None)
    r.events.hold = None
    assert r.published == [2, 4, 6, 8, 10, 12]
    assert [(a, u) for a, u, _ in r.events.reads] == [(0, 5), (5, 13)]


@pytest_twisted.ensureDeferred
async def test_after_a_reconnect_the_saved_promises_say_what_to_read() -> None:
    r = Reader()
    await r.start()
    r.send("w1", 1)
    r.send("w2", 2)
    r.hub.disconnect("w3")
    r.send("w1", 7, 3, 5, 7)
    r.send("w2", 9, 4, 6)
    r.promises.saved = {"w1": 7, "w2": 9}
    await r.hub.reconnect("w3")
    assert r.published == [3, 4, 5, 6, 7]
    r.send("w2", 11, 10)  # continues from what was read: nothing twice
    r.send("w1", 11)
    assert r.published == [3, 4, 5, 6, 7, 10]


@pytest_twisted.ensureDeferred
async def test_a_reader_starts_at_the_lowest_saved_promise_and_reads_the_rest() -> None:
    r = Reader()
    for p in (1, 2, 3, 4, 5, 6):
        r.events.stored[p] = item(p)
    r.events.newest = 6
    r.promises.saved = {"w1": 6, "w2": 3}  # w2 may still commit 5 (its events above 3 are not sure)
    await r.start()
    assert r.stream.position == 3
    r.send("w2", 7, 5, since=3)
    assert r.published == [4, 5, 6]
    assert r.stream.position == 6


@pytest_twisted.ensureDeferred
async def test_a_reader_starts_no_lower_than_a_durable_consumer_has_handled() -> None:
    """Idle writers' promises moved past their saved ones before the restart; the consumer
    saw events up to 6, so the stream starts there and hands it nothing twice."""
    r = Reader()
    for p in (1, 2, 3, 4, 5, 6, 7):
        r.events.stored[p] = item(p)
    r.events.newest = 7
    r.promises.saved = {"w1": 4, "w2": 3}
    r.consumers.saved = {"pusher": (6, 6), "search_index": (2, 2)}
    await r.start()
    assert r.stream.position == 6
    r.send("w2", 9, 7, since=7)
    r.send("w1", 10, since=10)
    assert r.published == [7]


def test_items_travel_with_what_the_inline_consumers_need() -> None:
    original = item(9)
    original.txn = ("@a:x", "DEV", "t1")
    original.event.unsigned_extra = {"replaces_state": "$x"}
    raw: Any = encode_item(original)
    back = decode_item(raw)
    assert back.event == original.event and back.txn == original.txn and back.room_version == "10"
    assert back.current_state is None
    original.current_state = {("m.room.name", ""): "$n"}
    assert decode_item(encode_item(original)).current_state == {}


@pytest_twisted.ensureDeferred
async def test_behind_a_writer_holding_the_stream_few_events_wait_in_memory(monkeypatch: Any) -> None:
    monkeypatch.setattr(event_replication, "MAX_WAITING", 3)
    r = Reader()
    await r.start()
    r.send("w2", 3, 1, 3)
    r.send("w2", 7, 5, 7)
    r.send("w2", 11, 9, 11)  # four wait behind w1 already: dropped, for now
    assert r.published == []
    r.send("w1", 12, 2, 4, 6, 8, 10, 12)  # the writer holding the stream is always taken
    assert r.published == [1, 2, 3, 4, 5, 6, 7]
    r.send("w2", 11, since=11)  # its heartbeat shows what was dropped
    assert r.published == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert r.events.reads == [(7, 11, 1)]


# A writer: EventReplication with a persister, the persister faked ---------------------------


class _BrokenHead:
    def apply_committed(self, ev: StoredEvent) -> None:
        raise RuntimeError("a head that cannot take the event")


@pytest_twisted.ensureDeferred
async def test_events_whose_room_head_fails_are_published_and_the_head_dropped() -> None:
    """The events are off the waiting queue once the head is brought up: an error there must
    not keep them from this process's stream (its syncs would never see them)."""
    r = Reader()
    heads = r.replication.heads
    r.replication.writes_room = lambda room_id: False  # "!r:x" is written elsewhere
    heads._heads["!r:x"] = _BrokenHead()  # type: ignore[assignment]
    await r.start()
    r.send("w1", 5, 2, 4)
    r.send("w2", 3, 1, 3)
    assert r.published == [1, 2, 3] and r.stream.position == 3
    assert heads.peek("!r:x") is None  # loaded again from the database when next needed
    r.send("w2", 7, 5)
    assert r.published == [1, 2, 3, 4, 5] and r.stream.position == 5


class FakePersister:
    """What EventReplication uses of core/persist.py: the writer's positions, its commits
    (saving the promise with them) and its failures, driven by the test."""

    def __init__(self, name: str, index: int) -> None:
        self.positions = WriterPositions(name, index, len(WRITERS))
        self.saved_promise = 0
        self.save_promise = False
        self.on_failed: Any = None
        self.publish: Any = None
        self.closed = False

    async def start(self, start_after: int) -> None:
        p = self.positions
        self.positions = WriterPositions(p.name, p.index, p.count, start_after)

    def publish_to(self, publish: Any) -> None:
        self.publish = publish

    async def close(self) -> None:
        self.closed = True

    def commit(self, c: Reader, count: int = 1) -> list[int]:
        """`count` events committed (stored, their promise saved with them) and published."""
        events = c.events
        positions = [self.positions.allocate() for _ in range(count)]
        self.positions.queued(positions[0])
        promise = self.positions.promise_after(positions[-1])
        self.saved_promise = max(self.saved_promise, promise)
        c.promises.saved[self.positions.name] = max(c.promises.saved[self.positions.name], promise)
        for p in positions:
            events.stored[p] = item(p)
        events.newest = max(events.newest, positions[-1])
        self.positions.settled(positions[0])
        self.publish(positions[-1], [item(p) for p in positions])
        return positions

    def fail(self) -> int:
        """A request allocated a position and failed: nothing stored."""
        position = self.positions.allocate()
        self.positions.queued(position)
        self.positions.settled(position)
        self.on_failed(position)
        return position


class FakeLock:
    """storage/writer_lock.py's WriterLock over the Promises fake."""

    def __init__(self, promises: Promises, name: str) -> None:
        self.promises = promises
        self.name = name

    async def hold(self) -> None:
        self.promises.locked.add(self.name)

    async def renew(self) -> bool:
        taken = self.name in self.promises.locked
        self.promises.locked.add(self.name)
        return not taken and self.name in self.promises.fenced

    def close(self) -> None:
        self.promises.locked.discard(self.name)


class Writers(Reader):
    """The Reader (w3), plus w1 and w2 each an EventReplication with a FakePersister."""

    def __init__(self) -> None:
        super().__init__()
        self.hub.buses.pop("w1", None)
        self.hub.buses.pop("w2", None)
        self.replicas: dict[str, EventReplication] = {}
        self.persisters: dict[str, FakePersister] = {}
        self.announced: dict[str, list[int]] = {w: [] for w in WRITERS}
        self.carried: list[tuple[str, int]] = []
        self.fenced: list[str] = []  # the writers told they were fenced (the server exits)
        listener = self.hub.bus("listener")
        listener.subscribe(CHANNEL, self._record)

    def _record(self, message: dict[str, Any]) -> None:
        if "custodian" in message:
            self.carried.append((message["writer"], int(message["promise"])))
        else:
            self.announced[message["writer"]].append(int(message["promise"]))

    async def start_writer(self, name: str) -> None:
        self.hub.buses.pop(name, None)  # a restart: the old process's subscriptions go with it
        persister = FakePersister(name, WRITERS.index(name))
        replica = EventReplication(
            me=name,
            writers=WRITERS,
            bus=self.hub.bus(name),
            stream=EventStream(self.events, None, self.clock, self.clock.time_ms),  # type: ignore[arg-type]
            events=self.events,  # type: ignore[arg-type]
            promises=self.promises,  # type: ignore[arg-type]
            heads=RoomHeads(self.events),  # type: ignore[arg-type]
            writes_room=lambda room_id: True,
            clock=self.clock,
            persister=persister,  # type: ignore[arg-type]
            lock=FakeLock(self.promises, name),  # type: ignore[arg-type]
        )
        replica.on_fenced = lambda: self.fenced.append(name)
        replica.stream.start(await replica.start())
        await self.hub.bus(name).start()
        replica.start_heartbeat()
        self.replicas[name], self.persisters[name] = replica, persister

    async def start_all(self) -> None:
        await self.hub.bus("listener").start()
        for name in WRITERS:
            await self.start_writer(name)
        await self.start()


@pytest_twisted.ensureDeferred
async def test_a_retired_writer_is_carried_and_returns_above_all_carried_for_it() -> None:
    c = Writers()
    await c.start_all()
    w1, w2 = c.persisters["w1"], c.persisters["w2"]
    before = w2.commit(c)
    await c.replicas["w2"].retire()
    assert w2.closed and c.promises.retired_at == {"w2": c.announced["w2"][-1]}

    sent = w1.commit(c) + w1.commit(c, 2)
    # w3 publishes w1's events at once, the stopped w2 carried by w1 (saved, then announced).
    assert [p for p in c.published if p > before[-1]] == sent
    carried = c.promises.saved["w2"]
    assert carried >= sent[-1] and c.replication.position >= sent[-1]
    assert c.carried and c.carried[-1] == ("w2", carried)

    await c.start_writer("w2")  # back
    assert c.promises.retired_at == {}
    carried_messages = len(c.carried)
    again = c.persisters["w2"].commit(c)
    assert again[0] > carried, "w2 wrote below what was published while it was away"
    more = w1.commit(c)
    c.clock.advance(event_replication.HEARTBEAT_S)  # every writer's promise is repeated
    assert c.published == sorted(set(c.published))
    assert set(sent + again + more) <= set(c.published)
    assert len(c.carried) == carried_messages  # w2 announces its own promise again


@pytest_twisted.ensureDeferred
async def test_without_a_retirement_the_stream_waits_for_the_stopped_writer() -> None:
    """As after a kill -9: nothing carries w2, so its last promise holds every stream."""
    c = Writers()
    await c.start_all()
    c.replicas["w2"].stop()
    c.hub.disconnect("w2")
    sent = c.persisters["w1"].commit(c, 3)
    c.clock.advance(event_replication.HEARTBEAT_S)
    held = max(c.announced["w2"])
    assert c.replication.position == held < sent[-1]
    assert [p for p in sent if p in c.published] == [p for p in sent if p <= held]


@pytest_twisted.ensureDeferred
async def test_a_failed_request_is_announced_past_only_once_saved() -> None:
    c = Writers()
    await c.start_all()
    w1 = c.persisters["w1"]
    w1.commit(c)
    c.promises.hold = Deferred()
    failed = w1.fail()
    c.clock.advance(event_replication.HEARTBEAT_S)
    # Not saved yet: no announcement of w1 passes the failed position.
    assert max(c.announced["w1"]) < failed
    c.promises.hold.callback(None)
    c.promises.hold = None
    assert max(c.announced["w1"]) >= failed and c.promises.saved["w1"] >= failed

    # Killed now, and started again on the same database: above everything it announced.
    announced = max(c.announced["w1"])
    c.replicas["w1"].stop()
    c.hub.disconnect("w1")
    await c.start_writer("w1")
    assert c.persisters["w1"].positions.next_position > announced


@pytest_twisted.ensureDeferred
async def test_an_idle_writer_promises_ahead_so_the_busy_ones_need_no_answer_from_it() -> None:
    """W3 (one room, so one writer busy): w1's own process published each of its events only
    once w2, idle, had seen it and answered with a promise past it over the bus."""
    c = Writers()
    await c.start_all()
    w1 = c.persisters["w1"]
    c.promises.hold = Deferred()
    for _ in range(2):  # w1 writes; w2 allocates nothing for a heartbeat
        w1.commit(c)
        c.clock.advance(event_replication.HEARTBEAT_S)
    # w2 promises ahead, but saved before announced: nothing past the saved promise goes out.
    assert max(c.announced["w2"]) < event_replication.AHEAD
    c.promises.hold.callback(None)
    c.promises.hold = None

    # w2 now hears nothing (a busy reactor, a slow bus): w1's events are published anyway.
    c.hub.disconnect("w2")
    sent = w1.commit(c) + w1.commit(c, 3)
    assert c.replicas["w1"].stream.position >= sent[-1]
    assert [p for p in c.published if p in sent] == sent
    ahead = max(c.announced["w2"])
    assert ahead >= event_replication.AHEAD and c.promises.saved["w2"] >= ahead - 1

    # Killed now and started again on the same database: above everything it announced.
    c.replicas["w2"].stop()
    await c.start_writer("w2")
    assert c.persisters["w2"].positions.next_position > ahead


@pytest_twisted.ensureDeferred
async def test_a_writer_that_writes_promises_nothing_ahead() -> None:
    """Both writers busy (W1): each promise moves with its commits, none jumps ahead (its own
    next event would then wait for the others to pass it)."""
    c = Writers()
    await c.start_all()
    w1, w2 = c.persisters["w1"], c.persisters["w2"]
    for _ in range(4):
        w1.commit(c)
        w2.commit(c)
        c.clock.advance(event_replication.HEARTBEAT_S)
    assert max(c.announced["w1"] + c.announced["w2"]) < event_replication.AHEAD


@pytest_twisted.ensureDeferred
async def test_a_writer_retiring_while_its_promise_ahead_is_saved_returns_above_it() -> None:
    """The save of a promise ahead lands after the retirement was announced: the others
    carry what was saved, and the writer, back, starts above all announced for it."""
    c = Writers()
    await c.start_all()
    w1 = c.persisters["w1"]
    c.promises.hold = Deferred()
    for _ in range(2):  # w2 idle: it starts saving a promise ahead, held
        w1.commit(c)
        c.clock.advance(event_replication.HEARTBEAT_S)
    assert c.replicas["w2"]._reaching
    await c.replicas["w2"].retire()
    retired_at = c.promises.retired_at["w2"]
    assert retired_at < event_replication.AHEAD
    hold, c.promises.hold = c.promises.hold, None
    hold.callback(None)  # the promise ahead is saved now, after the retirement
    assert max(c.announced["w2"]) == retired_at  # a stopped writer announces nothing more

    sent = w1.commit(c, 2)
    assert set(sent) <= set(c.published)
    carried = max(p for w, p in c.carried if w == "w2")
    assert carried >= c.promises.saved["w2"] >= event_replication.AHEAD

    await c.start_writer("w2")
    again = c.persisters["w2"].commit(c)
    assert again[0] > carried, "w2 wrote below what was published for it"
    c.clock.advance(event_replication.HEARTBEAT_S)
    assert again[0] in c.published and c.published == sorted(set(c.published))


def kill(c: Writers, name: str) -> None:
    """As kill -9 leaves it: no more heartbeats, off the bus, its lock's session gone."""
    c.replicas[name].stop()
    c.hub.disconnect(name)
    c.replicas[name].release()


def beats(c: Writers, seconds: float) -> None:
    for _ in range(round(seconds / event_replication.HEARTBEAT_S)):
        c.clock.advance(event_replication.HEARTBEAT_S)


@pytest_twisted.ensureDeferred
async def test_a_dead_writer_is_fenced_once_silent_for_silent_s_and_then_carried() -> None:
    c = Writers()
    await c.start_all()
    kill(c, "w2")
    held = max(c.announced["w2"])
    sent = c.persisters["w1"].commit(c, 3)
    beats(c, writer_fence.SILENT_S - event_replication.HEARTBEAT_S)
    assert c.promises.retired_at == {} and c.replication.position == held < sent[-1]
    beats(c, event_replication.HEARTBEAT_S)
    # Retired at its saved promise (everything it stored lies at or below), then carried.
    assert c.promises.retired_at == {"w2": held}
    assert c.carried and c.carried[-1][0] == "w2" and c.carried[-1][1] >= sent[-1]
    assert c.replication.position >= sent[-1] and set(sent) <= set(c.published)

    await c.start_writer("w2")  # restarted: it rejoins above everything carried for it
    assert c.promises.retired_at == {} and c.promises.fenced == set()
    again = c.persisters["w2"].commit(c)
    assert again[0] > c.carried[-1][1]
    beats(c, 2 * writer_fence.SILENT_S)
    assert c.promises.retired_at == {} and c.fenced == []


@pytest_twisted.ensureDeferred
async def test_a_writer_silent_with_its_lock_held_or_heard_without_it_is_not_fenced() -> None:
    c = Writers()
    await c.start_all()
    # A Redis outage: w2's announcements are lost, but it holds its lock.
    c.hub.disconnect("w2")
    beats(c, 3 * writer_fence.SILENT_S)
    assert c.promises.retired_at == {}
    await c.hub.reconnect("w2")
    # A PostgreSQL restart: every lock's session ended, but w2 is still heard every beat
    # (and takes its lock again at its next renewal).
    c.promises.locked.clear()
    beats(c, 3 * writer_fence.SILENT_S)
    assert c.promises.retired_at == {} and c.fenced == []
    assert c.promises.locked == {"w1", "w2"}


@pytest_twisted.ensureDeferred
async def test_a_fenced_writer_finds_out_at_its_next_save_and_announces_no_more() -> None:
    c = Writers()
    await c.start_all()
    # w2 pauses (a SIGSTOP past the lease): silent, its lock's session ended by PostgreSQL.
    c.replicas["w2"].stop()
    c.promises.locked.discard("w2")
    beats(c, writer_fence.SILENT_S)
    assert "w2" in c.promises.retired_at and c.fenced == []
    # It resumes and a request fails (its commit matched no row): the save after it refuses.
    announced = len(c.announced["w2"])
    c.persisters["w2"].fail()
    assert c.fenced == ["w2"]
    c.replicas["w2"].start_heartbeat()  # stopped for good once fenced: nothing more from it
    beats(c, 3 * event_replication.HEARTBEAT_S)
    assert len(c.announced["w2"]) == announced
    assert "w2" in c.promises.retired_at


@pytest_twisted.ensureDeferred
async def test_a_fenced_writer_finds_out_on_taking_its_lock_again() -> None:
    c = Writers()
    await c.start_all()
    c.replicas["w2"].stop()
    c.promises.locked.discard("w2")
    beats(c, writer_fence.SILENT_S)
    assert "w2" in c.promises.retired_at
    c.replicas["w2"].start_heartbeat()  # it resumes, idle: its next beat renews the lock
    beats(c, event_replication.HEARTBEAT_S)
    assert c.fenced == ["w2"]


def test_the_death_watch_names_writers_silent_for_silent_s() -> None:
    watch = writer_fence.DeathWatch(["w1", "w2"], now=100.0)
    assert watch.silent(100.0 + writer_fence.SILENT_S - 0.1) == []
    watch.heard("w1", 103.0)
    assert watch.silent(100.0 + writer_fence.SILENT_S) == ["w2"]
    assert watch.silent(103.0 + writer_fence.SILENT_S) == ["w1", "w2"]
    watch.heard("w9", 200.0)  # not a writer: ignored
    assert watch.silent(103.0) == []


@pytest_twisted.ensureDeferred
async def test_batches_behind_a_missed_range_wait_in_bounded_memory(monkeypatch: Any) -> None:
    """While the missed range is read (the database slow), the writer's later batches wait;
    past MAX_WAITING of their events they are dropped and their range read too: every event
    is still published once, in order."""
    monkeypatch.setattr(event_replication, "MAX_WAITING", 3)
    r = Reader()
    await r.start()
    r.send("w2", 101)
    r.hub.disconnect("w3")
    r.send("w1", 5, 2, 4)  # lost
    await r.hub.reconnect("w3")
    r.events.hold = Deferred()
    r.send("w1", 9, 6, 8)  # a gap: (0, 5] is read, this batch waits
    r.send("w1", 13, 10, 12)  # would make four waiting: dropped, (5, 13] to be read
    r.send("w1", 17, 14)
    writer = r.replication._writers["w1"]
    assert writer.held_events == 1 and writer.want == 13
    waiting = {m.name: m for m in event_replication._ReplicationCollector(r.replication).collect()}
    assert waiting["homeserver_events_waiting"].samples[0].value == 1
    r.events.hold.callback(None)
    r.events.hold = None
    assert r.published == [2, 4, 6, 8, 10, 12, 14]
    assert [(a, u) for a, u, _ in r.events.reads] == [(0, 5), (5, 13)]
    assert writer.held_events == 0 and not writer.held


@pytest_twisted.ensureDeferred
async def test_heads_of_several_rooms_are_loaded_together_before_a_batch_is_published(
    monkeypatch: Any,
) -> None:
    """A catch-up batch spans rooms whose heads are not in memory: their syncs wait for all of
    them, so they are loaded HEAD_LOADS at a time, not one after another."""
    monkeypatch.setattr(event_replication, "HEAD_LOADS", 2)
    r = Reader()
    r.replication.writes_room = lambda room_id: False
    loading: dict[str, Deferred[None]] = {}

    async def load_room(room_id: str) -> None:
        loading[room_id] = Deferred()
        await loading[room_id]

    r.events.load_room = load_room  # type: ignore[method-assign]
    await r.start()
    events = [item(p) for p in (2, 4, 6, 8)]
    for ev, room in zip(events, ["!a:x", "!b:x", "!c:x", "!a:x"], strict=True):
        ev.event.room_id = room
    r.send("w2", 101)
    r.writers["w1"].publish(
        CHANNEL,
        {"writer": "w1", "seq": 99, "since": 0, "promise": 9, "items": [encode_item(e) for e in events]},
    )
    assert sorted(loading) == ["!a:x", "!b:x"] and r.published == []
    loading["!b:x"].callback(None)
    assert sorted(loading) == ["!a:x", "!b:x", "!c:x"] and r.published == []
    loading["!c:x"].callback(None)
    loading["!a:x"].callback(None)  # no head (None): its next event loads it again
    assert r.published == []
    loading["!a:x"].callback(None)
    assert r.published == [2, 4, 6, 8]
