"""homeserver/workers/event_positions.py: the positions each event writer hands out, its
promise, the global position, and a writer's start after a restart.

With the persister: the promise follows its requests as they queue, commit and fail, and a
commit saves the promise it will have afterwards (time is a twisted Clock; the store only
records what it was asked to write).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from homeserver.core.persist import EventPersister
from homeserver.core.room_heads import RoomHeads
from homeserver.workers.event_positions import WriterPositions, global_position


def test_one_writer_hands_out_every_integer_after_the_newest() -> None:
    positions = WriterPositions(start_after=41)
    assert [positions.allocate() for _ in range(3)] == [42, 43, 44]
    assert positions.promise == 44


def test_writers_hand_out_disjoint_increasing_positions_by_their_index() -> None:
    a = WriterPositions("a", 0, 3, start_after=10)
    b = WriterPositions("b", 1, 3, start_after=10)
    c = WriterPositions("c", 2, 3, start_after=10)
    got = {w.name: [w.allocate() for _ in range(3)] for w in (a, b, c)}
    assert got == {"a": [12, 15, 18], "b": [13, 16, 19], "c": [11, 14, 17]}
    assert all(p % 3 == 0 for p in got["a"]) and all(p % 3 == 1 for p in got["b"])


def test_bad_index_is_refused() -> None:
    with pytest.raises(ValueError):
        WriterPositions("x", 2, 2)


def test_promise_is_held_by_the_lowest_request_in_flight() -> None:
    w = WriterPositions("a", 0, 2, start_after=0)
    assert w.promise == 1  # next would be 2
    first, second = w.allocate(), w.allocate()
    assert (first, second) == (2, 4)
    w.queued(first)
    w.queued(second)
    assert w.promise == 1
    w.settled(first)
    assert w.promise == 3
    w.settled(second)
    assert w.promise == 5


def test_a_failed_request_settles_like_a_committed_one_even_out_of_order() -> None:
    w = WriterPositions("a", 1, 2, start_after=0)
    for _ in range(3):
        w.queued(w.allocate())  # 1, 3, 5
    w.settled(3)
    assert w.promise == 0
    w.settled(1)
    assert w.promise == 4
    w.settled(5)
    assert w.promise == 6


def test_promise_after_a_batch_counts_what_is_queued_behind_it() -> None:
    w = WriterPositions("a", 0, 2, start_after=0)
    for _ in range(3):
        w.queued(w.allocate())  # 2, 4, 6
    assert w.promise_after(4) == 5
    assert w.promise_after(6) == 7


def test_an_idle_writer_moves_above_an_event_of_another_writer() -> None:
    a = WriterPositions("a", 0, 2, start_after=0)
    b = WriterPositions("b", 1, 2, start_after=0)
    for _ in range(5):
        b.queued(b.allocate())  # 1, 3, 5, 7, 9
    for p in (1, 3, 5, 7, 9):
        b.settled(p)
    assert global_position({"a": a.promise, "b": b.promise}) == 1  # a holds everyone back
    a.observe(9)
    assert a.promise == 9 and a.allocate() == 10
    assert global_position({"a": a.promise, "b": b.promise}) == 10


def test_observing_an_older_position_changes_nothing() -> None:
    a = WriterPositions("a", 0, 2, start_after=20)
    a.observe(7)
    assert a.allocate() == 22


def test_a_busy_writer_keeps_its_promise_but_allocates_above_what_it_saw() -> None:
    a = WriterPositions("a", 0, 2, start_after=0)
    first = a.allocate()
    a.queued(first)
    a.observe(31)
    assert a.promise == first - 1
    assert a.allocate() == 32
    a.settled(first)
    assert a.promise == 33


def test_a_restarted_writer_starts_above_every_stored_position_and_promise() -> None:
    before = WriterPositions("a", 0, 2, start_after=0)
    used = [before.allocate() for _ in range(4)]
    stored_max, other_promise = max(used), 13
    after = WriterPositions("a", 0, 2, start_after=max(stored_max, other_promise))
    nxt = after.allocate()
    assert nxt > stored_max and nxt > other_promise and nxt % 2 == 0


# With the persister ------------------------------------------------------------------------


class _Event:
    def __init__(self, position: int) -> None:
        self.stream_ordering = position
        self.room_id = "!r:x"
        self.event_id = f"$e{position}"


class _Item:
    def __init__(self, position: int) -> None:
        self.event = _Event(position)


class _Store:
    def __init__(self, newest: int) -> None:
        self.newest = newest
        self.writes: list[tuple[list[int], Any]] = []
        self.commits: list[Deferred[None]] = []

    async def max_stream_ordering(self) -> int:
        return self.newest

    def persist_events(self, items: list[Any], promise: Any = None) -> Deferred[None]:
        self.writes.append(([i.event.stream_ordering for i in items], promise))
        d: Deferred[None] = Deferred()
        self.commits.append(d)
        return d


async def _persister(
    newest: int, positions: WriterPositions, start_after: int
) -> tuple[EventPersister, _Store, list[int]]:
    store = _Store(newest)
    published: list[int] = []
    persister = EventPersister(
        store,  # type: ignore[arg-type]
        RoomHeads(store),  # type: ignore[arg-type]
        lambda upto, items: published.append(positions_now(persister)),
        Clock(),
        positions,
    )
    persister.save_promise = True
    await persister.start(start_after)
    return persister, store, published


def positions_now(persister: EventPersister) -> int:
    return persister.positions.promise


@pytest.mark.parametrize("newest, saved, first", [(40, 0, 42), (10, 51, 52)])
@pytest_twisted.ensureDeferred
async def test_the_persister_starts_its_writer_above_stored_events_and_promises(
    newest: int, saved: int, first: int
) -> None:
    persister, _, _ = await _persister(newest, WriterPositions("a", 0, 2), saved)
    assert persister.allocate_stream_ordering() == first


@pytest_twisted.ensureDeferred
async def test_each_commit_saves_the_promise_it_leaves_and_publishes_after_it_moved() -> None:
    persister, store, published = await _persister(0, WriterPositions("a", 1, 2), 0)
    one = persister.allocate_stream_ordering()
    done_one = persister.persist([_Item(one)])  # type: ignore[list-item]
    two = persister.allocate_stream_ordering()
    persister.persist([_Item(two)])  # type: ignore[list-item]
    assert (one, two) == (1, 3)
    assert store.writes == [([1], ("a", 2, 0))]  # the request queued behind holds the promise at 2
    assert persister.positions.promise == 0
    store.commits[0].callback(None)
    assert done_one.called
    assert published == [2]
    assert store.writes[1] == ([3], ("a", 4, 0))
    store.commits[1].callback(None)
    assert published == [2, 4]
