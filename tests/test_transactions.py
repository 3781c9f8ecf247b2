"""Transactions as the stores see them (homeserver.storage.database.Txn), on both engines:
batched writes land together or not at all, a failed transaction leaves the connection clean
for the next, and on PostgreSQL a batch or a lone statement costs the round trips it should."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from homeserver.storage import database
from homeserver.storage.database import Database, Txn, engine_from_url


@pytest_twisted.async_yield_fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    d = Database(engine_from_url(database_url, pool_min=1, pool_max=1))
    await d.execute("create", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    blob = "BYTEA" if d.dialect == "postgres" else "BLOB"
    await d.execute("create", f"CREATE TABLE blobs (id INTEGER PRIMARY KEY, data {blob} NOT NULL)")
    try:
        yield d
    finally:
        d.close()


async def bodies(db: Database) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in await db.query("bodies", "SELECT id, body FROM notes ORDER BY id")]


@pytest_twisted.ensureDeferred
async def test_batched_writes_land_in_order(db: Database) -> None:
    def write(txn: Txn) -> None:
        with txn.batched():
            txn.insert_many("notes", ("id", "body"), [(1, "one"), (2, "it's 100%")])
            txn.execute("UPDATE notes SET body = ? WHERE id = ?", ("uno", 1))
            # bytes cannot travel as JSON: this INSERT goes on its own, after the ones above
            txn.insert_many("blobs", ("id", "data"), [(1, b"\x00\xff")])
            txn.insert_many("notes", ("id", "body"), [(3, "three")])
            txn.execute("DELETE FROM notes WHERE id = ?", (2,))

    await db.run_interaction("write", write)
    assert await bodies(db) == [(1, "uno"), (3, "three")]
    [(data,)] = await db.query("blob", "SELECT data FROM blobs")
    assert bytes(data) == b"\x00\xff"


@pytest_twisted.ensureDeferred
async def test_a_failing_batch_stores_nothing_and_the_connection_goes_on(db: Database) -> None:
    await db.execute("seed", "INSERT INTO notes (id, body) VALUES (5, 'kept')")

    def clash(txn: Txn) -> None:
        with txn.batched():
            txn.insert_many("notes", ("id", "body"), [(1, "first")])
            txn.insert_many("notes", ("id", "body"), [(5, "duplicate")])  # fails at the end
            txn.insert_many("notes", ("id", "body"), [(6, "after")])

    with pytest.raises(Exception) as caught:  # noqa: PT011 - each engine has its own class
        await db.run_interaction("clash", clash)
    assert db.is_unique_violation(caught.value)
    # The pool's one connection is not left inside the failed transaction.
    assert await bodies(db) == [(5, "kept")]
    await db.execute("after", "INSERT INTO notes (id, body) VALUES (7, 'later')")
    assert await bodies(db) == [(5, "kept"), (7, "later")]


@pytest_twisted.ensureDeferred
async def test_a_failing_lone_statement_leaves_no_transaction_open(db: Database) -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - each engine has its own class
        await db.query("bad", "SELECT no_such_column FROM notes")

    def two_writes(txn: Txn) -> int:
        txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "a"))
        txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (2, "b"))
        return txn.rowcount

    assert await db.run_interaction("two", two_writes) == 1
    assert await bodies(db) == [(1, "a"), (2, "b")]


@pytest_twisted.ensureDeferred
async def test_reading_inside_a_batch_is_refused(db: Database) -> None:
    def read_in_batch(txn: Txn) -> Any:
        with txn.batched():
            txn.insert_many("notes", ("id", "body"), [(1, "one")])
            return txn.query("SELECT body FROM notes")

    with pytest.raises(RuntimeError, match="batched"):
        await db.run_interaction("read", read_in_batch)
    assert await bodies(db) == []


class _CountingConnection:
    """A psycopg2 connection that notes the first word of every query string it sends."""

    def __init__(self, raw: Any, log: list[str]) -> None:
        self.__dict__.update(raw=raw, log=log)

    def cursor(self) -> Any:
        return _CountingCursor(self.raw.cursor(), self.log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.raw, name, value)


class _CountingCursor:
    def __init__(self, raw: Any, log: list[str]) -> None:
        self._raw = raw
        self._log = log

    def execute(self, sql: Any, args: Any = None) -> None:
        text = sql.decode() if isinstance(sql, bytes) else sql
        self._log.append(text.split(None, 1)[0].split(";")[0].upper())
        self._raw.execute(sql, args)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


@pytest_twisted.ensureDeferred
async def test_postgres_round_trips(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg2

    sent: list[str] = []
    monkeypatch.setattr(
        database.PostgresEngine,
        "_connect",
        lambda self: database._PgConnection(_CountingConnection(psycopg2.connect(self.url), sent)),  # noqa: SLF001
    )
    db = Database(engine_from_url(pg_url, pool_min=1, pool_max=1))
    try:
        await db.execute("create", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        sent.clear()
        await db.query("read", "SELECT count(*) FROM notes")
        assert sent == ["SELECT"]  # a lone read: no BEGIN, no COMMIT

        sent.clear()
        await db.execute("write", "DELETE FROM notes WHERE id = ?", -1)
        # A lone write still inside BEGIN ... COMMIT: were its answer lost after it committed,
        # the pool could not tell, and its retry on a lost connection could store it twice.
        assert sent == ["BEGIN", "COMMIT"]

        sent.clear()

        def four_inserts(txn: Txn, first: int) -> None:
            with txn.batched():
                for i in range(first, first + 4):
                    txn.insert_many("notes", ("id", "body"), [(i, "x")])

        await db.run_interaction("batch", four_inserts, 100)  # looks up the column types once
        sent.clear()
        await db.run_interaction("batch", four_inserts, 0)
        assert sent == ["BEGIN", "COMMIT"]  # BEGIN and the four INSERTs in one string, then COMMIT

        sent.clear()

        def read_then_write(txn: Txn) -> None:
            (n,) = txn.query_one("SELECT count(*) FROM notes") or (0,)
            txn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (n, "y"))

        await db.run_interaction("rw", read_then_write)
        assert sent == ["BEGIN", "INSERT", "COMMIT"]
        assert len(await db.query("all", "SELECT id FROM notes")) == 9
    finally:
        db.close()
