"""The database handle: one interface over two engines.

SQLite (the default, a file in the data dir, WAL mode) and PostgreSQL (psycopg2),
each connection in a thread of `connection_pool.ConnectionPool`. Store modules write plain SQL with
`?` placeholders and call `run_interaction(desc, fn, ...)`: `fn` runs in a pool
thread inside one transaction and gets a `Txn`; `desc` names the transaction in
logs so a slow query names itself. The engine adapts placeholders (psycopg2 takes
`%s`), which is the DB-API paramstyle, not a dialect: SQL that differs between
engines lives in per-dialect schema files (see `migrations.py`).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

from twisted.logger import Logger

from homeserver.disk_full import disk_watch, is_disk_full
from homeserver.json_encoding import dumps_text
from homeserver.storage.connection_pool import ConnectionPool

log = Logger()
P = ParamSpec("P")
R = TypeVar("R")

# A transaction slower than this is logged with its name.
SLOW_TRANSACTION_S = 0.5
# PostgreSQL ends a pooled session left inside a transaction this long (its process stopped
# or cut off between two statements): the row locks it holds (an event writer's own
# `stream_writers` row) would otherwise block a fence of that writer until TCP gives up,
# hours later. The same as a writer's lease (storage/writer_lock.py LEASE_S); our
# transactions never idle between statements for more than milliseconds.
IDLE_IN_TRANSACTION_S = 10.0

# Exact types that JSON carries to PostgreSQL unchanged (a str subclass or a float goes
# the VALUES way: a float's JSON text would not cast to an integer column as it assigns).
_JSON_EXACT = frozenset({str, int, bool, type(None)})


class Txn:
    """A cursor wrapper given to `*_txn` functions: one transaction, `?` placeholders."""

    def __init__(self, cursor: Any, engine: "Engine") -> None:
        self._cursor = cursor
        self.engine = engine
        self._pending: list[tuple[str, tuple[Any, ...]]] | None = None
        # The writes of an `independent_writes()` block not yet made one statement.
        self._parts: list[tuple[str, tuple[Any, ...]]] | None = None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        if self._parts is not None:
            self._parts.append(self.engine.part(sql, tuple(args)))
            return
        if self._pending is not None:
            self._pending.append((self.engine.adapt(sql), tuple(args)))
            return
        self._cursor.execute(self.engine.adapt(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._not_batched("executemany")
        self._cursor.executemany(self.engine.adapt(sql), [tuple(r) for r in rows])

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str = ""
    ) -> None:
        """INSERT many rows in as few round trips as the engine allows (one on PostgreSQL)."""
        if not rows:
            return
        if self._parts is not None:
            part = self.engine.insert_many_part(self._cursor, table, columns, rows, suffix)
            if part is not None:
                self._parts.append(part)
                return
            self._end_parts()  # this one goes on its own, after what came before it
        if self._pending is not None:
            statement = self.engine.insert_many_statement(self._cursor, table, columns, rows, suffix)
            if statement is not None:
                self._pending.append(statement)
                return
            self._flush()  # this one goes on its own, after what came before it
        self.engine.insert_many(self._cursor, table, columns, rows, suffix)

    @contextmanager
    def batched(self, *, commit: bool = False) -> Iterator[None]:
        """Writes inside the block reach the database together when it ends (one round trip on
        PostgreSQL) instead of one by one. Nothing inside may read: no query, no rowcount.

        `commit`: the block ends the transaction, and on PostgreSQL its COMMIT travels in the
        same round trip; nothing may run in the transaction after it."""
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            yield
            self._flush(commit)
        finally:
            self._pending = None

    @contextmanager
    def independent_writes(self) -> Iterator[None]:
        """Writes inside the block (`execute`, `insert_many`) that touch no row another of them
        touches and depend on none of the others having run: on PostgreSQL they reach the
        server as one statement (data-modifying CTEs, prepared once per connection and set of
        statements), which it parses, snapshots and starts once instead of once each. Their
        constraints (foreign keys included) are checked at its end. Only inside `batched()`."""
        if self._pending is None:
            raise RuntimeError("independent_writes() outside Txn.batched()")
        if self._parts is not None or not self.engine.fuses_writes:
            yield
            return
        self._parts = []
        try:
            yield
            self._end_parts()
        finally:
            self._parts = None

    def _end_parts(self) -> None:
        parts = self._parts
        if parts and self._pending is not None:
            self._parts = []
            self._pending.extend(self.engine.one_statement(self._cursor, parts))

    def _flush(self, commit: bool = False) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            self.engine.execute_together(self._cursor, pending, commit)

    def _not_batched(self, what: str) -> None:
        if self._pending is not None:
            raise RuntimeError(f"{what} inside Txn.batched(): its writes have not run yet")

    def fetchone(self) -> tuple[Any, ...] | None:
        self._not_batched("fetchone")
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._not_batched("fetchall")
        return [tuple(r) for r in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        self._not_batched("rowcount")
        return int(self._cursor.rowcount)

    def read_alone(self, sql: str, args: Sequence[Any] = ()) -> None:
        """A read that is the transaction's only statement: PostgreSQL then runs it without
        BEGIN and COMMIT (one round trip instead of three). Not for writes: one would commit
        as it runs, and if the connection dropped before the answer, the pool's retry of a
        transaction on a lost connection could store it twice."""
        alone = getattr(self._cursor, "execute_alone", None)
        if alone is None or self._pending is not None:
            self.execute(sql, args)
        else:
            alone(self.engine.adapt(sql), tuple(args))

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, args)
        return self.fetchall()

    def query_one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, args)
        return self.fetchone()


class Engine:
    name = ""
    # Whether `Txn.independent_writes()` makes its writes one statement.
    fuses_writes = False
    # A directory on the database's disk, to tell when a full one has room again ("": not local).
    disk_dir = ""

    def make_writer(self, reactor: Any) -> Any:
        """A connection for `Database.run_write` that needs no thread, or None."""
        return None

    def adapt(self, sql: str) -> str:
        return sql

    def make_pool(self, reactor: Any) -> ConnectionPool:
        """Threads with a connection each, answering on `reactor`'s thread."""
        raise NotImplementedError

    def insert_many(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> None:
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {suffix}"
        cursor.executemany(self.adapt(sql), [tuple(r) for r in rows])

    def insert_many_statement(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> tuple[str, tuple[Any, ...]] | None:
        """The whole INSERT as one (sql, args), or None where it takes several statements."""
        return None

    def part(self, sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        """A write of `Txn.independent_writes()`, to become part of one statement."""
        raise NotImplementedError

    def insert_many_part(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> tuple[str, tuple[Any, ...]] | None:
        """An INSERT of many rows as a part of one statement, or None where it cannot be."""
        return None

    def one_statement(
        self, cursor: Any, parts: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The parts as one statement to run (or several: PostgresEngine.MAX_SETS)."""
        raise NotImplementedError

    def execute_together(
        self, cursor: Any, statements: Sequence[tuple[str, tuple[Any, ...]]], commit: bool = False
    ) -> None:
        """Run the statements in order; with `commit`, the pool's commit follows them."""
        for sql, args in statements:
            cursor.execute(sql, args)

    def is_unique_violation(self, error: BaseException) -> bool:
        raise NotImplementedError


class SqliteEngine(Engine):
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.disk_dir = str(Path(path).parent) if path != ":memory:" else ""

    def make_pool(self, reactor: Any) -> ConnectionPool:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has a single writer anyway, and one thread keeps
        # every transaction serialised without SQLITE_BUSY retries.
        return ConnectionPool(self._connect, 1, 1, lambda error, conn: False, "sqlite", reactor)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # Bound parameters a statement: SQLite's default (Debian's build allows 250,000), so a
        # query that would fail on other builds fails here too, in tests.
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, SQLITE_MAX_PARAMETERS)
        return conn

    def is_unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error)


class PostgresEngine(Engine):
    name = "postgres"
    fuses_writes = True
    # Sets of writes made one statement each, at most: each is prepared on every connection
    # that runs it, and holds its plan there (~150 kB for a one-message commit's). Further sets
    # run as one statement a write.
    MAX_SETS = 64

    def __init__(self, url: str, pool_min: int, pool_max: int) -> None:
        self.url = url
        self.pool_min = pool_min
        self.pool_max = pool_max
        self._adapted: dict[str, str] = {}
        self._insert_sql: dict[tuple[str, tuple[str, ...], str], tuple[str, str] | None] = {}
        self._parts: dict[str, str] = {}  # `?` SQL -> the same with $1, $2...
        self._one_statements: dict[tuple[str, ...], tuple[str, str]] = {}  # parts -> (name, SQL)

    def adapt(self, sql: str) -> str:
        adapted = self._adapted.get(sql)
        if adapted is None:
            adapted = self._adapted[sql] = sql.replace("%", "%%").replace("?", "%s")
        return adapted

    def insert_many_statement(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> tuple[str, tuple[Any, ...]] | None:
        found = self._json_insert(cursor, table, columns, rows, suffix)
        if found is None:
            return None
        name, sql, rows_json = found
        # Prepared once per connection (a PREPARE outlives a rolled-back transaction): planning
        # the INSERT ... SELECT every time cost PostgreSQL ~35 us per statement.
        cursor.prepare(name, sql)
        return f"EXECUTE {name}(%s)", (rows_json,)

    def insert_many_part(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> tuple[str, tuple[Any, ...]] | None:
        found = self._json_insert(cursor, table, columns, rows, suffix)
        return None if found is None else (found[1], (found[2],))

    def part(self, sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        numbered = self._parts.get(sql)
        if numbered is None:
            pieces = sql.split("?")
            numbered = pieces[0] + "".join(f"${i}{piece}" for i, piece in enumerate(pieces[1:], 1))
            self._parts[sql] = numbered
        return numbered, args

    def one_statement(
        self, cursor: Any, parts: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        # A one-message commit was eight statements (BEGIN and COMMIT around a DELETE, planned
        # each time, and five INSERTs): as one, its backend spends ~0.20-0.22 ms of CPU instead
        # of ~0.25 (bench/commit_replay.py).
        key = tuple(sql for sql, _ in parts)
        found = self._one_statements.get(key)
        if found is None:
            if len(parts) > 1 and len(self._one_statements) >= self.MAX_SETS:
                return [s for part in parts for s in self.one_statement(cursor, [part])]
            numbered, offset = [], 0
            for sql, args in parts:
                numbered.append(_renumbered(sql, offset))
                offset += len(args)
            with_ = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(numbered[:-1]))
            sql = f"WITH {with_} {numbered[-1]}" if with_ else numbered[-1]
            # Named by its text: pool threads and the reactor may both add one at a time.
            digest = hashlib.blake2b(sql.encode(), digest_size=12).hexdigest()
            found = self._one_statements[key] = (f"hs_one_{digest}", sql)
        name, sql = found
        cursor.prepare(name, sql)
        args = tuple(chain.from_iterable(a for _, a in parts))
        return [(f"EXECUTE {name}({', '.join(['%s'] * len(args))})", args)]

    def _json_insert(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> tuple[str, str, str] | None:
        """(name, SQL, rows as JSON) of the INSERT of `rows` as one JSON array, or None."""
        # All rows as one JSON array, unpacked server-side by jsonb_array_elements with a
        # cast per column. psycopg2 adapts every value on its own (~1.5 us each with the GIL
        # held, plus a Python loop per row in execute_values): this is one json.dumps (C) and
        # one adaptation, so the DB thread starves the reactor thread less.
        prepared = self._json_insert_sql(cursor, table, columns, suffix)
        if prepared is None or not set(map(type, chain.from_iterable(rows))) <= _JSON_EXACT:
            return None
        if set(map(len, rows)) != {len(columns)}:  # a short row would read as NULLs
            raise ValueError(f"insert_many into {table}: every row needs {len(columns)} values")
        return (*prepared, dumps_text(rows))

    def execute_together(
        self, cursor: Any, statements: Sequence[tuple[str, tuple[Any, ...]]], commit: bool = False
    ) -> None:
        # One simple-protocol query string: psycopg2 fills in the values client-side, and the
        # server runs the statements in order, stopping at the first error. With `commit`, the
        # COMMIT ends the string: a whole transaction in one round trip.
        if commit:
            sql = ";".join(sql for sql, _ in statements)
            cursor.execute_and_commit(sql, tuple(chain.from_iterable(a for _, a in statements)))
            return
        if len(statements) == 1:
            cursor.execute(*statements[0])
            return
        cursor.execute(
            ";".join(sql for sql, _ in statements), tuple(chain.from_iterable(a for _, a in statements))
        )

    def insert_many(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> None:
        statement = self.insert_many_statement(cursor, table, columns, rows, suffix)
        if statement is not None:
            cursor.execute(*statement)
            return
        # Other values (bytes, float, datetime...), array columns, or an unknown table or
        # column (the server's error then names it): psycopg2 adapts each value.
        from psycopg2.extras import execute_values

        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s {suffix.replace('%', '%%')}"
        execute_values(cursor, sql, [tuple(r) for r in rows], page_size=1000)

    def _json_insert_sql(
        self, cursor: Any, table: str, columns: Sequence[str], suffix: str
    ) -> tuple[str, str] | None:
        """(name, SQL) of the INSERT from a JSON array of rows ($1), or None if a column cannot
        come from JSON text."""
        key = (table, tuple(columns), suffix)
        if key in self._insert_sql:
            return self._insert_sql[key]
        # Once per statement shape, in the caller's transaction. Types without typmod: an
        # explicit cast to varchar(n) would truncate where the INSERT's assignment raises.
        cursor.execute(
            "SELECT a.attname, CASE WHEN t.typcategory <> 'A' THEN format_type(a.atttypid, NULL) END"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (table,),
        )
        types: dict[str, str | None] = dict(cursor.fetchall())
        if not all(c in types for c in columns):
            return None  # not cached: a migration may add the table or column later
        found = None
        if all(types[c] is not None for c in columns):  # no array columns
            casts = ", ".join(f"(r->>{i})::{types[c]}" for i, c in enumerate(columns))
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {casts}"
                f" FROM jsonb_array_elements($1::jsonb) AS r {suffix}"
            )
            # Named by its text: two threads that look one shape up at once both keep it, and
            # a count of the shapes kept would then give the next shape a name already used.
            found = (f"hs_insert_{hashlib.blake2b(sql.encode(), digest_size=12).hexdigest()}", sql)
        self._insert_sql[key] = found
        return found

    def make_pool(self, reactor: Any) -> ConnectionPool:
        return ConnectionPool(
            self._connect, self.pool_min, self.pool_max, self._is_disconnect, "postgres", reactor
        )

    def make_writer(self, reactor: Any) -> Any:
        from homeserver.storage.pg_writer import PgWriter

        return PgWriter(self.url, reactor)

    def _connect(self) -> "_PgConnection":
        import psycopg2

        conn = _PgConnection(psycopg2.connect(dsn=self.url))
        with conn.raw.cursor() as cursor:
            cursor.execute(
                "SET idle_in_transaction_session_timeout = %s", (int(IDLE_IN_TRANSACTION_S * 1000),)
            )
        return conn

    @staticmethod
    def _is_disconnect(error: BaseException, conn: Any) -> bool:
        # psycopg2 marks a connection closed (1, or 2 when broken) once it sees it gone.
        return bool(conn.closed)

    def is_unique_violation(self, error: BaseException) -> bool:
        import psycopg2.errors

        return isinstance(error, psycopg2.errors.UniqueViolation)


# SQLite's default limit on a statement's bound parameters (since 3.32; set on every
# connection, whatever the build allows).
SQLITE_MAX_PARAMETERS = 32_766
# Values bound per `IN (...)`: well under SQLite's limit on bound parameters.
IN_CHUNK = 500

V = TypeVar("V")


def in_chunks(values: Sequence[V], size: int = IN_CHUNK) -> Iterator[Sequence[V]]:
    """`values` in slices of at most `size`, one `IN (...)` query each."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def marks(count: int) -> str:
    """`?` placeholders for an `IN (...)` of `count` values."""
    return ",".join("?" * count)


def in_list(
    dialect: str, column: str, values: Sequence[object], *, negate: bool = False
) -> tuple[str, list[object]]:
    """`column IN (...)` of `values` of any number, and its parameters, for a query that
    cannot run in chunks (one ORDER BY ... LIMIT over all of them). Up to IN_CHUNK values:
    `IN (?, ...)`, as always. More: one parameter holding them all, an array on PostgreSQL
    and a JSON array read by json_each on SQLite, whose statements take at most 32,766
    parameters (a user in more rooms than that failed the searches). Same rows either way.
    `negate`: `column NOT IN (...)`."""
    not_ = "NOT " if negate else ""
    if len(values) <= IN_CHUNK:
        return f"{column} {not_}IN ({marks(len(values))})", list(values)
    if dialect == "postgres":
        return f"{not_}({column} = ANY(?))", [list(values)]
    return f"{column} {not_}IN (SELECT value FROM json_each(?))", [dumps_text(list(values))]


def lock_user_txn(txn: Txn, user_id: str) -> None:
    """Hold a local user's row until the transaction ends, so that two read-then-write
    transactions for one user run one after the other. PostgreSQL only: SQLite runs one
    writing transaction at a time anyway. NO KEY: rows that reference the user may still
    be inserted meanwhile."""
    if txn.engine.name == "postgres":
        txn.query_one("SELECT 1 FROM users WHERE user_id = ? FOR NO KEY UPDATE", (user_id,))


_PARAMETER = re.compile(r"\$(\d+)")


def _renumbered(sql: str, offset: int) -> str:
    """`sql` with its parameters $1, $2... as $(1 + offset), $(2 + offset)..."""
    return _PARAMETER.sub(lambda m: f"${int(m[1]) + offset}", sql)


class _PgConnection:
    """A psycopg2 connection in autocommit mode that sends BEGIN with a transaction's first
    statement, in the same query string.

    psycopg2 outside autocommit sends BEGIN as a round trip of its own before the first
    statement. Measured on loopback, a transaction of four INSERTs took 6 round trips, 149 us
    of client CPU and 305 us of server CPU; as one string with BEGIN in front, 33 and 160.
    A lone read (`Txn.read_alone`) needs neither BEGIN nor COMMIT.
    """

    def __init__(self, raw: Any) -> None:
        raw.autocommit = True
        self.raw = raw
        self.in_transaction = False
        # A COMMIT was sent and its answer has not come back (see ConnectionPool._execute).
        self.commit_in_flight = False
        self.prepared: set[str] = set()

    @property
    def closed(self) -> int:
        return int(self.raw.closed)

    def cursor(self) -> "_PgCursor":
        return _PgCursor(self, self.raw.cursor())

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, command: str) -> None:
        if self.in_transaction:
            self.in_transaction = False
            with self.raw.cursor() as cursor:
                cursor.execute(command)

    def close(self) -> None:
        self.raw.close()


class _PgCursor:
    def __init__(self, conn: _PgConnection, raw: Any) -> None:
        self._conn = conn
        self._raw = raw

    def execute(self, sql: str | bytes, args: Any = None) -> None:
        if not self._conn.in_transaction:
            # Marked first: if the string fails after BEGIN ran, rollback() must still end it.
            self._conn.in_transaction = True
            sql = (b"BEGIN;" + sql) if isinstance(sql, bytes) else ("BEGIN;" + sql)
        self._raw.execute(sql, args)

    def executemany(self, sql: str, rows: Any) -> None:
        if not self._conn.in_transaction:
            self._conn.in_transaction = True
            self._raw.execute("BEGIN")
        self._raw.executemany(sql, rows)

    def execute_alone(self, sql: str, args: Any = None) -> None:
        self._raw.execute(sql, args)

    def execute_and_commit(self, sql: str, args: Any = None) -> None:
        """`sql` and then COMMIT, in one query string."""
        if not self._conn.in_transaction:
            self._conn.in_transaction = True
            sql = "BEGIN;" + sql
        self._conn.commit_in_flight = True
        try:
            self._raw.execute(sql + ";COMMIT", args)
        except BaseException:
            # The server answered with an error: nothing was committed. A lost connection
            # leaves the flag up: the pool tells its caller the outcome is unknown.
            if not self._conn.raw.closed:
                self._conn.commit_in_flight = False
            raise
        self._conn.commit_in_flight = False
        self._conn.in_transaction = False

    def prepare(self, name: str, sql: str) -> None:
        """PREPARE `sql` as `name` on this connection, once (a round trip of its own)."""
        if name not in self._conn.prepared:
            self._raw.execute(f"PREPARE {name} AS {sql}")
            self._conn.prepared.add(name)

    def __getattr__(self, name: str) -> Any:  # fetchone, fetchall, rowcount, mogrify, close...
        return getattr(self._raw, name)

    def __enter__(self) -> "_PgCursor":
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


class _NeedsConnection(Exception):
    """Composing the transaction needs a real connection: run it through the pool."""


class _CollectingCursor:
    """Stands in for a PostgreSQL cursor while a write-only transaction is composed: it keeps
    the PREPAREs and the final statement string instead of sending them."""

    def __init__(self) -> None:
        self.prepares: list[tuple[str, str]] = []
        self.statement: tuple[str, tuple[Any, ...]] | None = None

    def prepare(self, name: str, sql: str) -> None:
        self.prepares.append((name, sql))

    def execute_and_commit(self, sql: str, args: tuple[Any, ...]) -> None:
        if self.statement is not None:
            raise RuntimeError("one commit per transaction")
        self.statement = (sql, args)

    def execute(self, sql: str, args: Any = None) -> None:
        raise _NeedsConnection()

    def executemany(self, sql: str, rows: Any) -> None:
        raise _NeedsConnection()

    def __getattr__(self, name: str) -> Any:  # mogrify, fetchall...: only a real cursor has them
        raise _NeedsConnection()


def engine_from_url(url: str, pool_min: int = 2, pool_max: int = 10) -> Engine:
    if url.startswith("sqlite:///"):
        return SqliteEngine(unquote(url[len("sqlite:///") :]))
    if urlsplit(url).scheme in ("postgresql", "postgres"):
        return PostgresEngine(url, pool_min, pool_max)
    raise ValueError(f"unsupported database url scheme: {url.split(':', 1)[0]}")


class Database:
    """A pool of connections to one database, used by every store module."""

    def __init__(self, engine: Engine, reactor: Any = None) -> None:
        """`reactor` answers the pool's threads; None: the global one (scripts and tests)."""
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.engine = engine
        self._pool = engine.make_pool(reactor)
        self._writer = engine.make_writer(reactor)

    @property
    def dialect(self) -> str:
        return self.engine.name

    @property
    def pool(self) -> ConnectionPool:
        """The connection threads (their queue wait is a metric)."""
        return self._pool

    async def run_interaction(
        self, desc: str, fn: Callable[Concatenate[Txn, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run `fn(txn, *args)` in one transaction on a pool thread; commit on return."""

        def interaction(cursor: Any) -> R:
            start = time.monotonic()
            try:
                return fn(Txn(cursor, self.engine), *args, **kwargs)
            finally:
                elapsed = time.monotonic() - start
                if elapsed > SLOW_TRANSACTION_S:
                    log.warn("slow transaction {desc}: {elapsed:.3f}s", desc=desc, elapsed=elapsed)

        try:
            result: R = await self._pool.run(interaction)
        except Exception as error:
            if is_disk_full(error, self.engine.disk_dir):
                raise disk_watch.refused(self.engine.disk_dir, error, desc) from error
            raise
        disk_watch.check_room()
        return result

    async def run_write(
        self, desc: str, fn: Callable[Concatenate[Txn, P], None], *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """Run `fn(txn, *args)`, a transaction of writes only that ends in
        `txn.batched(commit=True)`, like `run_interaction`.

        On PostgreSQL `fn` runs here, on the reactor thread, against a cursor that only
        collects its statements, and the one query string goes out over the writer connection
        (storage/pg_writer.py): no thread. A statement that needs the database while it is
        being composed (the first INSERT of a shape looks up its column types) sends the
        transaction through the pool instead, once.
        """
        if self._writer is not None:
            collector = _CollectingCursor()
            try:
                fn(Txn(collector, self.engine), *args, **kwargs)
            except _NeedsConnection:
                pass
            else:
                if collector.statement is None:
                    raise RuntimeError(f"{desc}: run_write needs txn.batched(commit=True)")
                try:
                    await self._writer.run(collector.prepares, *collector.statement)
                except Exception as error:
                    if is_disk_full(error, self.engine.disk_dir):
                        raise disk_watch.refused(self.engine.disk_dir, error, desc) from error
                    raise
                disk_watch.check_room()
                return
        await self.run_interaction(desc, fn, *args, **kwargs)

    async def query(self, desc: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """One read query as its own transaction."""

        def query_txn(txn: Txn) -> list[tuple[Any, ...]]:
            txn.read_alone(sql, args)
            return txn.fetchall()

        return await self.run_interaction(desc, query_txn)

    async def execute(self, desc: str, sql: str, *args: Any) -> int:
        """One write statement as its own transaction; returns the affected row count."""

        def execute_txn(txn: Txn) -> int:
            txn.execute(sql, args)
            return txn.rowcount

        return await self.run_interaction(desc, execute_txn)

    def is_unique_violation(self, error: BaseException) -> bool:
        return self.engine.is_unique_violation(error)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._pool.close()
