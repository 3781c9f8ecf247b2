"""homeserver.core.persist.EventPersister's batching: the first event after a quiet moment is
committed at once; while commits follow one another, the next batch waits GATHER_S for more
events unless many already wait; callers hear back only after their own commit.

The store here records batches and lets the test finish each commit by hand: what is under
test is when the persister starts a commit, not the SQL (tests/test_event_storage.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from homeserver.core import persist
from homeserver.core.persist import EventPersister


class RecordingStore:
    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.commits: list[Deferred[None]] = []

    def persist_events(self, items: list[Any]) -> Deferred[None]:
        self.batches.append(list(items))
        d: Deferred[None] = Deferred()
        self.commits.append(d)
        return d

    def finish(self) -> None:
        self.commits[len([c for c in self.commits if c.called])].callback(None)


class Item:
    """Just enough of a PersistItem for the persister's bookkeeping."""

    def __init__(self, position: int) -> None:
        self.event = type("Event", (), {"stream_ordering": position, "room_id": "!r:x"})()


def make() -> tuple[EventPersister, RecordingStore, Clock, list[list[Any]]]:
    store = RecordingStore()
    clock = Clock()
    committed: list[list[Any]] = []
    persister = EventPersister(store, committed.append, lambda room: None, timer=clock)  # type: ignore[arg-type]
    return persister, store, clock, committed


def test_first_event_after_quiet_commits_at_once_then_batches_gather() -> None:
    persister, store, clock, committed = make()
    first = persister.persist([Item(1)])  # type: ignore[list-item]
    assert len(store.batches) == 1  # no wait: nothing was committing before it

    second = persister.persist([Item(2)])  # type: ignore[list-item]
    store.finish()
    assert first.called and not second.called
    assert len(store.batches) == 1  # commits back to back now: the next one gathers first

    third = persister.persist([Item(3)])  # type: ignore[list-item]
    clock.advance(persist.GATHER_S)
    assert [len(b) for b in store.batches] == [1, 2]  # 2 and 3 in one commit
    assert not third.called  # answered only once its commit is done
    store.finish()
    assert second.called and third.called
    assert persister.persisted_upto == 3
    assert [[i.event.stream_ordering for i in c] for c in committed] == [[1], [2, 3]]

    # Quiet again: the loop ended, so the next event does not wait.
    persister.persist([Item(4)])  # type: ignore[list-item]
    assert len(store.batches) == 3


def test_no_wait_when_many_requests_already_wait() -> None:
    persister, store, clock, _ = make()
    persister.persist([Item(1)])  # type: ignore[list-item]
    for n in range(persist.GATHER_UNDER):
        persister.persist([Item(2 + n)])  # type: ignore[list-item]
    store.finish()
    assert [len(b) for b in store.batches] == [1, persist.GATHER_UNDER]  # straight on
    assert not clock.getDelayedCalls()
