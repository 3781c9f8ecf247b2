"""Txn.insert_many on both engines: awkward values come back as they went in, suffixes
(ON CONFLICT ...) still apply, and on PostgreSQL the JSON-rows statement stores exactly
what the per-value VALUES statement (psycopg2's execute_values) stores."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2.extras import execute_values

from homeserver.storage.database import Database, PostgresEngine, Txn, _PgConnection, engine_from_url

BIG = 2**63 - 1
AWKWARD_TEXT = [
    "",
    " ",
    "NULL",
    "null",
    "it's",
    "''",
    'say "hi"',
    "back\\slash",
    "\\",
    "\\x00ff",
    "a,b",
    "{a,b}",
    "{}",
    "[1, 2]",
    '{"k": "v"}',
    "(1,2)",
    "%s %(x)s %% ?",
    "$1 $$ $hs$ :name",
    "line\nbreak\r\ttab\x01\x1f\x7f",
    "ünïcödé ∑ 漢字 🎉 \u200b \u202e rtl",
    "e\u0301",  # combining accent: no normalisation on the way
    "x" * 100_000,
]

PG_DDL = """CREATE TABLE awkward (
    id BIGINT PRIMARY KEY, t TEXT, n BIGINT, b BOOLEAN, j JSONB, raw BYTEA, f DOUBLE PRECISION)"""
SQLITE_DDL = """CREATE TABLE awkward (
    id INTEGER PRIMARY KEY, t TEXT, n INTEGER, b BOOLEAN, j TEXT, raw BLOB, f REAL)"""


@pytest_twisted.async_yield_fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    d = Database(engine_from_url(database_url, pool_min=1, pool_max=1))
    try:
        ddl = PG_DDL if d.dialect == "postgres" else SQLITE_DDL
        await d.execute("create_table", ddl)
        await d.execute("create_table", "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        yield d
    finally:
        d.close()


@pytest.fixture
def values_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements PostgresEngine.insert_many sent the per-value (execute_values) way."""
    import psycopg2.extras

    calls: list[str] = []
    real = psycopg2.extras.execute_values

    def spy(cur: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(sql)
        return real(cur, sql, *args, **kwargs)

    monkeypatch.setattr(psycopg2.extras, "execute_values", spy)
    return calls


async def insert(db: Database, table: str, columns: Sequence[str], rows: list[Any], suffix: str = "") -> None:
    def txn_fn(txn: Txn) -> None:
        txn.insert_many(table, columns, rows, suffix)

    await db.run_interaction("insert_many", txn_fn)


async def read_awkward(db: Database) -> list[tuple[Any, ...]]:
    # jsonb as text (psycopg2 would parse it): compared below as parsed JSON on both engines.
    j = "j::text" if db.dialect == "postgres" else "j"
    return await db.query("read", f"SELECT id, t, n, b, {j}, raw, f FROM awkward ORDER BY id")


def normalise(row: Sequence[Any]) -> tuple[Any, ...]:
    """Row values as Python compares them on either engine."""
    id_, t, n, b, j, raw, f = row
    return (
        id_,
        t,
        n,
        None if b is None else bool(b),
        None if j is None else json.loads(j),
        None if raw is None else bytes(raw),
        f,
    )


@pytest_twisted.ensureDeferred
async def test_awkward_values_round_trip(db: Database, values_path: list[str]) -> None:
    rows: list[tuple[Any, ...]] = []
    for i, text in enumerate(AWKWARD_TEXT):
        rows.append((i, text, [0, 1, -1, BIG, -BIG - 1][i % 5], [True, False, None][i % 3], None, None, None))
    rows.append((1000, None, None, None, None, None, None))  # all NULL: nothing to type a column by
    rows.append((1001, "", 0, False, '""', None, None))  # empty string and zero are not NULL
    # jsonb column fed JSON text (psycopg2 would be given a str); it must be parsed, not stored as a string
    rows.append((1002, "j", 1, True, '{"a": [1, "x\\"y", null], "b": "\\u00e9"}', None, None))
    await insert(db, "awkward", ("id", "t", "n", "b", "j", "raw", "f"), rows)

    got = await read_awkward(db)
    want = [normalise(r) for r in rows]
    assert [normalise(r) for r in got] == want
    assert want[-1][4] == {"a": [1, 'x"y', None], "b": "é"}
    assert values_path == []  # on PostgreSQL, all of it went as one JSON array


@pytest_twisted.ensureDeferred
async def test_values_json_cannot_carry_take_the_values_path(db: Database, values_path: list[str]) -> None:
    # bytes and floats are outside JSON's exact types: the whole batch goes per value.
    rows = [
        (1, "bytes", 1, True, None, b"\x00\xff\\x'\"{},", 1.5),
        (2, "empty bytes", 2, False, None, b"", -0.25),
        (3, None, None, None, None, None, None),
    ]
    await insert(db, "awkward", ("id", "t", "n", "b", "j", "raw", "f"), rows)
    assert [normalise(r) for r in await read_awkward(db)] == [normalise(r) for r in rows]
    assert len(values_path) == (1 if db.dialect == "postgres" else 0)


@pytest_twisted.ensureDeferred
async def test_on_conflict_do_nothing(db: Database) -> None:
    await insert(db, "kv", ("k", "v"), [("a", "1"), ("b", "2")])
    await insert(
        db, "kv", ("k", "v"), [("b", "changed"), ("c", "3"), ("a", "changed")], "ON CONFLICT DO NOTHING"
    )
    assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == [("a", "1"), ("b", "2"), ("c", "3")]


@pytest_twisted.ensureDeferred
async def test_on_conflict_do_update_with_percent_in_suffix(db: Database) -> None:
    await insert(db, "kv", ("k", "v"), [("a", "1")])
    suffix = "ON CONFLICT (k) DO UPDATE SET v = excluded.v || '%' WHERE kv.v <> excluded.v"
    await insert(db, "kv", ("k", "v"), [("a", "2"), ("b", "3")], suffix)
    assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == [("a", "2%"), ("b", "3")]
    await insert(db, "kv", ("k", "v"), [("a", "2%"), ("b", "3%")], suffix)  # WHERE skips "a"
    assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == [("a", "2%"), ("b", "3%%")]


@pytest_twisted.ensureDeferred
async def test_conflict_without_suffix_is_a_unique_violation(db: Database) -> None:
    await insert(db, "kv", ("k", "v"), [("a", "1")])
    with pytest.raises(Exception) as caught:
        await insert(db, "kv", ("k", "v"), [("z", "0"), ("a", "2")])
    assert db.is_unique_violation(caught.value)
    assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == [("a", "1")]  # whole batch rolled back


@pytest_twisted.ensureDeferred
async def test_rows_of_the_wrong_length_fail(db: Database) -> None:
    for rows in ([("a",)], [("a", "1", "extra")], [("a", "1"), ("b",)]):
        with pytest.raises((ValueError, sqlite3.ProgrammingError)):
            await insert(db, "kv", ("k", "v"), rows)
    assert await db.query("read", "SELECT k, v FROM kv") == []


@pytest_twisted.ensureDeferred
async def test_many_rows_in_one_call(db: Database) -> None:
    rows = [(f"k{i}", f"v{i}'\"\\") for i in range(5000)]
    await insert(db, "kv", ("k", "v"), rows)
    assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == sorted(rows)


@pytest_twisted.ensureDeferred
async def test_independent_writes_store_each_write(db: Database, values_path: list[str]) -> None:
    """Writes made one statement on PostgreSQL (test_event_storage.py checks that a commit is
    one) are each stored, `%`, `?` and `$1` in values included; rows JSON cannot carry (a
    float) go their own way, in the same transaction."""
    await insert(db, "kv", ("k", "v"), [("gone", "x"), ("kept", "y")])

    def writes(txn: Txn, n: int) -> None:
        with txn.batched(commit=True), txn.independent_writes():
            txn.execute("DELETE FROM kv WHERE k = ? AND v <> '%'", (f"gone{n or ''}",))
            txn.insert_many("kv", ("k", "v"), [(f"a{n}", "50% ?"), (f"b{n}", "$1")])
            txn.insert_many("awkward", ("id", "f"), [(n, 0.5)])  # through execute_values
            txn.insert_many("awkward", ("id", "t"), [(n + 100, "t")])

    for n in range(3):
        await db.run_write("writes", writes, n)
    assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == sorted(
        [*[(k, v) for n in range(3) for k, v in ((f"a{n}", "50% ?"), (f"b{n}", "$1"))], ("kept", "y")]
    )
    assert await db.query("read", "SELECT id, t, f FROM awkward ORDER BY id") == [
        *[(n, None, 0.5) for n in range(3)],
        *[(n + 100, "t", None) for n in range(3)],
    ]
    assert len(values_path) == (3 if db.dialect == "postgres" else 0)

    # A failing write rolls back the others.
    with pytest.raises(Exception) as caught:
        await db.run_write("writes", writes, 1)
    assert db.is_unique_violation(caught.value)
    assert len(await db.query("read", "SELECT k FROM kv")) == 7


@pytest_twisted.ensureDeferred
async def test_pg_independent_writes_past_the_sets_prepared(pg_url: str) -> None:
    """Past MAX_SETS sets of writes made one statement, a new set runs as one statement a
    write: every statement is prepared on each connection, plan and all."""
    db = Database(engine_from_url(pg_url, pool_min=1, pool_max=1))
    db.engine.MAX_SETS = 1  # type: ignore[attr-defined]
    try:
        await db.execute("create_table", "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")

        def writes(txn: Txn, keys: list[str], delete: str | None) -> None:
            with txn.batched(commit=True), txn.independent_writes():
                if delete is not None:
                    txn.execute("DELETE FROM kv WHERE k = ?", (delete,))
                for k in keys:
                    txn.insert_many("kv", ("k", "v"), [(k, k.upper())])

        def prepared(txn: Txn) -> list[str]:
            rows = txn.query("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
            return [str(r[0]) for r in rows]

        await db.run_interaction("writes", writes, ["a", "b"], None)  # the one set
        await db.run_interaction("writes", writes, ["c"], "a")  # another: two statements
        await db.run_interaction("writes", writes, ["d"], "b")
        assert await db.query("read", "SELECT k, v FROM kv ORDER BY k") == [("c", "C"), ("d", "D")]
        statements = [s for s in await db.run_interaction("prepared", prepared) if "kv" in s]
        assert len(statements) == 3, statements  # the set, and the two writes on their own
        assert statements[0].count("INSERT INTO kv") == 2
        assert statements[1].startswith("PREPARE hs_one_") and "DELETE FROM kv WHERE k = $1" in statements[1]
    finally:
        db.close()


# PostgreSQL only: the statement shapes and the per-engine cache ------------------------


@pytest.fixture
def pg(pg_url: str) -> Iterator[Any]:
    """A connection as the pool holds it: statements prepared once each, BEGIN sent with the
    first statement, `rollback()` ending the transaction."""
    conn = _PgConnection(psycopg2.connect(pg_url))
    try:
        yield conn
    finally:
        conn.close()


def test_pg_unknown_column_error_names_it_and_is_not_cached(pg: Any) -> None:
    engine = PostgresEngine("unused", 1, 1)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE t (a TEXT)")
        with pytest.raises(psycopg2.errors.UndefinedColumn, match='"b"'):
            engine.insert_many(cur, "t", ("a", "b"), [("x", "y")], "")
        pg.rollback()
        cur.execute("CREATE TABLE t (a TEXT)")
        engine.insert_many(cur, "t", ("a",), [("x",)], "")  # caches t's types
        cur.execute("ALTER TABLE t ADD COLUMN b JSONB")  # as a later migration would
        engine.insert_many(cur, "t", ("a", "b"), [("y", '{"k": 1}')], "")
        cur.execute("SELECT a, b FROM t ORDER BY a")
        assert cur.fetchall() == [("x", None), ("y", {"k": 1})]
        with pytest.raises(psycopg2.errors.UndefinedTable):
            engine.insert_many(cur, "no_such_table", ("a",), [("x",)], "")


def test_pg_varchar_overflow_raises_rather_than_truncating(pg: Any) -> None:
    engine = PostgresEngine("unused", 1, 1)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE v (s VARCHAR(3))")
        engine.insert_many(cur, "v", ("s",), [("abc",)], "")
        with pytest.raises(psycopg2.errors.StringDataRightTruncation):
            engine.insert_many(cur, "v", ("s",), [("abcd",)], "")


def test_pg_array_columns_take_the_values_path(pg: Any) -> None:
    engine = PostgresEngine("unused", 1, 1)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE arr (id BIGINT, tags TEXT[])")
        tags = ["a,b", '"q"', "{}", "back\\slash", None, ""]
        engine.insert_many(cur, "arr", ("id", "tags"), [(1, tags), (2, None), (3, [])], "")
        cur.execute("SELECT id, tags FROM arr ORDER BY id")
        assert cur.fetchall() == [(1, tags), (2, None), (3, [])]


def test_pg_rowcount_counts_inserted_rows(pg: Any) -> None:
    engine = PostgresEngine("unused", 1, 1)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        engine.insert_many(cur, "kv", ("k", "v"), [("a", "1"), ("b", "2")], "")
        engine.insert_many(cur, "kv", ("k", "v"), [("a", "x"), ("c", "3")], "ON CONFLICT DO NOTHING")
        assert cur.rowcount == 1


def test_pg_a_shape_looked_up_by_two_threads_at_once_keeps_its_rows_apart_from_the_next(pg: Any) -> None:
    """Two pool threads insert one new shape at once: both look its columns up (a round trip
    each, the GIL let go) and both keep a statement for it. A shape seen later must still
    get a statement of its own, not one a connection already holds for another table."""
    engine = PostgresEngine("unused", 1, 1)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE one (a TEXT)")
        cur.execute("CREATE TABLE two (b TEXT)")

        class OtherThreadMeanwhile:
            """The first thread's cursor: the other thread's whole insert of the same shape runs
            while its column lookup is on the wire."""

            def __init__(self) -> None:
                self.done = False

            def execute(self, sql: str, args: Any = None) -> None:
                cur.execute(sql, args)
                if not self.done:
                    self.done = True
                    engine.insert_many(cur, "one", ("a",), [("other thread",)], "")
                    cur.execute(sql, args)  # the first thread's answer, for it to read

            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

        engine.insert_many(OtherThreadMeanwhile(), "one", ("a",), [("first thread",)], "")
        engine.insert_many(cur, "two", ("b",), [("two",)], "")
        cur.execute("SELECT a FROM one ORDER BY a")
        assert cur.fetchall() == [("first thread",), ("other thread",)]
        cur.execute("SELECT b FROM two")
        assert cur.fetchall() == [("two",)]


# Text without NUL (PostgreSQL text cannot hold it) or lone surrogates (not encodable).
pg_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
pg_row = st.tuples(
    st.one_of(st.none(), pg_text),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), pg_text.map(json.dumps)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(pg_row, min_size=1, max_size=8))
def test_pg_same_rows_as_execute_values(pg: Any, rows: list[tuple[Any, ...]]) -> None:
    engine = PostgresEngine("unused", 1, 1)
    columns = ("t", "n", "b", "j")
    numbered = [(i, *r) for i, r in enumerate(rows)]
    with pg.cursor() as cur:
        for table in ("new", "old"):
            cur.execute(f"CREATE TABLE {table} (i BIGINT, t TEXT, n BIGINT, b BOOLEAN, j JSONB)")
        engine.insert_many(cur, "new", ("i", *columns), numbered, "")
        execute_values(cur, "INSERT INTO old (i, t, n, b, j) VALUES %s", numbered)
        cur.execute("SELECT i, t, n, b, j::text FROM new ORDER BY i")
        new = cur.fetchall()
        cur.execute("SELECT i, t, n, b, j::text FROM old ORDER BY i")
        assert new == cur.fetchall()
        assert [r[1:4] for r in new] == [r[:3] for r in rows]
    pg.rollback()
