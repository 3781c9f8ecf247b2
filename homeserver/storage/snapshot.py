"""Consistent copies of the database for backups, and putting one back.

SQLite: the online backup API copies every page in one step, inside one read
transaction: with WAL, writers carry on and the copy is the database as of one commit.
PostgreSQL: a REPEATABLE READ transaction exports its snapshot; the row counts are read
in it and `pg_dump --snapshot` dumps exactly that state (custom format), so counts and
dump agree. Only the server's own schema (`current_schema()`) is dumped.

Everything here blocks (files, subprocesses, connections of its own, never the server's
pool): call it from a CLI command or a worker thread.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from homeserver.storage.database import engine_from_url

# Where Debian keeps each major version's client tools side by side.
PG_BIN_DIRS = ("/usr/lib/postgresql/{major}/bin",)


class SnapshotError(Exception):
    """A snapshot or a restore could not be made; the message says why and what to do."""


@dataclass(frozen=True)
class Snapshot:
    engine: str  # "sqlite" or "postgres"
    file: Path
    tables: dict[str, int]  # row count per table, as of the snapshot
    schema: str = ""  # PostgreSQL: the schema that was dumped
    server_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def engine_name(url: str) -> str:
    return engine_from_url(url).name


def sqlite_path(url: str) -> Path:
    return Path(unquote(url[len("sqlite:///") :]))


# Taking a snapshot --------------------------------------------------------------------


def take_snapshot(url: str, out_dir: Path) -> Snapshot:
    """Write a consistent copy of the database at `url` into `out_dir`."""
    if engine_name(url) == "sqlite":
        return _sqlite_snapshot(sqlite_path(url), out_dir / "database.sqlite")
    return _pg_snapshot(url, out_dir / "database.pgdump")


def _sqlite_snapshot(path: Path, out: Path) -> Snapshot:
    if not path.is_file():
        raise SnapshotError(f"no SQLite database at {path}")
    # A plain connection: a read-only one cannot open a WAL database whose -shm is missing.
    source = sqlite3.connect(path, timeout=30)
    target = sqlite3.connect(out)
    try:
        # pages=-1 (the default): the whole database in one step, one read transaction.
        source.backup(target)
        # One self-contained file: no -wal or -shm beside it in the set.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        source.close()
        target.close()
    return Snapshot("sqlite", out, sqlite_table_counts(out), server_version=sqlite3.sqlite_version)


def sqlite_table_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " ORDER BY name"
            )
        ]
        # Virtual tables' shadow tables (FTS) are counted like any other: they are copied too.
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        conn.close()


def _pg_connect(url: str) -> Any:
    import psycopg2

    try:
        return psycopg2.connect(dsn=url, connect_timeout=10)
    except psycopg2.OperationalError as e:
        raise SnapshotError(f"cannot connect to PostgreSQL: {str(e).strip()}") from None


def _pg_major(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        return int(cur.fetchone()[0]) // 10000


def find_pg_tool(name: str, server_major: int, search: tuple[str, ...] | None = None) -> str:
    """The path of `name` (pg_dump, pg_restore) able to work with a server of `server_major`:
    the version-specific Debian directory first, then PATH. Raises with what to install."""
    candidates = [
        Path(d.format(major=server_major)) / name for d in (PG_BIN_DIRS if search is None else search)
    ]
    on_path = shutil.which(name) if search is None else None
    for candidate in [*(str(c) for c in candidates if c.is_file()), *([on_path] if on_path else [])]:
        major = _tool_major(candidate)
        if major >= server_major:
            return candidate
        found = f"{name} {major} at {candidate}"
        raise SnapshotError(
            f"{found} cannot work with a PostgreSQL {server_major} server:"
            f" install postgresql-client-{server_major}"
        )
    raise SnapshotError(
        f"{name} not found: install postgresql-client-{server_major} (the server's major version)"
    )


def _tool_major(path: str) -> int:
    argv = [path, "--version"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout  # noqa: S603 - no shell
    m = re.search(r"\)\s*(\d+)", out)
    if not m:
        raise SnapshotError(f"cannot read the version of {path}: {out.strip()!r}")
    return int(m.group(1))


def _pg_tables_txn(cur: Any, schema: str) -> dict[str, int]:
    cur.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY table_name",
        (schema,),
    )
    names = [r[0] for r in cur.fetchall()]
    counts = {}
    for name in names:
        cur.execute(f'SELECT COUNT(*) FROM "{schema}"."{name}"')
        counts[name] = int(cur.fetchone()[0])
    return counts


def _pg_snapshot(url: str, out: Path) -> Snapshot:
    import psycopg2

    conn = _pg_connect(url)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        pg_dump = find_pg_tool("pg_dump", _pg_major(conn))
        with conn.cursor() as cur:
            cur.execute("SELECT current_schema(), pg_export_snapshot(), current_setting('server_version')")
            schema, snapshot_id, version = cur.fetchone()
            if schema is None:
                raise SnapshotError("the database has no schema on its search_path: nothing to back up")
            counts = _pg_tables_txn(cur, schema)
            # The exporting transaction stays open until pg_dump has taken the snapshot over.
            _run(
                [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={snapshot_id}",
                    f'--schema="{schema}"',
                    "--no-owner",
                    "--no-privileges",
                    f"--file={out}",
                    f"--dbname={url}",
                ],
                "pg_dump",
            )
        conn.rollback()
    except psycopg2.Error as e:
        raise SnapshotError(f"PostgreSQL: {str(e).strip()}") from None
    finally:
        conn.close()
    return Snapshot("postgres", out, counts, schema=schema, server_version=version)


def _run(args: list[str], what: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=24 * 3600)  # noqa: S603 - no shell
    if result.returncode != 0:
        raise SnapshotError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


# Restoring ---------------------------------------------------------------------------


def database_is_empty(url: str, schema: str = "") -> bool:
    """Whether the target holds no table (SQLite: no file, or one without tables; PostgreSQL:
    no table in `schema`, default the URL's current schema)."""
    if engine_name(url) == "sqlite":
        path = sqlite_path(url)
        return not path.exists() or path.stat().st_size == 0 or not sqlite_table_counts(path)
    with _pg(url) as cur:
        cur.execute("SELECT current_schema()")
        name = schema or cur.fetchone()[0]
        if name is None:
            return True
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s", (name,))
        return int(cur.fetchone()[0]) == 0


@contextmanager
def _pg(url: str) -> Iterator[Any]:
    conn = _pg_connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def restore_snapshot(url: str, snapshot: Snapshot, *, force: bool) -> dict[str, int]:
    """Put `snapshot` into the database at `url`; return the row counts found there after."""
    if engine_name(url) != snapshot.engine:
        raise SnapshotError(
            f"the backup holds a {snapshot.engine} database but the config's database.url is"
            f" {engine_name(url)}: restore into the same engine"
        )
    if snapshot.engine == "sqlite":
        return _sqlite_restore(sqlite_path(url), snapshot.file)
    return _pg_restore(url, snapshot, force=force)


def _sqlite_restore(path: Path, source: Path) -> dict[str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.restoring")
    shutil.copyfile(source, tmp)
    conn = sqlite3.connect(tmp)
    try:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise SnapshotError(f"the backup's SQLite database fails its integrity check: {source}")
    finally:
        conn.close()
    # A stale WAL of an older database at this path would be replayed over the new file.
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, path)
    return sqlite_table_counts(path)


def _pg_restore(url: str, snapshot: Snapshot, *, force: bool) -> dict[str, int]:
    with _pg(url) as cur:
        cur.execute("SELECT current_schema()")
        current = cur.fetchone()[0]
        if current is not None and current != snapshot.schema:
            raise SnapshotError(
                f"the backup's tables are in schema {snapshot.schema!r} but the target database's"
                f" search_path puts them in {current!r}: give the target the same schema"
            )
        major = _pg_major(cur.connection)
        if force:
            # The schema goes as a whole: tables a newer schema added would survive --clean.
            cur.execute(f'DROP SCHEMA IF EXISTS "{snapshot.schema}" CASCADE')
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (snapshot.schema,))
        schema_exists = cur.fetchone() is not None
    pg_restore = find_pg_tool("pg_restore", major)
    args = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    if schema_exists:
        # An empty schema of that name is there already (a new database's public): restore
        # everything but its CREATE SCHEMA and COMMENT, which would fail.
        listing = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [pg_restore, "--list", str(snapshot.file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        kept = [line for line in listing.splitlines() if not re.search(r"\d+ \d+ (SCHEMA|COMMENT) - ", line)]
        with tempfile.NamedTemporaryFile("w", suffix=".list") as list_file:
            list_file.write("\n".join(kept) + "\n")
            list_file.flush()
            _run([*args, f"--use-list={list_file.name}", f"--dbname={url}", str(snapshot.file)], "pg_restore")
    else:
        _run([*args, f"--dbname={url}", str(snapshot.file)], "pg_restore")
    with _pg(url) as cur:
        return _pg_tables_txn(cur, snapshot.schema)
