"""Fencing an event writer on PostgreSQL (storage/stream_writers.py, sql/099, 100, ADR 0008).

- a writer whose lock a process holds cannot be fenced; once that session ends it can;
- once fenced, none of its saves is stored: a commit carrying its promise rolls back whole
  (its events with it), a save outside a commit and a graceful retirement refuse;
- a fence and a writer's commit racing on its row: a fence that waits for the commit retires
  at the committed promise (above its events); a commit that waits for the fence refuses;
- two writers fencing the same one at once: one fences; the other reads the same position
  or finds the lock taken (and tries again later);
- restarted, the writer rejoins: its saves are stored again;
- an earlier instance still running once its replacement has rejoined (it was fenced while
  stopped or cut off, and resumed): none of its saves is stored, nor its retirement.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from homeserver.storage.connection_pool import DatabaseUnavailable
from homeserver.storage.database import Database, engine_from_url
from homeserver.storage.events import EventStore, PersistItem, StoredEvent
from homeserver.storage.migrations import migrate
from homeserver.storage.stream_writers import StreamWriterStore, WriterFenced
from homeserver.storage.writer_lock import WriterLock


def item(position: int) -> PersistItem:
    pdu = {
        "type": "m.room.message",
        "room_id": "!r:x",
        "sender": "@a:x",
        "content": {"body": str(position)},
        "depth": 1,
        "origin_server_ts": 1,
        "prev_events": [],
        "auth_events": [],
    }
    return PersistItem(StoredEvent(f"$e{position}", "!r:x", position, pdu), "10")


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(engine_from_url(pg_url, 1, 4))
    yield database
    database.close()


def raw(pg_url: str) -> Any:
    conn = psycopg2.connect(pg_url)
    conn.autocommit = False
    return conn


async def stored_positions(db: Database) -> list[int]:
    return [int(r[0]) for r in await db.query("t", "SELECT stream_ordering FROM events ORDER BY 1")]


async def setup(db: Database) -> StreamWriterStore:
    await migrate(db)
    await db.execute("t", "INSERT INTO rooms (room_id, room_version, created_ts) VALUES ('!r:x', '10', 1)")
    store = StreamWriterStore(db)
    await store.save("w1", 10)
    await store.save("w2", 11)
    return store


async def until_waiting(db: Database) -> None:
    """Until a session waits for a row lock (the other transaction holds it)."""
    from twisted.internet import reactor

    for _ in range(500):
        rows = await db.query("t", "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        if rows[0][0]:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("no session waited for the lock")


@pytest_twisted.ensureDeferred
async def test_a_fenced_writer_stores_nothing_more(db: Database, pg_url: str) -> None:
    from twisted.internet import reactor

    store = await setup(db)
    events = EventStore(db)
    lock = WriterLock(pg_url, "w1", reactor)
    await lock.hold()
    assert await store.fence("w1") is None  # its process holds its lock: alive
    assert await store.retired() == {}
    await events.persist_events([item(13)], ("w1", 15, 0))
    assert (await store.promises())["w1"] == 15

    lock.close()  # its session ends (killed, or the lease ran out while it was stopped)
    for _ in range(200):
        at = await store.fence("w1")
        if at is not None:
            break
        await deferLater(reactor, 0.02, lambda: None)
    assert at == 15 and await store.retired() == {"w1": 15}

    # Whatever it still had in flight: refused, and its events rolled back with the save.
    with pytest.raises(WriterFenced):
        await events.persist_events([item(17)], ("w1", 19, 0))
    with pytest.raises(WriterFenced):
        await store.save("w1", 21)
    with pytest.raises(WriterFenced):
        await store.retire("w1", 21)
    assert await stored_positions(db) == [13]
    assert await store.promises() == {"w1": 15, "w2": 11}
    assert await store.fence("w1") == 15  # fenced already: the same position

    # Restarted: it takes its lock and rejoins, and writes again.
    lock = WriterLock(pg_url, "w1", reactor)
    await lock.hold()
    epoch = await store.rejoin("w1")
    await events.persist_events([item(23)], ("w1", 25, epoch))
    assert await stored_positions(db) == [13, 23]
    assert await store.retired() == {}
    lock.close()


@pytest_twisted.ensureDeferred
async def test_a_fence_waiting_for_a_commit_retires_above_it(db: Database, pg_url: str) -> None:
    store = await setup(db)
    writer = raw(pg_url)
    try:
        with writer.cursor() as cur:  # w1's commit, its promise saved, not yet committed
            cur.execute("SELECT stream_writer_save('w1', 31, 0)")
        fencing = Deferred.fromCoroutine(store.fence("w1"))  # waits for the row
        await until_waiting(db)
        assert not fencing.called
        await deferToThread(writer.commit)
        assert await fencing == 31
    finally:
        writer.close()


@pytest_twisted.ensureDeferred
async def test_a_commit_waiting_for_a_fence_is_refused(db: Database, pg_url: str) -> None:
    await setup(db)
    fencer = raw(pg_url)
    writer = raw(pg_url)
    try:
        with fencer.cursor() as cur:
            cur.execute("UPDATE stream_writers SET retired_at = position WHERE name = 'w1'")
        outcome: list[str] = []

        def commit() -> None:
            try:
                with writer.cursor() as cur:
                    cur.execute("SELECT stream_writer_save('w1', 41, 0)")  # waits for the fence
                writer.commit()
                outcome.append("stored")
            except psycopg2.Error as e:
                writer.rollback()
                outcome.append(str(e.pgcode))

        thread = threading.Thread(target=commit)
        thread.start()
        await until_waiting(db)
        assert outcome == []
        await deferToThread(fencer.commit)
        await deferToThread(thread.join)
        assert outcome == ["HSF01"]
    finally:
        fencer.close()
        writer.close()
    assert (await StreamWriterStore(db).promises())["w1"] == 10


@pytest_twisted.ensureDeferred
async def test_two_writers_fencing_one_agree(db: Database) -> None:
    from twisted.internet.defer import gatherResults

    store = await setup(db)
    results = await gatherResults([Deferred.fromCoroutine(store.fence("w1")) for _ in range(2)])
    # The second either read the first's retirement, or found the lock taken by the first's
    # transaction (so, to it, alive: it tries again at its next heartbeat).
    assert 10 in results and set(results) <= {10, None}
    assert await store.fence("w1") == 10
    assert await store.retired() == {"w1": 10}


@pytest_twisted.ensureDeferred
async def test_an_earlier_instance_stores_nothing_once_the_writer_restarted(
    db: Database, pg_url: str
) -> None:
    from twisted.internet import reactor

    await setup(db)
    events = EventStore(db)
    old = StreamWriterStore(db)  # the first instance of w1, in its own process
    lock = WriterLock(pg_url, "w1", reactor)
    await lock.hold()
    old_epoch = await old.rejoin("w1")
    await events.persist_events([item(13)], ("w1", 15, old_epoch))
    lock.close()  # stopped past its lease (or cut off): its session ends, it is fenced
    fencer = StreamWriterStore(db)
    for _ in range(200):
        if await fencer.fence("w1") is not None:
            break
        await deferLater(reactor, 0.02, lambda: None)
    assert await fencer.retired() == {"w1": 15}

    # Its replacement starts (the supervisor saw it unanswering) and rejoins: not retired.
    new = StreamWriterStore(db)
    lock = WriterLock(pg_url, "w1", reactor)
    await lock.hold()
    new_epoch = await new.rejoin("w1")
    await events.persist_events([item(23)], ("w1", 25, new_epoch))

    # The first resumes, not knowing: its commit in flight would land below where the readers
    # already are (carried past 15, then the new instance's 25), unseen by every sync.
    with pytest.raises(WriterFenced):
        await events.persist_events([item(17)], ("w1", 19, old_epoch))
    with pytest.raises(WriterFenced):
        await old.save("w1", 21)
    with pytest.raises(WriterFenced):  # nor does its graceful stop retire the new instance
        await old.retire("w1", 21)
    assert await stored_positions(db) == [13, 23]
    assert await new.retired() == {}
    assert (await new.promises())["w1"] == 25
    await new.save("w1", 27)
    lock.close()
    # A writer of the previous version (no epoch named) is the first instance: refused too.
    conn = raw(pg_url)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.Error) as refused:
            cur.execute("SELECT stream_writer_save('w1', 29)")
        assert refused.value.pgcode == "HSF01"
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_writer_stopped_inside_a_transaction_does_not_block_its_fence(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stopped between its promise save and its COMMIT holds its row: PostgreSQL
    ends that session after IDLE_IN_TRANSACTION_S (its save rolls back with it), and the
    fence goes through, instead of timing out at every heartbeat while the writer is away."""
    import homeserver.storage.database as database

    monkeypatch.setattr(database, "IDLE_IN_TRANSACTION_S", 1.0)
    db = Database(engine_from_url(pg_url, 1, 4))
    stopped = threading.Event()
    try:
        store = await setup(db)

        def save_then_stop(txn: Any) -> None:
            txn.execute("SELECT stream_writer_save('w1', 31, 0)")  # holds w1's row
            stopped.wait(30)  # the process stopped (SIGSTOP) before its COMMIT
            txn.execute("SELECT 1")

        paused = Deferred.fromCoroutine(db.run_interaction("t", save_then_stop))
        await until_waiting_in_transaction(db)
        fenced_at = None
        for _ in range(5):  # each try waits up to its 2 s lock timeout
            try:
                fenced_at = await store.fence("w1")
                break
            except psycopg2.errors.LockNotAvailable:
                continue
        assert fenced_at == 10  # the stopped save was rolled back with its session
        assert not stopped.is_set()
    finally:
        stopped.set()
        try:
            await paused
        except (psycopg2.Error, DatabaseUnavailable):
            # Its session is gone: the resumed transaction fails, as it must. On a thread whose
            # connection was pooled before, the pool runs it once more on a new connection and
            # the fenced save is refused (psycopg2.Error); on a thread whose connection was new,
            # the pool gives up at once (DatabaseUnavailable). Which thread takes it is luck.
            pass
        db.close()


async def until_waiting_in_transaction(db: Database) -> None:
    from twisted.internet import reactor

    for _ in range(500):
        rows = await db.query(
            "t",
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = current_database()",
        )
        if rows[0][0]:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("no session stayed inside its transaction")
