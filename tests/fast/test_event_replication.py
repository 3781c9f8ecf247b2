"""homeserver/workers/event_replication.py on one reader, its writers played by the test: what
the reader's stream publishes from the writers' messages on a MemoryHub, and what it reads
from the database (a store the test fills) when messages were lost.

- events of two writers are published in position order, only up to the lowest promise;
- a message whose `since` is above what the reader has of that writer makes it read the
  missing range of that writer's positions; messages arriving meanwhile wait, and one that
  asks for more while a page is being read makes it read that too;
- after a bus reconnect the reader reads up to the promises saved in the database;
- an item it has already (read from the database) is not published twice;
- behind a writer that holds the stream, at most MAX_WAITING events wait in memory;
- a process starts its stream no lower than its durable consumers have handled.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from harness import TestClock
from twisted.internet.defer import Deferred

from homeserver.core.event_stream import EventStream
from homeserver.core.room_heads import RoomHeads
from homeserver.storage.events import PersistItem, StoredEvent
from homeserver.workers import event_replication
from homeserver.workers.bus import MemoryHub
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
    def __init__(self) -> None:
        self.saved: dict[str, int] = {}

    async def promises(self) -> dict[str, int]:
        return dict(self.saved)

    async def save(self, name: str, position: int) -> None:
        self.saved[name] = position


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
