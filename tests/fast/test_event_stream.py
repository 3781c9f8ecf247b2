"""homeserver.core.event_stream: one ordered stream of committed events, each consumer at its
own position. Inline consumers run in order on every publish; subscribed ones run on their own,
fall behind without slowing anyone and catch up from the database; durable ones resume where
they stopped, and are handed again only what was in flight, marked as such.

The database here is a list of committed items and a dict of saved positions; time is a Clock.
The real tables are exercised in tests/test_stream_consumers.py (kill -9 of a real server).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from homeserver.core import event_stream
from homeserver.core.event_stream import EventStream, StreamBatch


class Event:
    def __init__(self, position: int) -> None:
        self.stream_ordering = position
        self.room_id = "!r:x"
        self.event_id = f"$e{position}"


class Item:
    def __init__(self, position: int) -> None:
        self.event = Event(position)
        self.room_version = "10"


class Database:
    """Committed items, and the saved consumer positions."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.positions: dict[str, tuple[int, int]] = {}
        self.reads: list[tuple[int, int]] = []
        self.saves: list[tuple[str, int, int]] = []

    def committed_events(self, after: int, upto: int, limit: int) -> Deferred[list[Item]]:
        self.reads.append((after, upto))
        found = [i for i in self.items if after < i.event.stream_ordering <= upto]
        return succeed(found[:limit])

    def load(self, name: str) -> Deferred[tuple[int, int] | None]:
        return succeed(self.positions.get(name))

    def save(self, name: str, position: int, handed_upto: int, now_ms: int) -> Deferred[None]:
        self.positions[name] = (position, handed_upto)
        self.saves.append((name, position, handed_upto))
        return succeed(None)


def make(db: Database | None = None) -> tuple[EventStream, Database, Clock]:
    db = db or Database()
    clock = Clock()
    stream = EventStream(db, db, clock, lambda: 0)  # type: ignore[arg-type]
    stream.start(max((i.event.stream_ordering for i in db.items), default=0))
    return stream, db, clock


def commit(stream: EventStream, db: Database, *positions: int) -> None:
    items = [Item(p) for p in positions]
    db.items.extend(items)
    stream.publish(positions[-1], items)  # type: ignore[arg-type]


def seen(batches: list[StreamBatch]) -> list[int]:
    return [i.event.stream_ordering for b in batches for i in b.items]


class Held:
    """A handler whose every call waits until the test lets it go."""

    def __init__(self) -> None:
        self.batches: list[StreamBatch] = []
        self.waiting: list[Deferred[None]] = []
        self.fail_next = 0

    def __call__(self, batch: StreamBatch) -> Deferred[None]:
        self.batches.append(batch)
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


async def record(into: list[StreamBatch], batch: StreamBatch) -> None:
    into.append(batch)


# Inline consumers --------------------------------------------------------------------------------


def test_inline_consumers_run_in_order_and_one_failing_does_not_stop_the_rest() -> None:
    stream, db, _ = make()
    calls: list[tuple[str, list[int], int]] = []

    def consumer(name: str) -> Any:
        def consume(items: list[Any]) -> None:
            calls.append((name, [i.event.stream_ordering for i in items], stream.position))
            if name == "broken":
                raise RuntimeError("on purpose")

        return consume

    for name in ("timeline", "broken", "notifier"):
        stream.add_inline(name, consumer(name))
    commit(stream, db, 1, 2)
    commit(stream, db, 4)  # 3 failed to persist: a gap
    assert calls == [
        ("timeline", [1, 2], 2),
        ("broken", [1, 2], 2),
        ("notifier", [1, 2], 2),
        ("timeline", [4], 4),
        ("broken", [4], 4),
        ("notifier", [4], 4),
    ]


# Subscribed consumers -----------------------------------------------------------------------------


def test_a_slow_consumer_delays_neither_publishing_nor_another_consumer() -> None:
    stream, db, _ = make()
    slow = Held()
    fast: list[StreamBatch] = []
    stream.subscribe("slow", slow)
    stream.subscribe("fast", lambda b: Deferred.fromCoroutine(record(fast, b)))
    for p in range(1, 6):
        commit(stream, db, p)
    assert seen(fast) == [1, 2, 3, 4, 5]  # each as it came
    assert seen(slow.batches) == [1]  # still on its first batch
    slow.release()
    # The rest arrives merged into one batch, in order.
    assert [(b.after, b.upto) for b in slow.batches] == [(0, 1), (1, 5)]
    assert seen(slow.batches) == [1, 2, 3, 4, 5]
    slow.release()
    assert db.reads == []  # never needed the database


def test_a_consumer_far_behind_catches_up_from_the_database_then_rejoins(monkeypatch: Any) -> None:
    monkeypatch.setattr(event_stream, "MAX_QUEUED_EVENTS", 10)
    monkeypatch.setattr(event_stream, "CATCH_UP_PAGE", 4)
    stream, db, _ = make()
    slow = Held()
    consumer = stream.subscribe("slow", slow)
    commit(stream, db, 1)
    for p in range(2, 30):
        commit(stream, db, p)  # far past its queue: it stops being queued for
    assert consumer.behind
    slow.release()  # done with 1: it reads the rest in pages of 4
    while slow.waiting:
        slow.release()
        if consumer.position == 25:
            commit(stream, db, 30)  # published while it reads: not queued, read later
    assert seen(slow.batches) == list(range(1, 31))
    assert consumer.position == 30 and not consumer.behind
    assert db.reads[0] == (1, 29)
    commit(stream, db, 31)  # queued again
    reads = len(db.reads)
    slow.release()
    assert seen(slow.batches)[-1] == 31 and len(db.reads) == reads


def test_a_non_durable_consumers_failed_batch_is_logged_and_skipped() -> None:
    stream, db, _ = make()
    got: list[StreamBatch] = []

    async def flaky(batch: StreamBatch) -> None:
        got.append(batch)
        if batch.upto == 1:
            raise RuntimeError("on purpose")

    stream.subscribe("flaky", flaky)
    commit(stream, db, 1)
    commit(stream, db, 2)
    assert seen(got) == [1, 2]


# Durable consumers ----------------------------------------------------------------------------------


def test_a_durable_consumer_starts_at_the_stream_position_and_saves_its_own() -> None:
    db = Database()
    db.items = [Item(p) for p in (1, 2, 3)]
    stream, db, _ = make(db)
    got: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable("pusher", lambda b: Deferred.fromCoroutine(record(got, b)))
    )
    assert db.positions["pusher"] == (3, 3)  # what came before it is not its business
    commit(stream, db, 4)
    assert seen(got) == [4]
    # Marked as handed before the handler ran, then done.
    assert db.saves[-2:] == [("pusher", 3, 4), ("pusher", 4, 4)]


def test_a_durable_consumer_from_the_start_reads_everything() -> None:
    db = Database()
    db.items = [Item(p) for p in (1, 2, 3)]
    stream, db, _ = make(db)
    got: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable("audit", lambda b: Deferred.fromCoroutine(record(got, b)), from_start=True)
    )
    assert seen(got) == [1, 2, 3]
    assert db.positions["audit"] == (3, 3)


def test_after_a_crash_only_the_batch_in_flight_is_handed_again_and_marked() -> None:
    db = Database()
    stream, db, _ = make(db)
    first = Held()
    Deferred.fromCoroutine(stream.subscribe_durable("pusher", first))
    commit(stream, db, 1, 2)
    first.release()
    commit(stream, db, 3)
    commit(stream, db, 4)  # queued behind 3
    assert seen(first.batches) == [1, 2, 3]
    # The process dies here, handling 3 (4 was queued, never handed).
    assert db.positions["pusher"] == (2, 3)
    commit(stream, db, 5)  # committed just before the crash

    stream, db, _ = make(db)  # a new process on the same database
    second: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable("pusher", lambda b: Deferred.fromCoroutine(record(second, b)))
    )
    assert seen(second) == [3, 4, 5]  # nothing lost
    repeated = [i.event.stream_ordering for b in second for i in b.items if b.maybe_repeated(i)]
    assert repeated == [3]  # and only what was in flight is marked as a possible repeat
    assert db.positions["pusher"] == (5, 5)


def test_events_a_consumer_does_not_want_cost_no_record_and_are_never_handed_again() -> None:
    db = Database()
    stream, db, clock = make(db)
    got: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable(
            "sender",
            lambda b: Deferred.fromCoroutine(record(got, b)),
            wants=lambda ev: ev.stream_ordering % 10 == 0,
        )
    )
    saves = len(db.saves)
    for p in range(1, 10):
        commit(stream, db, p)
    assert got == [] and len(db.saves) == saves  # no batch handed, nothing written per batch
    clock.advance(event_stream.LAZY_SAVE_S)
    assert db.positions["sender"] == (9, 9)  # the position follows, once, lazily
    commit(stream, db, 10, 11)
    assert seen(got) == [10]  # a wanted event is handed over, recorded as before
    assert db.saves[-2:] == [("sender", 9, 11), ("sender", 11, 11)]
    for p in range(12, 15):
        commit(stream, db, p)
    # The process dies before the lazy save: 12-14 are read again, dropped again.
    assert db.positions["sender"] == (11, 11)
    stream, db, _ = make(db)
    again: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable(
            "sender",
            lambda b: Deferred.fromCoroutine(record(again, b)),
            wants=lambda ev: ev.stream_ordering % 10 == 0,
        )
    )
    assert again == []


def test_an_idempotent_consumer_writes_no_hand_over_record_and_saves_its_position_lazily() -> None:
    db = Database()
    stream, db, clock = make(db)
    got: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable("index", lambda b: Deferred.fromCoroutine(record(got, b)), idempotent=True)
    )
    saves = len(db.saves)
    for p in range(1, 6):
        commit(stream, db, p)
    assert seen(got) == [1, 2, 3, 4, 5] and len(db.saves) == saves
    clock.advance(event_stream.LAZY_SAVE_S)
    assert db.saves[saves:] == [("index", 5, 5)]
    commit(stream, db, 6)
    # Dies before the next lazy save: 6 comes again (harmless for this consumer).
    stream, db, _ = make(db)
    again: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable("index", lambda b: Deferred.fromCoroutine(record(again, b)), idempotent=True)
    )
    assert seen(again) == [6]


def test_an_idempotent_consumer_that_is_never_idle_still_saves_its_position_lazily() -> None:
    # Under a steady load (or catching up a long backlog) there is always a next batch: the
    # position must still be saved within LAZY_SAVE_S, or a crash replays everything since
    # the consumer was last idle (for the search index started from_start: the whole stream).
    stream, db, clock = make()
    handler = Held()
    Deferred.fromCoroutine(stream.subscribe_durable("index", handler, idempotent=True))
    saves = len(db.saves)
    commit(stream, db, 1)
    for p in range(2, 7):
        commit(stream, db, p)
        handler.release()  # batch p-1 handled while p is already queued: never idle
        clock.advance(event_stream.LAZY_SAVE_S / 2)
    assert db.saves[saves:], "no position saved in 2.5 s of steady work"
    assert db.positions["index"][0] >= 3


def test_a_gathering_consumer_woken_from_idle_waits_and_gets_that_times_events_in_one_batch() -> None:
    stream, db, clock = make()
    got: list[StreamBatch] = []
    consumer = stream.subscribe("pusher", lambda b: Deferred.fromCoroutine(record(got, b)), gather_s=0.002)
    commit(stream, db, 1)
    commit(stream, db, 2)
    assert got == []  # not inside the publishing
    clock.advance(0.002)
    assert [seen([b]) for b in got] == [[1, 2]]
    # Someone waiting for the consumer ends the wait at once.
    commit(stream, db, 3)
    reached = consumer.reached(3)
    assert reached.called and seen(got) == [1, 2, 3]


def test_a_consumer_stopped_before_its_lazy_save_saves_at_stop() -> None:
    db = Database()
    stream, db, _ = make(db)
    Deferred.fromCoroutine(
        stream.subscribe_durable(
            "sender", lambda b: Deferred.fromCoroutine(record([], b)), wants=lambda ev: False
        )
    )
    commit(stream, db, 1, 2)
    Deferred.fromCoroutine(stream.stop())
    assert db.positions["sender"] == (2, 2)


def test_a_durable_consumers_failed_batch_is_retried_after_a_pause() -> None:
    stream, db, clock = make()
    attempts: list[int] = []

    async def flaky(batch: StreamBatch) -> None:
        attempts.append(batch.upto)
        if len(attempts) < 3:
            raise RuntimeError("the gateway is down")

    consumer_d = Deferred.fromCoroutine(stream.subscribe_durable("pusher", flaky))
    consumer = consumer_d.result
    commit(stream, db, 1)
    assert attempts == [1] and consumer.position == 0
    commit(stream, db, 2)  # new events do not cut the pause short
    assert attempts == [1]
    clock.advance(event_stream.RETRY_MIN_S)
    assert attempts == [1, 1]
    clock.advance(event_stream.RETRY_MIN_S * 2)
    assert attempts == [1, 1, 1, 2]
    assert consumer.position == 2 and db.positions["pusher"] == (2, 2)


def test_stopping_saves_the_position_of_what_was_handled() -> None:
    stream, db, _ = make()
    held = Held()
    Deferred.fromCoroutine(stream.subscribe_durable("pusher", held))
    commit(stream, db, 1)
    commit(stream, db, 2)
    stopped = Deferred.fromCoroutine(stream.stop())
    assert not stopped.called  # the batch in hand is finished first
    held.release()
    assert stopped.called
    assert db.positions["pusher"] == (1, 1)  # 2 was never handed: the next run starts there


# Holds: work that goes on after the handler returned ----------------------------------------------


class Holder:
    """A handler that takes a hold on every batch and returns at once (a pusher that still has
    requests in flight); the test releases the holds one by one."""

    def __init__(self) -> None:
        self.batches: list[StreamBatch] = []
        self.releases: dict[int, Any] = {}

    async def __call__(self, batch: StreamBatch) -> None:
        self.batches.append(batch)
        self.releases[batch.upto] = batch.hold()


def test_a_held_batch_keeps_the_saved_position_behind_it_while_later_batches_are_handed_over() -> None:
    stream, db, _ = make()
    holder = Holder()
    consumer = Deferred.fromCoroutine(stream.subscribe_durable("pusher", holder)).result
    commit(stream, db, 1)
    commit(stream, db, 2)
    commit(stream, db, 3)
    assert seen(holder.batches) == [1, 2, 3]  # nothing waits for the holds
    assert consumer.handled_upto == 3
    assert consumer.position == 0 and db.positions["pusher"] == (0, 3)
    reached = consumer.reached(2)

    holder.releases[2]()  # a later batch settles first: the position still waits for 1
    assert consumer.position == 0 and not reached.called
    holder.releases[1]()
    assert consumer.position == 2 and reached.called
    assert db.positions["pusher"] == (2, 3)  # saved on release, without waiting for a new batch
    holder.releases[1]()  # a second call does nothing
    holder.releases[3]()
    assert consumer.position == 3 and db.positions["pusher"] == (3, 3)


def test_a_batch_with_several_holds_settles_only_when_the_last_is_released() -> None:
    stream, db, _ = make()
    releases: list[Any] = []

    async def two_holds(batch: StreamBatch) -> None:
        releases.extend([batch.hold(), batch.hold()])

    consumer = Deferred.fromCoroutine(stream.subscribe_durable("pusher", two_holds)).result
    commit(stream, db, 1)
    releases[0]()
    assert consumer.position == 0
    releases[1]()
    assert consumer.position == 1 and db.positions["pusher"] == (1, 1)


def test_after_a_crash_every_batch_with_a_hold_out_is_handed_again_and_marked() -> None:
    stream, db, _ = make()
    holder = Holder()
    Deferred.fromCoroutine(stream.subscribe_durable("pusher", holder))
    commit(stream, db, 1)
    commit(stream, db, 2)
    commit(stream, db, 3)
    holder.releases[1]()
    holder.releases[3]()  # 2 is still out when the process dies
    assert db.positions["pusher"] == (1, 3)

    stream, db, _ = make(db)  # a new process on the same database
    second: list[StreamBatch] = []
    Deferred.fromCoroutine(
        stream.subscribe_durable("pusher", lambda b: Deferred.fromCoroutine(record(second, b)))
    )
    assert seen(second) == [2, 3]  # 1 settled before the crash: not handed again
    assert all(b.maybe_repeated(i) for b in second for i in b.items)
    assert db.positions["pusher"] == (3, 3)


def test_stopping_with_holds_out_saves_only_what_settled() -> None:
    stream, db, _ = make()
    holder = Holder()
    consumer = Deferred.fromCoroutine(stream.subscribe_durable("pusher", holder)).result
    commit(stream, db, 1)
    commit(stream, db, 2)
    holder.releases[2]()
    stopped = Deferred.fromCoroutine(stream.stop())
    assert stopped.called
    assert db.positions["pusher"] == (0, 2)  # both come again, marked, after the restart
    holder.releases[1]()  # after the stop: remembered in memory, not written
    assert consumer.position == 2 and db.positions["pusher"] == (0, 2)


def test_a_non_durable_consumers_holds_move_what_reached_waits_for() -> None:
    stream, db, _ = make()
    holder = Holder()
    consumer = stream.subscribe("plugin.x.events", holder)
    commit(stream, db, 1)
    reached = consumer.reached(1)
    assert not reached.called and db.saves == []
    holder.releases[1]()
    assert reached.called and db.saves == []


@pytest.mark.parametrize("outage", ["database down", "disk full"])
def test_a_database_outage_is_logged_in_one_line_and_retried_often_enough_to_resume_soon(
    outage: str,
) -> None:
    """A consumer whose writes fail while the database is down or its disk is full (the search
    indexer behind a full disk) logs each try as one line, no traceback, and resumes within
    RETRY_MAX_OUTAGE_S of the database's return."""
    from twisted.logger import globalLogPublisher

    from homeserver.errors import StorageFull
    from homeserver.storage.connection_pool import DatabaseUnavailable

    stream, db, clock = make()
    database_down = True
    handled: list[int] = []

    async def indexer(batch: StreamBatch) -> None:
        if database_down:
            raise DatabaseUnavailable() if outage == "database down" else StorageFull()
        handled.append(batch.upto)

    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        consumer = Deferred.fromCoroutine(stream.subscribe_durable("indexer", indexer)).result
        commit(stream, db, 1)
        clock.pump([1.0] * 600)  # ten minutes without a database
        database_down = False
        clock.advance(event_stream.RETRY_MAX_OUTAGE_S)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert handled == [1] and consumer.position == 1
    failures = [e for e in logged if "failed on events" in e.get("log_format", "")]
    assert failures and all("log_failure" not in e for e in failures)  # no traceback
    # Retried every RETRY_MAX_OUTAGE_S at most, not minutes apart: and not a storm either.
    assert (
        600 / event_stream.RETRY_MAX_OUTAGE_S <= len(failures) <= 600 / event_stream.RETRY_MAX_OUTAGE_S + 10
    )


def test_a_handlers_gathering_pause_ends_when_someone_waits_for_the_consumer() -> None:
    stream, db, clock = make()
    got: list[StreamBatch] = []
    consumer: list[Any] = []

    async def gather(batch: StreamBatch) -> None:
        got.append(batch)
        await consumer[0].pause(60.0)

    consumer.append(stream.subscribe("index", lambda b: Deferred.fromCoroutine(gather(b))))
    commit(stream, db, 1)
    commit(stream, db, 2)  # queued while the handler gathers
    assert seen(got) == [1]
    reached = consumer[0].reached(2)
    # The waiter ended the pause without the clock moving, and the next batch does not
    # pause while someone waits.
    assert seen(got) == [1, 2] and reached.called
    commit(stream, db, 3)
    assert seen(got) == [1, 2, 3] and consumer[0].position == 2  # nobody waits: it gathers
    clock.advance(60.0)
    assert consumer[0].position == 3
