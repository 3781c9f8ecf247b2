"""The database connection pool (homeserver.storage.connection_pool) under Database, on both
engines: transactions commit or roll back as a whole, threads run side by side up to the
pool's size, a connection the database server dropped is replaced without losing or doubling a
write, and a transaction leaves no reference cycle behind for the garbage collector."""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from homeserver.storage.connection_pool import DatabaseUnavailable
from homeserver.storage.database import Database, Txn, engine_from_url
from homeserver.threads import PoolClosed


async def make_db(url: str, size: int) -> Database:
    db = Database(engine_from_url(url, pool_min=1, pool_max=size))
    await db.execute("create_table", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    return db


@pytest_twisted.async_yield_fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    d = await make_db(database_url, 3)
    try:
        yield d
    finally:
        d.close()


async def bodies(db: Database) -> list[str]:
    return [r[0] for r in await db.query("bodies", "SELECT body FROM notes ORDER BY id")]


@pytest_twisted.ensureDeferred
async def test_commit_on_return_rollback_on_error(db: Database) -> None:
    def write_then_fail(txn: Txn) -> None:
        txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "half"))
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await db.run_interaction("fails", write_then_fail)
    assert await bodies(db) == []  # the first INSERT went with the rollback

    def write_two(txn: Txn) -> int:
        txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "one"))
        txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (2, "two"))
        return 2

    assert await db.run_interaction("writes", write_two) == 2
    assert await bodies(db) == ["one", "two"]


@pytest_twisted.ensureDeferred
async def test_a_database_error_reaches_the_caller_and_the_pool_goes_on(db: Database) -> None:
    await db.execute("insert", "INSERT INTO notes (id, body) VALUES (1, 'x')")
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each engine has its own class
        await db.execute("insert", "INSERT INTO notes (id, body) VALUES (1, 'again')")
    assert db.is_unique_violation(caught.value)
    for i in range(2, 12):  # every thread's connection still works after the failed one
        await db.execute("insert", "INSERT INTO notes (id, body) VALUES (?, ?)", i, str(i))
    assert len(await bodies(db)) == 11


@pytest_twisted.ensureDeferred
async def test_transactions_run_side_by_side_up_to_the_pool_size(pg_url: str) -> None:
    db = await make_db(pg_url, 3)
    try:
        # Three transactions that each wait for the other two: they finish only if the pool
        # runs three at once.
        barrier = threading.Barrier(3, timeout=10)

        def meet(txn: Txn, i: int) -> str:
            barrier.wait()
            return threading.current_thread().name

        names = await DeferredList(
            [Deferred.fromCoroutine(db.run_interaction("meet", meet, i)) for i in range(3)],
            fireOnOneErrback=True,
        )
        assert len({name for _, name in names}) == 3

        # A fourth while three are busy waits for a free thread instead of failing.
        gate = threading.Event()

        def hold(txn: Txn) -> None:
            assert gate.wait(10)

        held = [Deferred.fromCoroutine(db.run_interaction("hold", hold)) for _ in range(3)]
        fourth = Deferred.fromCoroutine(db.query("read", "SELECT count(*) FROM notes"))
        assert not fourth.called
        gate.set()
        assert (await fourth) == [(0,)]
        await DeferredList(held, fireOnOneErrback=True)
    finally:
        db.close()


def _terminate_backend(pg_url: str, pid: int) -> bool:
    """End one session from outside, as a server restart or an administrator would."""
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        (ended,) = cur.fetchone()
    conn.close()
    return bool(ended)


@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_is_replaced_and_the_write_lands_once(pg_url: str) -> None:
    db = await make_db(pg_url, 1)
    try:
        await db.execute("insert", "INSERT INTO notes (id, body) VALUES (1, 'before')")
        [(pid,)] = await db.query("pid", "SELECT pg_backend_pid()")  # the pool's one connection
        assert _terminate_backend(pg_url, pid)

        # The pooled connection is dead; the write runs again on a new one, exactly once.
        await db.execute("insert", "INSERT INTO notes (id, body) VALUES (2, 'after')")
        assert await bodies(db) == ["before", "after"]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_lost_mid_transaction_is_not_retried_twice(pg_url: str) -> None:
    db = await make_db(pg_url, 1)
    runs = 0

    def write_and_lose_connection(txn: Txn) -> None:
        nonlocal runs
        runs += 1
        txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (runs, "lost"))
        # The session ends itself: each run loses its connection, and the retry's too.
        txn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    try:
        await db.execute("warm", "SELECT 1")
        with pytest.raises(DatabaseUnavailable) as caught:
            await db.run_interaction("lose", write_and_lose_connection)
        assert isinstance(caught.value.__cause__, psycopg2.Error)
        assert runs == 2  # the stale-connection retry, then the error
        assert await bodies(db) == []  # neither run committed
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_transactions_leave_no_garbage_cycles(db: Database) -> None:
    for i in range(20):  # warm up: threads, connections, statement caches
        await db.execute("insert", "INSERT INTO notes (id, body) VALUES (?, ?)", i, "warm")
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(100, 300):
            await db.execute("insert", "INSERT INTO notes (id, body) VALUES (?, ?)", i, "x")
            await db.query("read", "SELECT body FROM notes WHERE id = ?", i)
        collected = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    # twisted.enterprise.adbapi left four objects in a cycle per transaction (1,600 here).
    assert collected < 100


@pytest_twisted.ensureDeferred
async def test_closed_pool_refuses_new_work(database_url: str) -> None:
    db = await make_db(database_url, 2)
    await db.execute("insert", "INSERT INTO notes (id, body) VALUES (1, 'kept')")
    db.close()
    with pytest.raises(PoolClosed):
        await db.query("read", "SELECT 1")
    reopened = Database(engine_from_url(database_url, pool_min=1, pool_max=1))
    try:
        assert await bodies(reopened) == ["kept"]
    finally:
        reopened.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_reruns_a_statement_at_most_once(pg_url: str) -> None:
    db = await make_db(pg_url, 1)
    # Sequences ignore rollbacks: `attempts` counts how often the statement really ran.
    await db.execute("seq", "CREATE SEQUENCE attempts")
    ends_itself = "SELECT nextval('attempts'), pg_terminate_backend(pg_backend_pid())"
    try:
        with pytest.raises(DatabaseUnavailable):
            await db.query("read", ends_itself)  # a read on a pooled connection: once more
        [(after_read,)] = await db.query("count", "SELECT last_value FROM attempts")
        assert after_read == 2

        # The same as a write: its transaction is ended by the lost connection before COMMIT,
        # so the pool runs it once more, and never a third time.
        with pytest.raises(DatabaseUnavailable):
            await db.execute("write", ends_itself)
        [(after_write,)] = await db.query("count", "SELECT last_value FROM attempts")
        assert after_write == 4
    finally:
        db.close()
