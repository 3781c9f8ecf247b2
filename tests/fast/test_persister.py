"""homeserver.core.persist.EventPersister: when it commits, and what it does when a commit fails.

Batching: the first event after a quiet moment is committed at once; what queued during a
commit is written while that commit is published, unless many wait or the last publishing was
slow (then it gathers or goes after the publishing); callers hear back only after their own
commit, and commits are published in order.

Failures: a commit whose answer was lost is settled by asking the database, never assumed
failed; an unreachable database is retried every RETRY_MAX_S at most, then given up; an event
that fails takes the later events of its room with it, and the room's head is rebuilt from the
database once nothing of it is in flight.

The store here records batches and lets the test finish or fail each commit by hand: what is
under test is the persister's decisions, not the SQL (tests/test_event_storage.py,
tests/test_commit_outcome.py for the real database). Time is a twisted Clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from homeserver.core import persist
from homeserver.core.persist import EarlierEventFailed, EventPersister
from homeserver.core.room_heads import RoomHeads
from homeserver.errors import ServiceUnavailable, StorageFull
from homeserver.storage.connection_pool import CommitOutcomeUnknown, DatabaseUnavailable
from homeserver.storage.events import RoomSnapshot


class Event:
    def __init__(self, position: int, room_id: str) -> None:
        self.stream_ordering = position
        self.room_id = room_id
        self.event_id = f"$e{position}"


class Item:
    """Just enough of a PersistItem for the persister's bookkeeping."""

    def __init__(self, position: int, room_id: str = "!r:x") -> None:
        self.event = Event(position, room_id)


class RecordingStore:
    """Each commit waits for the test to finish or fail it; `stored` is what 'committed'."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.commits: list[Deferred[None]] = []
        self.stored: set[str] = set()
        self.lookups: list[Deferred[bool]] = []
        self.loads: list[str] = []

    def persist_events(self, items: list[Any]) -> Deferred[None]:
        self.batches.append(list(items))
        d: Deferred[None] = Deferred()
        self.commits.append(d)
        return d

    def _open(self) -> Deferred[None]:
        return next(c for c in self.commits if not c.called)

    def finish(self) -> None:
        """The open commit succeeds."""
        batch = self.batches[self.commits.index(self._open())]
        self.stored.update(i.event.event_id for i in batch)
        self._open().callback(None)

    def fail(self, error: Exception, *, but_stored: bool = False) -> None:
        batch = self.batches[self.commits.index(self._open())]
        if but_stored:
            self.stored.update(i.event.event_id for i in batch)
        self._open().errback(error)

    def event_stored(self, event_id: str) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.lookups.append(d)
        d.addCallback(lambda answered: event_id in self.stored if answered else False)
        return d

    def answer_lookup(self) -> None:
        next(d for d in self.lookups if not d.called).callback(True)

    def fail_lookup(self) -> None:
        next(d for d in self.lookups if not d.called).errback(DatabaseUnavailable())

    async def load_room(self, room_id: str) -> RoomSnapshot:
        self.loads.append(room_id)
        return RoomSnapshot(room_id, "10", {}, [f"$stored-{room_id}"], 1)


def make() -> tuple[EventPersister, RecordingStore, Clock, list[tuple[int, list[Any]]], RoomHeads]:
    store = RecordingStore()
    clock = Clock()
    published: list[tuple[int, list[Any]]] = []
    heads = RoomHeads(store)  # type: ignore[arg-type]
    persister = EventPersister(store, heads, lambda upto, items: published.append((upto, items)), clock)  # type: ignore[arg-type]
    return persister, store, clock, published, heads


def positions(published: list[tuple[int, list[Any]]]) -> list[list[int]]:
    return [[i.event.stream_ordering for i in items] for _, items in published]


# Batching ---------------------------------------------------------------------------------


def test_a_batch_starts_at_once_and_the_next_is_written_while_it_is_published() -> None:
    store = RecordingStore()
    clock = Clock()
    published: list[tuple[int, list[Any]]] = []
    writes_when_published: list[int] = []

    def publish(upto: int, items: list[Any]) -> None:
        published.append((upto, items))
        writes_when_published.append(len(store.batches))

    persister = EventPersister(store, RoomHeads(store), publish, clock)  # type: ignore[arg-type]
    first = persister.persist([Item(1)])  # type: ignore[list-item]
    assert len(store.batches) == 1  # no wait: nothing was committing before it

    # Two arrive while that commit runs: their write starts before the first is published.
    second = persister.persist([Item(2)])  # type: ignore[list-item]
    third = persister.persist([Item(3)])  # type: ignore[list-item]
    store.finish()
    assert first.called and not second.called and not third.called
    assert [len(b) for b in store.batches] == [1, 2] and writes_when_published == [2]
    assert not clock.getDelayedCalls()  # no gathering wait

    # One more while those two commit; then they are published, in order, before it.
    fourth = persister.persist([Item(4)])  # type: ignore[list-item]
    store.finish()
    assert second.called and third.called and not fourth.called
    store.finish()
    assert fourth.called
    assert positions(published) == [[1], [2, 3], [4]]
    assert [upto for upto, _ in published] == [1, 3, 4]
    assert persister.persisted_upto == 4

    # Quiet again: the next event does not wait.
    persister.persist([Item(5)])  # type: ignore[list-item]
    assert len(store.batches) == 4


def test_a_batch_written_ahead_that_fails_is_retried_one_request_at_a_time_after_the_publish() -> None:
    persister, store, _, published, _ = make()
    persister.persist([Item(1)])  # type: ignore[list-item]
    second = persister.persist([Item(2)])  # type: ignore[list-item]
    third = persister.persist([Item(3, "!other:x")])  # type: ignore[list-item]
    store.finish()  # 1 committed; 2 and 3 written ahead while 1 is published
    assert positions(published) == [[1]]
    store.fail(RuntimeError("bad row"))
    assert [len(b) for b in store.batches] == [1, 2, 1]  # then one by one
    store.fail(RuntimeError("bad row"))
    store.finish()
    assert second.called and third.called
    failures: list[Any] = []
    second.addErrback(failures.append)
    assert len(failures) == 1 and third.result is None
    assert positions(published) == [[1], [3]]


def test_a_publish_that_raises_still_sees_the_batch_written_ahead_through() -> None:
    store = RecordingStore()
    published: list[list[int]] = []

    def publish(upto: int, items: list[Any]) -> None:
        published.append([i.event.stream_ordering for i in items])
        if len(published) == 1:
            raise RuntimeError("a consumer's bug")

    persister = EventPersister(store, RoomHeads(store), publish, Clock())  # type: ignore[arg-type]
    first = persister.persist([Item(1)])  # type: ignore[list-item]
    second = persister.persist([Item(2)])  # type: ignore[list-item]
    store.finish()  # 2 is written ahead, then 1's publishing raises
    assert first.called and len(store.batches) == 2
    store.finish()
    assert second.called and second.result is None
    assert published == [[1], [2]] and persister.persisted_upto == 2


def test_after_a_slow_publish_even_one_waiting_request_gathers() -> None:
    store = RecordingStore()
    clock = Clock()
    published: list[tuple[int, list[Any]]] = []

    def publish(upto: int, items: list[Any]) -> None:  # waking a big room's members takes time
        published.append((upto, items))
        clock.advance(persist.GATHER_AFTER_SLOW_S)

    heads = RoomHeads(store)  # type: ignore[arg-type]
    persister = EventPersister(store, heads, publish, clock)  # type: ignore[arg-type]
    persister.persist([Item(1)])  # type: ignore[list-item]
    store.finish()  # a slow cycle: it wakes a big room
    persister.persist([Item(2)])  # type: ignore[list-item]
    persister.persist([Item(3)])  # type: ignore[list-item]
    # 3 waits through 2's commit, but the last cycle was slow: not written ahead, it gathers.
    store.finish()
    assert [len(b) for b in store.batches] == [1, 1]
    persister.persist([Item(4)])  # type: ignore[list-item]
    clock.advance(persist.GATHER_S)
    assert [len(b) for b in store.batches] == [1, 1, 2]


def test_what_a_caller_does_when_answered_does_not_make_the_cycle_slow() -> None:
    # A test (or anything) that moves the clock a day on as soon as its send is answered:
    # the cycle was not slow, so the one waiting request is committed at once instead of
    # gathering on a clock nobody will move again.
    persister, store, clock, published, _ = make()
    first = persister.persist([Item(1)])  # type: ignore[list-item]
    first.addCallback(lambda _: clock.advance(86_400))
    persister.persist([Item(2)])  # type: ignore[list-item]
    store.finish()
    assert first.called
    assert [len(b) for b in store.batches] == [1, 1]


def test_when_many_requests_wait_they_go_after_the_publish_without_a_wait() -> None:
    # This thread is the bottleneck then: fewer, larger batches (each woken sync answers
    # more of them), so the next batch also takes what arrives during the publishing.
    store = RecordingStore()
    clock = Clock()
    writes_when_published: list[int] = []
    publish = lambda upto, items: writes_when_published.append(len(store.batches))  # noqa: E731
    persister = EventPersister(store, RoomHeads(store), publish, clock)  # type: ignore[arg-type]
    persister.persist([Item(1)])  # type: ignore[list-item]
    for n in range(persist.GATHER_UNDER):
        persister.persist([Item(2 + n)])  # type: ignore[list-item]
    store.finish()
    assert writes_when_published == [1]  # not written ahead
    assert [len(b) for b in store.batches] == [1, persist.GATHER_UNDER]  # straight on after
    assert not clock.getDelayedCalls()


def test_events_must_be_queued_in_the_order_of_their_positions() -> None:
    persister, _, _, _, _ = make()
    persister.persist([Item(5)])  # type: ignore[list-item]
    with pytest.raises(AssertionError):
        persister.persist([Item(3)])  # type: ignore[list-item]


# A commit whose answer was lost ----------------------------------------------------------------


def test_a_lost_commit_answer_that_was_stored_counts_as_committed() -> None:
    persister, store, clock, published, _ = make()
    sent = persister.persist([Item(1)])  # type: ignore[list-item]
    store.fail(CommitOutcomeUnknown(), but_stored=True)
    assert not sent.called  # not failed: the database is asked first
    store.answer_lookup()
    assert sent.called and sent.result is None
    assert positions(published) == [[1]]
    assert len(store.batches) == 1  # never written twice


def test_a_lost_commit_answer_that_was_not_stored_is_written_again() -> None:
    persister, store, clock, published, _ = make()
    sent = persister.persist([Item(1)])  # type: ignore[list-item]
    store.fail(CommitOutcomeUnknown(), but_stored=False)
    store.answer_lookup()
    assert len(store.batches) == 2 and not sent.called
    store.finish()
    assert sent.called and sent.result is None
    assert positions(published) == [[1]]


def test_the_question_is_asked_until_the_database_answers() -> None:
    persister, store, clock, published, _ = make()
    sent = persister.persist([Item(1)])  # type: ignore[list-item]
    store.fail(CommitOutcomeUnknown(), but_stored=True)
    for _ in range(50):  # the database stays away for a long while
        store.fail_lookup()
        clock.advance(persist.RETRY_MAX_S)
    assert not sent.called  # never assumed failed
    store.answer_lookup()
    assert sent.called and sent.result is None
    assert positions(published) == [[1]]
    assert len(store.batches) == 1


# An unreachable database -------------------------------------------------------------------------


def test_an_unreachable_database_is_retried_and_used_within_the_longest_pause() -> None:
    persister, store, clock, published, _ = make()
    sent = persister.persist([Item(1)])  # type: ignore[list-item]
    for _ in range(20):
        store.fail(DatabaseUnavailable())
        clock.advance(persist.RETRY_MAX_S)  # the next attempt comes at most this much later
    assert len(store.batches) == 21 and not sent.called
    store.finish()  # back
    assert sent.called and sent.result is None
    assert positions(published) == [[1]]


def test_after_giving_up_the_events_fail_and_the_rooms_head_is_rebuilt() -> None:
    persister, store, clock, published, heads = make()
    room = "!r:x"
    first = persister.persist([Item(1, room)])  # type: ignore[list-item]
    second = persister.persist([Item(2, room)])  # type: ignore[list-item]
    other = persister.persist([Item(3, "!other:x")])  # type: ignore[list-item]
    errors: list[Any] = []
    for d in (first, second, other):
        d.addErrback(errors.append)
    waited = 0.0
    while not first.called:
        store.fail(DatabaseUnavailable())
        clock.advance(persist.RETRY_MAX_S)
        waited += persist.RETRY_MAX_S
    assert waited >= persist.GIVE_UP_S
    assert first.called and errors and errors[0].check(DatabaseUnavailable)
    # The rest of the batch is tried request by request; the database is still away.
    while not (second.called and other.called):
        store.fail(DatabaseUnavailable())
        clock.advance(persist.RETRY_MAX_S)
    assert published == []
    assert heads.in_flight(room) == 0 and not heads.has_failed(room)


# An event that fails takes the later events of its room with it ------------------------------------


def test_a_failed_event_fails_the_later_events_of_its_room_even_in_later_batches() -> None:
    persister, store, clock, published, heads = make()
    room, other = "!r:x", "!other:x"
    heads.put(_head(room))
    heads.put(_head(other))
    first = persister.persist([Item(1, room)])  # type: ignore[list-item]
    bad = persister.persist([Item(2, room)])  # type: ignore[list-item]
    good_other = persister.persist([Item(3, other)])  # type: ignore[list-item]
    store.finish()  # 1 commits; 2 and 3 gather into the next batch
    clock.advance(persist.GATHER_S)
    assert [len(b) for b in store.batches] == [1, 2]
    later = persister.persist([Item(4, room)])  # type: ignore[list-item] # built on 2, in a later batch
    errors: dict[str, Any] = {}
    bad.addErrback(lambda f: errors.update(bad=f))
    later.addErrback(lambda f: errors.update(later=f))
    store.fail(ValueError("a bad row"))  # the batch of 2 and 3 fails: one by one now
    store.fail(ValueError("a bad row"))  # 2 alone fails for good
    assert errors["bad"].check(ValueError)
    assert heads.has_failed(room)
    store.finish()  # 3 alone commits
    assert good_other.called and good_other.result is None
    # 4 was built on 2: it fails without being written, and then the head goes.
    clock.advance(persist.GATHER_S)
    assert errors["later"].check(EarlierEventFailed)
    assert all(i.event.stream_ordering != 4 for b in store.batches for i in b)
    assert positions(published) == [[1], [3]]
    assert first.called
    assert heads.in_flight(room) == 0 and not heads.has_failed(room)
    assert heads.peek(room) is None  # dropped: the next get rebuilds it from the database
    assert heads.peek(other) is not None


def test_a_failed_rooms_head_is_rebuilt_only_once_nothing_of_it_is_in_flight() -> None:
    persister, store, clock, published, heads = make()
    room = "!r:x"
    heads.put(_head(room))
    bad = persister.persist([Item(1, room)])  # type: ignore[list-item]
    bad.addErrback(lambda f: None)
    built_on_bad = persister.persist([Item(2, room)])  # type: ignore[list-item]
    built_on_bad.addErrback(lambda f: None)
    persister.persist([Item(3, "!other:x")])  # type: ignore[list-item]
    store.fail(ValueError("bad"))  # the batch of 1: tried alone
    store.fail(ValueError("bad"))
    assert heads.has_failed(room)
    got = Deferred.fromCoroutine(heads.get(room))
    assert not got.called  # waits: event 2 is still queued (two waited: the next batch gathers)
    assert store.loads == []
    clock.advance(persist.GATHER_S)  # 2 is failed without a write
    assert got.called
    assert store.loads == [room]
    assert got.result.extremities == [f"$stored-{room}"]


def test_a_head_with_events_in_flight_is_never_evicted() -> None:
    store = RecordingStore()
    heads = RoomHeads(store, max_heads=3)  # type: ignore[arg-type]
    persister = EventPersister(store, heads, lambda upto, items: None, Clock())  # type: ignore[arg-type]
    heads.put(_head("!busy:x"))
    sent = persister.persist([Item(1, "!busy:x")])  # type: ignore[list-item]
    for n in range(10):  # many other rooms come and go
        heads.put(_head(f"!idle{n}:x"))
    assert heads.peek("!busy:x") is not None
    assert len([r for r in ("!idle7:x", "!idle8:x", "!idle9:x") if heads.peek(r)]) == 2
    store.finish()
    assert sent.called
    heads.put(_head("!new:x"))  # idle now: the oldest, it goes first
    assert heads.peek("!busy:x") is None


def _head(room_id: str) -> Any:
    from homeserver.core.room_heads import RoomHead

    return RoomHead(room_id, "10", {}, ["$x"], 1)


def test_a_full_disk_fails_the_whole_batch_at_once_and_the_next_write_works() -> None:
    persister, store, clock, published, heads = make()
    room, other = "!r:x", "!other:x"
    heads.put(_head(room))
    heads.put(_head(other))
    persister.persist([Item(1, room)])  # type: ignore[list-item]
    queued = [persister.persist([Item(n, r)]) for n, r in ((2, room), (3, other))]  # type: ignore[list-item]
    errors: list[Any] = []
    for d in queued:
        d.addErrback(errors.append)
    store.finish()
    clock.advance(persist.GATHER_S)
    store.fail(StorageFull())  # the batch of 2 and 3: no space for any of it
    # Both fail at once with the disk's error, without being written one by one.
    assert [len(b) for b in store.batches] == [1, 2]
    assert [e.type for e in errors] == [StorageFull, StorageFull]
    assert heads.in_flight(room) == 0 and heads.in_flight(other) == 0
    # Space again: the next send commits, on a head rebuilt from what is stored.
    after = persister.persist([Item(4, other)])  # type: ignore[list-item]
    store.finish()
    assert after.called and after.result is None
    assert positions(published) == [[1], [4]]


# A graceful stop ----------------------------------------------------------------------------


def test_close_waits_for_the_queued_events_and_refuses_new_ones() -> None:
    persister, store, _, published, _ = make()
    queued = persister.persist([Item(1)])  # type: ignore[list-item]
    closed = Deferred.fromCoroutine(persister.close())
    assert not closed.called  # its commit is still running
    with pytest.raises(ServiceUnavailable):
        persister.persist([Item(2)])  # type: ignore[list-item]
    store.finish()
    assert queued.called and closed.called
    assert positions(published) == [[1]] and len(store.batches) == 1
