"""Schema migrations (homeserver.storage.migrations) on both engines, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from homeserver.storage import Storage
from homeserver.storage.database import Database
from homeserver.storage.migrations import CORE_SCHEMA_DIR, MigrationError, migrate, schema_files


async def table_exists(db: Database, table: str) -> bool:
    if db.dialect == "sqlite":
        rows = await db.query("t", "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", table)
    else:
        rows = await db.query(
            "t",
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?",
            table,
        )
    return bool(rows)


async def recorded(db: Database, component: str) -> list[tuple[int, str]]:
    rows = await db.query(
        "t", "SELECT version, name FROM schema_versions WHERE component = ? ORDER BY version", component
    )
    return [(r[0], r[1]) for r in rows]


def core_files(dialect: str) -> list[tuple[int, str]]:
    return [(f.version, f.name) for f in schema_files(CORE_SCHEMA_DIR, dialect)]


@pytest_twisted.ensureDeferred
async def test_migrate_applies_every_core_file_once_and_records_it(database_url: str) -> None:
    storage = Storage.from_url(database_url)
    try:
        expected = core_files(storage.db.dialect)
        assert expected, "sql/ holds no schema files"
        applied = await migrate(storage.db)
        assert applied == [v for v, _ in expected]
        assert await recorded(storage.db, "core") == expected
        for table in ("users", "user_threepids", "profiles", "devices", "access_tokens", "events", "rooms"):
            assert await table_exists(storage.db, table), table

        # A second run has nothing to do and records nothing twice.
        assert await migrate(storage.db) == []
        assert await recorded(storage.db, "core") == expected
    finally:
        storage.close()


@pytest_twisted.ensureDeferred
async def test_migrate_again_on_a_new_connection_applies_nothing(database_url: str) -> None:
    storage = Storage.from_url(database_url)
    try:
        await migrate(storage.db)
    finally:
        storage.close()
    storage = Storage.from_url(database_url)
    try:
        assert await migrate(storage.db) == []
    finally:
        storage.close()


@pytest_twisted.ensureDeferred
async def test_components_are_recorded_separately(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_things.sql").write_text("CREATE TABLE comp_things (id INTEGER PRIMARY KEY);\n")
    storage = Storage.from_url(database_url)
    try:
        await migrate(storage.db)
        assert await migrate(storage.db, tmp_path, component="plugin.things") == [1]
        assert await recorded(storage.db, "plugin.things") == [(1, "things")]
        # The core's version 1 and this component's version 1 do not collide.
        assert (1, "accounts") in await recorded(storage.db, "core")
        assert await migrate(storage.db, tmp_path, component="plugin.things") == []
    finally:
        storage.close()


@pytest_twisted.ensureDeferred
async def test_dialect_specific_pair_applies_only_the_engines_own_file(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "001_base.sql").write_text("CREATE TABLE dialect_base (id INTEGER PRIMARY KEY);\n")
    (tmp_path / "002_x.sqlite.sql").write_text(
        "CREATE TABLE only_sqlite (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);\n"
    )
    (tmp_path / "002_x.postgres.sql").write_text(
        "CREATE TABLE only_postgres (id BIGSERIAL PRIMARY KEY, v TEXT);\n"
    )
    storage = Storage.from_url(database_url)
    try:
        dialect = storage.db.dialect
        other = "postgres" if dialect == "sqlite" else "sqlite"
        assert await migrate(storage.db, tmp_path, component="test_dialect") == [1, 2]
        assert await table_exists(storage.db, "dialect_base")
        assert await table_exists(storage.db, f"only_{dialect}")
        assert not await table_exists(storage.db, f"only_{other}")
        assert await recorded(storage.db, "test_dialect") == [(1, "base"), (2, "x")]
        assert await migrate(storage.db, tmp_path, component="test_dialect") == []
    finally:
        storage.close()


@pytest.mark.parametrize(
    "broken_sql",
    [
        # A runtime failure after a statement that succeeded.
        "CREATE TABLE half_applied (id INTEGER);\nINSERT INTO no_such_table (id) VALUES (1);\n",
        # A syntax error after a statement that succeeded.
        "CREATE TABLE half_applied (id INTEGER);\nCREATE TABLE broken (id INTEGER,;\n",
    ],
    ids=["runtime-error", "syntax-error"],
)
@pytest_twisted.ensureDeferred
async def test_broken_file_fails_is_not_recorded_and_leaves_nothing(
    database_url: str, tmp_path: Path, broken_sql: str
) -> None:
    (tmp_path / "001_good.sql").write_text("CREATE TABLE good_one (id INTEGER PRIMARY KEY);\n")
    (tmp_path / "002_bad.sql").write_text(broken_sql)
    (tmp_path / "003_later.sql").write_text("CREATE TABLE later_one (id INTEGER PRIMARY KEY);\n")
    storage = Storage.from_url(database_url)
    try:
        with pytest.raises(MigrationError) as info:
            await migrate(storage.db, tmp_path, component="test_broken")
        assert "002_bad.sql" in str(info.value)
        # The good file before it stays applied; the broken one and those after it do not.
        assert await recorded(storage.db, "test_broken") == [(1, "good")]
        assert await table_exists(storage.db, "good_one")
        assert not await table_exists(storage.db, "half_applied")
        assert not await table_exists(storage.db, "later_one")

        # The database is still usable, and after the fix the rest applies.
        (tmp_path / "002_bad.sql").write_text("CREATE TABLE half_applied (id INTEGER);\n")
        assert await migrate(storage.db, tmp_path, component="test_broken") == [2, 3]
        assert await recorded(storage.db, "test_broken") == [(1, "good"), (2, "bad"), (3, "later")]
    finally:
        storage.close()


def test_schema_file_naming_rules(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("")
    (tmp_path / "002_b.sqlite.sql").write_text("")
    (tmp_path / "002_b.postgres.sql").write_text("")
    assert [(f.version, f.name, f.path.name) for f in schema_files(tmp_path, "sqlite")] == [
        (1, "a", "001_a.sql"),
        (2, "b", "002_b.sqlite.sql"),
    ]
    assert [f.path.name for f in schema_files(tmp_path, "postgres")] == ["001_a.sql", "002_b.postgres.sql"]

    (tmp_path / "002_c.sql").write_text("")
    with pytest.raises(MigrationError, match="appears twice"):
        schema_files(tmp_path, "sqlite")
    (tmp_path / "002_c.sql").unlink()

    (tmp_path / "3_Bad-Name.sql").write_text("")
    with pytest.raises(MigrationError, match="NNN_name"):
        schema_files(tmp_path, "sqlite")


@pytest_twisted.ensureDeferred
async def test_bad_component_name_is_refused(tmp_path: Path) -> None:
    storage = Storage.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with pytest.raises(MigrationError, match="component"):
            await migrate(storage.db, tmp_path, component="x'; DROP TABLE users; --")
    finally:
        storage.close()
