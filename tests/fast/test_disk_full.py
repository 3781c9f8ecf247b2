"""A full disk, told apart from other failures and logged once (homeserver/homeserver/disk_full.py),
and the start-up files that must never be left half-written by one (homeserver/server.py).

The real disk is filled in tests/test_full_disk.py; here the errors are made by hand.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server
from twisted.logger import Logger

from homeserver import disk_full
from homeserver import server as server_module
from homeserver.config import load_config
from homeserver.errors import StorageFull
from homeserver.storage.connection_pool import DatabaseUnavailable


def sqlite_error(code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


class PgDiskFull(Exception):
    pgcode = "53100"


def test_what_counts_as_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert disk_full.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full.is_disk_full(sqlite_error(13))  # SQLITE_FULL
    assert disk_full.is_disk_full(PgDiskFull())
    # Wrapped, as the pool wraps a connection that could not open.
    try:
        try:
            raise sqlite_error(13)
        except sqlite3.Error as e:
            raise DatabaseUnavailable() from e
    except DatabaseUnavailable as wrapped:
        assert disk_full.is_disk_full(wrapped)
    assert not disk_full.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full.is_disk_full(sqlite3.IntegrityError("UNIQUE constraint failed"))
    # An I/O error (SQLite cannot grow its shared-memory index) only when the disk is full.
    shm = sqlite_error(4874)  # SQLITE_IOERR_SHMSIZE
    assert not disk_full.is_disk_full(shm, str(tmp_path))
    monkeypatch.setattr(disk_full, "_free_bytes", lambda where: 4096)
    assert disk_full.is_disk_full(shm, str(tmp_path))
    assert not disk_full.is_disk_full(shm)  # no directory to look at: not a guess


def test_the_log_says_full_once_and_space_again_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(disk_full, "log", Logger(observer=events.append))
    free = {"bytes": 0}
    monkeypatch.setattr(disk_full, "_free_bytes", lambda where: free["bytes"])
    watch = disk_full.DiskWatch()
    for _ in range(5):
        error = watch.refused(str(tmp_path), OSError(errno.ENOSPC, "No space left on device"), "put_receipt")
        assert isinstance(error, StorageFull)
        assert (error.status, error.errcode) == (507, "M_RESOURCE_LIMIT_EXCEEDED")
        watch.check_room()  # a read succeeded meanwhile: still full
    free["bytes"] = 50 * 1024 * 1024
    watch.check_room()
    watch.check_room()
    said = [e["log_format"] for e in events if e["log_level"].name != "debug"]
    assert len(said) == 2 and said[0].startswith("disk full at") and "space again" in said[1]
    assert not watch.full


def test_a_jwt_secret_cut_short_by_a_full_disk_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "homeserver.yaml"
    config_path.write_text(f"server_name: example.org\ndata_dir: {tmp_path / 'data'}\n")
    config = load_config(str(config_path))
    real_fdopen = server_module.os.fdopen

    class FullFile:
        def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
            self.file = real_fdopen(fd, *args, **kwargs)

        def __enter__(self) -> FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(server_module.os, "fdopen", FullFile)
    with pytest.raises(OSError) as raised:
        server_module.load_jwt_secret(config)
    assert raised.value.errno == errno.ENOSPC
    assert list((tmp_path / "data").iterdir()) == []  # no empty secret for the next start to trust
    monkeypatch.undo()
    secret = server_module.load_jwt_secret(config)
    assert len(secret) > 40 and server_module.load_jwt_secret(config) == secret


@pytest_twisted.ensureDeferred
async def test_a_full_disk_met_outside_storage_still_answers_507(tmp_path: Path) -> None:
    """A handler whose file write fails (no layer below turned it into StorageFull) gets the
    same answer from the router; any other OSError is still a 500."""
    hs = await make_server(tmp_path, TestClock())
    try:

        async def full(request: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        async def denied(request: Any) -> Any:
            raise OSError(errno.EACCES, "Permission denied")

        hs.router.add("GET", "/_test/full", full)
        hs.router.add("GET", "/_test/denied", denied)
        client = Client(hs)
        status, body = await client.start("GET", "/_test/full")
        assert (status, body["errcode"]) == (507, "M_RESOURCE_LIMIT_EXCEEDED")
        status, body = await client.start("GET", "/_test/denied")
        assert (status, body["errcode"]) == (500, "M_UNKNOWN")
    finally:
        await hs.stop(None)
