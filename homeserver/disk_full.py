"""Telling a full disk from other write failures, and saying so once in the log.

A full disk is not a bug of the request that met it: it answers 507
M_RESOURCE_LIMIT_EXCEEDED (`StorageFull`, nothing was stored) and the log says "disk full"
once, then "disk has space again" once the data dir has room, instead of a traceback per
request. Reads keep working meanwhile. SQLite reports the disk as SQLITE_FULL and rolls
the transaction back (its journal and WAL stay consistent); PostgreSQL as SQLSTATE 53100;
files (media, keys) as ENOSPC or EDQUOT.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading

from twisted.logger import Logger

from homeserver.errors import StorageFull

log = Logger()

_SQLITE_FULL = 13  # primary result codes (the low byte of an extended one)
_SQLITE_IOERR = 10
_PG_DISK_FULL = "53100"
# Below this much free space the disk still counts as full: a write that fits now would
# leave SQLite no room for its next WAL frame or journal.
ROOM_AGAIN_BYTES = 1024 * 1024


def is_disk_full(error: BaseException, where: str = "") -> bool:
    """Whether `error` (or what caused it) means the disk had no space for a write.

    SQLite reports a full disk as SQLITE_FULL while writing pages, but as an I/O error when
    it cannot grow its shared-memory index (opening the database, SQLITE_IOERR_SHMSIZE) or a
    file: those count when the disk at `where` has (almost) no space left.
    """
    for current in causes(error):
        if isinstance(current, StorageFull):
            return True
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", 0)
            if code & 0xFF == _SQLITE_FULL:
                return True
            if code & 0xFF == _SQLITE_IOERR and where and _free_bytes(where) < ROOM_AGAIN_BYTES:
                return True
        if getattr(current, "pgcode", None) == _PG_DISK_FULL:
            return True
    return False


def causes(error: BaseException) -> list[BaseException]:
    """`error` and the chain of errors that led to it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _free_bytes(where: str) -> int:
    try:
        stat = os.statvfs(where)
    except OSError:
        return ROOM_AGAIN_BYTES  # unknown: do not guess "full"
    return stat.f_bavail * stat.f_frsize


class DiskWatch:
    """Whether the last write found the disk full; logs each change once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # pool threads and the reactor thread both report
        self._full_at: str | None = None  # a directory on the full disk

    @property
    def full(self) -> bool:
        return self._full_at is not None

    def refused(self, where: str, error: BaseException, what: str = "") -> StorageFull:
        """Note a write (`what`) refused for lack of space in `where`; return the error to raise."""
        with self._lock:
            first = self._full_at is None
            self._full_at = where
        log.debug("disk full: {what} refused", what=what or "a write")
        if first:
            log.error(
                "disk full at {where} ({error}, in {what}): writes are refused with 507 "
                "M_RESOURCE_LIMIT_EXCEEDED until space is freed",
                where=where or "the database",
                what=what or "a write",
                error=str(causes(error)[-1]) or type(error).__name__,
            )
        return StorageFull()

    def check_room(self) -> None:
        """After a successful operation while full: log once when the disk has room again."""
        where = self._full_at
        if where is None:
            return
        # Not a local directory (PostgreSQL's disk): a success is all there is to go on.
        if where and os.path.isdir(where) and _free_bytes(where) < ROOM_AGAIN_BYTES:
            return
        with self._lock:
            if self._full_at is None:
                return
            self._full_at = None
        log.info("disk has space again at {where}: writes accepted", where=where)


# One per process: the database and the media files usually share the data dir's disk.
disk_watch = DiskWatch()
