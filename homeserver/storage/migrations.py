"""Numbered schema files, each applied once and recorded.

A directory holds `NNN_name.sql` (both engines) or, where the engines differ,
`NNN_name.sqlite.sql` and `NNN_name.postgres.sql` side by side. Files are applied
in number order, each in its own transaction together with the row that records
it in `schema_versions` (component, version), so a crash never leaves a file half
applied and recorded. The core's component is "core"; each plugin that owns tables
migrates its own directory under its own component name.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from homeserver.storage.database import Database, Txn

log = Logger()

CORE_SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "sql"
_FILE_RE = re.compile(r"^(\d+)_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class SchemaFile:
    version: int
    name: str
    path: Path


def schema_files(directory: Path, dialect: str) -> list[SchemaFile]:
    """The files of `directory` that apply to `dialect`, in version order."""
    by_version: dict[int, SchemaFile] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path}: schema files are named NNN_name[.sqlite|.postgres].sql")
        version, name, file_dialect = int(m.group(1)), m.group(2), m.group(3)
        if file_dialect not in (None, dialect):
            continue
        if version in by_version:
            raise MigrationError(f"{path}: schema version {version} appears twice")
        by_version[version] = SchemaFile(version, name, path)
    return [by_version[v] for v in sorted(by_version)]


def _ensure_versions_table_txn(txn: Txn) -> None:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions ("
        " component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
        " applied_ts BIGINT NOT NULL, PRIMARY KEY (component, version))"
    )


def _applied_txn(txn: Txn, component: str) -> set[int]:
    _ensure_versions_table_txn(txn)
    return {
        row[0] for row in txn.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
    }


def _apply_txn(txn: Txn, component: str, schema: SchemaFile) -> None:
    sql = schema.path.read_text(encoding="utf-8")
    if txn.engine.name == "sqlite":
        # sqlite3 runs several statements only through executescript, which manages
        # its own transaction: wrap the file and its record in one explicit one.
        raw = txn._cursor  # noqa: SLF001 - the one place that needs the raw cursor
        record = (
            "INSERT INTO schema_versions (component, version, name, applied_ts) VALUES "
            f"('{component}', {schema.version}, '{schema.name}', {int(time.time() * 1000)});"
        )
        try:
            raw.executescript(f"BEGIN;\n{sql}\n;{record}\nCOMMIT;")
        except Exception:
            raw.connection.rollback()
            raise
    else:
        txn._cursor.execute(sql)  # noqa: SLF001 - psycopg2 runs a multi-statement string
        txn.execute(
            "INSERT INTO schema_versions (component, version, name, applied_ts) VALUES (?, ?, ?, ?)",
            (component, schema.version, schema.name, int(time.time() * 1000)),
        )


async def migrate(db: Database, directory: Path = CORE_SCHEMA_DIR, component: str = "core") -> list[int]:
    """Apply every schema file of `directory` not yet recorded for `component`; return their versions."""
    if not re.fullmatch(r"[a-z0-9_.]+", component):
        raise MigrationError(f"bad schema component name {component!r}")
    applied = await db.run_interaction("schema_applied", _applied_txn, component)
    done = []
    for schema in schema_files(directory, db.dialect):
        if schema.version in applied:
            continue
        log.info(
            "applying schema {component} {version} {name}",
            component=component,
            version=schema.version,
            name=schema.name,
        )
        try:
            await db.run_interaction(f"schema_{schema.name}", _apply_txn, component, schema)
        except Exception as e:
            raise MigrationError(f"{schema.path.name}: {e}") from e
        done.append(schema.version)
    return done
