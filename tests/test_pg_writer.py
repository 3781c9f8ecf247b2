"""The writer connection (storage/pg_writer.py): a commit's writes as one query string, sent
from the reactor thread, with the same answers as the pool when things break.

Real PostgreSQL behind tests/pg_proxy.py, which records every query string and can break the
connection at chosen moments.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
import pytest_twisted
from conftest import free_port
from pg_proxy import PgProxy
from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred

from homeserver.storage.connection_pool import CommitOutcomeUnknown, DatabaseUnavailable
from homeserver.storage.database import Database, Txn, engine_from_url
from homeserver.storage.pg_writer import PgWriter


@pytest.fixture
def db(pg_url: str, proxy: PgProxy) -> Iterator[Database]:
    database = Database(engine_from_url(proxy.url_for(pg_url), 1, 1))
    yield database
    database.close()


def write_notes(txn: Txn, ids: list[int], text: str) -> None:
    with txn.batched(commit=True):
        txn.insert_many("notes", ("id", "body"), [(i, text) for i in ids])
        txn.execute("UPDATE counters SET n = n + ? WHERE name = 'notes'", (len(ids),))


async def make_tables(db: Database) -> None:
    await db.execute("create", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    await db.execute("create", "CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    await db.execute("seed", "INSERT INTO counters (name, n) VALUES ('notes', 0)")
    # The first write of a shape looks up its column types, through the pool.
    await db.run_write("notes", write_notes, [0], "warm")


async def stored(db: Database) -> tuple[list[tuple[int, str]], int]:
    notes = await db.query("notes", "SELECT id, body FROM notes ORDER BY id")
    counter = await db.query("count", "SELECT n FROM counters WHERE name = 'notes'")
    return [(int(i), str(b)) for i, b in notes], int(counter[0][0])


@pytest_twisted.ensureDeferred
async def test_a_write_is_one_query_string_that_ends_in_commit(db: Database, proxy: PgProxy) -> None:
    await make_tables(db)
    before = len(proxy.queries)
    await db.run_write("notes", write_notes, [1, 2], "50% off")  # a % in a value
    sent = proxy.queries[before:]
    assert len(sent) == 1, sent
    assert sent[0].startswith(b"BEGIN;") and sent[0].endswith(b";COMMIT")
    assert b"PREPARE" in sent[0]  # the INSERT's plan, once per connection

    await db.run_write("notes", write_notes, [3], "again")
    again = proxy.queries[before + 1 :]
    assert len(again) == 1 and b"PREPARE" not in again[0] and b"EXECUTE" in again[0]
    assert await stored(db) == ([(0, "warm"), (1, "50% off"), (2, "50% off"), (3, "again")], 4)


@pytest_twisted.ensureDeferred
async def test_a_refused_write_rolls_back_whole_and_the_connection_goes_on(db: Database) -> None:
    await make_tables(db)
    await db.run_write("notes", write_notes, [1], "first")
    with pytest.raises(psycopg2.Error) as refused:
        await db.run_write("notes", write_notes, [2, 1], "duplicate key")
    assert db.is_unique_violation(refused.value)
    # Nothing of the refused transaction stayed: not note 2, not the counter's increment.
    assert await stored(db) == ([(0, "warm"), (1, "first")], 2)
    await db.run_write("notes", write_notes, [2], "after")
    assert await stored(db) == ([(0, "warm"), (1, "first"), (2, "after")], 3)


@pytest_twisted.ensureDeferred
async def test_a_commit_without_an_answer_is_unknown_and_was_stored(db: Database, proxy: PgProxy) -> None:
    await make_tables(db)
    proxy.break_after_commit_of(b"lost answer")
    with pytest.raises(CommitOutcomeUnknown):
        await db.run_write("notes", write_notes, [1], "lost answer")
    assert proxy.broken_commits == 1
    assert await stored(db) == ([(0, "warm"), (1, "lost answer")], 2)
    await db.run_write("notes", write_notes, [2], "next")  # on a new connection
    assert (await stored(db))[1] == 3


@pytest_twisted.ensureDeferred
async def test_a_write_that_never_left_is_unavailable_and_stored_nothing(
    db: Database, proxy: PgProxy
) -> None:
    await make_tables(db)
    proxy.go_down()
    await until(lambda: not db._writer.connected)
    with pytest.raises(DatabaseUnavailable):
        await db.run_write("notes", write_notes, [1], "while down")
    proxy.come_back()
    await db.run_write("notes", write_notes, [2], "back")
    assert await stored(db) == ([(0, "warm"), (2, "back")], 2)


@pytest_twisted.ensureDeferred
async def test_a_connection_the_server_ends_while_idle_is_replaced(db: Database, pg_url: str) -> None:
    await make_tables(db)
    writer = db._writer
    pid = writer.backend_pid()
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        admin.close()
    await until(lambda: not writer.connected)  # noticed while idle, not by the next write
    await db.run_write("notes", write_notes, [1], "after")
    assert writer.backend_pid() != pid
    assert (await stored(db))[0][-1] == (1, "after")


@pytest_twisted.ensureDeferred
async def test_a_connect_that_is_refused_is_unavailable_at_once() -> None:
    # Nothing listens on the port, as while PostgreSQL is stopped: the socket hangs up
    # without a byte to read, and the reactor reports that only through connectionLost.
    writer = PgWriter(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", reactor)
    timed_out: list[float] = []

    def gave_up(result: object, timeout: float) -> object:
        timed_out.append(timeout)  # the cancelled connect would read as unavailable too
        return result

    try:
        for _ in range(2):
            attempt = ensureDeferred(writer.run([], "SELECT 1", ()))
            attempt.addTimeout(5, reactor, onTimeoutCancel=gave_up)  # else it waits forever
            with pytest.raises(DatabaseUnavailable):
                await attempt
        assert not timed_out
    finally:
        writer.close()


async def until(condition: object, timeout_s: float = 10.0) -> None:
    """Let the reactor run until `condition()` holds (it waits on a socket, not a timer)."""
    assert callable(condition)
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met")
