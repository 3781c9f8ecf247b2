"""Threads that each own one database connection and run transactions handed to them.

The thread machinery is homeserver/threads.py (it replaced `twisted.enterprise.adbapi`, whose
thread pool left a reference cycle per transaction). A connection lives in its thread. A lost
connection is dropped and reopened for the thread's next job.

A transaction that cannot reach the database fails with `DatabaseUnavailable`: nothing of it
was stored. One whose connection broke while COMMIT was on its way fails with
`CommitOutcomeUnknown`: it may or may not be stored, and only the database can tell (the
event persister asks it; core/persist.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from homeserver.errors import ServiceUnavailable
from homeserver.threads import PoolClosed, WorkerThreads

log = Logger()

__all__ = ["CommitOutcomeUnknown", "ConnectionPool", "DatabaseUnavailable", "PoolClosed"]


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached, or the connection broke before COMMIT: nothing of
    the transaction was stored."""

    def __init__(self, message: str = "The database is unavailable; try again") -> None:
        super().__init__(message)


class CommitOutcomeUnknown(ServiceUnavailable):
    """The connection broke after COMMIT was sent and before its answer: the transaction may
    or may not be stored. Never treat it as failed without asking the database."""

    def __init__(self, message: str = "The database connection broke while committing; try again") -> None:
        super().__init__(message)


class ConnectionPool(WorkerThreads):
    def __init__(
        self,
        connect: Callable[[], Any],
        size_min: int,
        size_max: int,
        is_disconnect: Callable[[BaseException, Any], bool],
        name: str,
        reactor: Any,
    ) -> None:
        """`connect()` opens a ready connection; `is_disconnect(error, conn)` tells a lost one."""
        self._connect = connect
        self._is_disconnect = is_disconnect
        super().__init__(size_min, size_max, name, reactor)

    # run(fn, *args): `fn(cursor, *args)` in one transaction on a pool thread, committed if it
    # returns, rolled back if it raises; the Deferred fires on the reactor thread.

    def _execute(self, local: dict[str, Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        # A pooled connection can have died while idle (the server restarted, an admin ended
        # the session): then the transaction runs once more on a new connection. Only when the
        # failure came before COMMIT, so nothing of it can have been stored.
        for retry in (False, True):
            conn = local.get("conn")
            fresh = conn is None
            committing = False
            if conn is None:
                try:
                    conn = local["conn"] = self._connect()
                except Exception as error:
                    raise DatabaseUnavailable() from error
            try:
                cursor = conn.cursor()
                try:
                    result = fn(cursor, *args)
                    committing = True
                    conn.commit()
                finally:
                    self._close_quietly(cursor)
                return result
            except BaseException as error:
                self._rollback_quietly(conn)
                if not self._is_disconnect(error, conn):
                    raise
                log.warn("database connection lost: {error}", error=error)
                self._close_quietly(conn)
                del local["conn"]
                if committing or getattr(conn, "commit_in_flight", False):
                    raise CommitOutcomeUnknown() from error
                if not (fresh or retry):
                    continue
                raise DatabaseUnavailable() from error
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _thread_done(self, local: dict[str, Any]) -> None:
        conn = local.pop("conn", None)
        if conn is not None:
            self._close_quietly(conn)

    @staticmethod
    def _rollback_quietly(conn: Any) -> None:
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001, S110 - a lost connection; is_disconnect tells
            pass

    @staticmethod
    def _close_quietly(resource: Any) -> None:
        try:
            resource.close()
        except Exception:  # noqa: BLE001, S110 - already closed or broken
            pass
