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

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

from twisted.logger import Logger

from homeserver.json_encoding import dumps_text
from homeserver.storage.connection_pool import ConnectionPool

log = Logger()
P = ParamSpec("P")
R = TypeVar("R")

# A transaction slower than this is logged with its name.
SLOW_TRANSACTION_S = 0.5

# Exact types that JSON carries to PostgreSQL unchanged (a str subclass or a float goes
# the VALUES way: a float's JSON text would not cast to an integer column as it assigns).
_JSON_EXACT = frozenset({str, int, bool, type(None)})


class Txn:
    """A cursor wrapper given to `*_txn` functions: one transaction, `?` placeholders."""

    def __init__(self, cursor: Any, engine: "Engine") -> None:
        self._cursor = cursor
        self.engine = engine

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._cursor.execute(self.engine.adapt(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(self.engine.adapt(sql), [tuple(r) for r in rows])

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str = ""
    ) -> None:
        """INSERT many rows in as few round trips as the engine allows (one on PostgreSQL)."""
        if not rows:
            return
        self.engine.insert_many(self._cursor, table, columns, rows, suffix)

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, args)
        return self.fetchall()

    def query_one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, args)
        return self.fetchone()


class Engine:
    name = ""

    def adapt(self, sql: str) -> str:
        return sql

    def make_pool(self) -> ConnectionPool:
        raise NotImplementedError

    def insert_many(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> None:
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {suffix}"
        cursor.executemany(self.adapt(sql), [tuple(r) for r in rows])

    def is_unique_violation(self, error: BaseException) -> bool:
        raise NotImplementedError


class SqliteEngine(Engine):
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path

    def make_pool(self) -> ConnectionPool:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has a single writer anyway, and one thread keeps
        # every transaction serialised without SQLITE_BUSY retries.
        return ConnectionPool(self._connect, 1, 1, lambda error, conn: False, name="sqlite")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def is_unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error)


class PostgresEngine(Engine):
    name = "postgres"

    def __init__(self, url: str, pool_min: int, pool_max: int) -> None:
        self.url = url
        self.pool_min = pool_min
        self.pool_max = pool_max
        self._adapted: dict[str, str] = {}
        self._insert_sql: dict[tuple[str, tuple[str, ...], str], str | None] = {}

    def adapt(self, sql: str) -> str:
        adapted = self._adapted.get(sql)
        if adapted is None:
            adapted = self._adapted[sql] = sql.replace("%", "%%").replace("?", "%s")
        return adapted

    def insert_many(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
    ) -> None:
        # All rows as one JSON array, unpacked server-side by jsonb_array_elements with a
        # cast per column. psycopg2 adapts every value on its own (~1.5 us each with the GIL
        # held, plus a Python loop per row in execute_values): this is one json.dumps (C) and
        # one adaptation, so the DB thread starves the reactor thread less.
        sql = self._json_insert_sql(cursor, table, columns, suffix)
        if sql is not None and set(map(type, chain.from_iterable(rows))) <= _JSON_EXACT:
            if set(map(len, rows)) != {len(columns)}:  # a short row would read as NULLs
                raise ValueError(f"insert_many into {table}: every row needs {len(columns)} values")
            cursor.execute(sql, (dumps_text(rows),))
            return
        # Other values (bytes, float, datetime...), array columns, or an unknown table or
        # column (the server's error then names it): psycopg2 adapts each value.
        from psycopg2.extras import execute_values

        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s {suffix.replace('%', '%%')}"
        execute_values(cursor, sql, [tuple(r) for r in rows], page_size=1000)

    def _json_insert_sql(self, cursor: Any, table: str, columns: Sequence[str], suffix: str) -> str | None:
        """The INSERT from a JSON array of rows, or None if a column cannot come from JSON text."""
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
        sql = None
        if all(types[c] is not None for c in columns):  # no array columns
            casts = ", ".join(f"(r->>{i})::{types[c]}" for i, c in enumerate(columns))
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {casts}"
                f" FROM jsonb_array_elements(%s::jsonb) AS r {suffix.replace('%', '%%')}"
            )
        self._insert_sql[key] = sql
        return sql

    def make_pool(self) -> ConnectionPool:
        return ConnectionPool(
            self._connect, self.pool_min, self.pool_max, self._is_disconnect, name="postgres"
        )

    def _connect(self) -> Any:
        import psycopg2

        return psycopg2.connect(dsn=self.url)

    @staticmethod
    def _is_disconnect(error: BaseException, conn: Any) -> bool:
        # psycopg2 marks a connection closed (1, or 2 when broken) once it sees it gone.
        return bool(conn.closed)

    def is_unique_violation(self, error: BaseException) -> bool:
        import psycopg2.errors

        return isinstance(error, psycopg2.errors.UniqueViolation)


def engine_from_url(url: str, pool_min: int = 2, pool_max: int = 10) -> Engine:
    if url.startswith("sqlite:///"):
        return SqliteEngine(unquote(url[len("sqlite:///") :]))
    if urlsplit(url).scheme in ("postgresql", "postgres"):
        return PostgresEngine(url, pool_min, pool_max)
    raise ValueError(f"unsupported database url scheme: {url.split(':', 1)[0]}")


class Database:
    """A pool of connections to one database, used by every store module."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool = engine.make_pool()

    @property
    def dialect(self) -> str:
        return self.engine.name

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

        result: R = await self._pool.run(interaction)
        return result

    async def query(self, desc: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """One read query as its own transaction."""
        return await self.run_interaction(desc, lambda txn: txn.query(sql, args))

    async def execute(self, desc: str, sql: str, *args: Any) -> int:
        """One write statement as its own transaction; returns the affected row count."""

        def execute_txn(txn: Txn) -> int:
            txn.execute(sql, args)
            return txn.rowcount

        return await self.run_interaction(desc, execute_txn)

    def is_unique_violation(self, error: BaseException) -> bool:
        return self.engine.is_unique_violation(error)

    def close(self) -> None:
        self._pool.close()
