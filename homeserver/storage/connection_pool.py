"""Threads that each own one database connection and run transactions handed to them.

The thread machinery is homeserver/threads.py (it replaced `twisted.enterprise.adbapi`, whose
thread pool left a reference cycle per transaction). A connection lives in its thread. A lost
connection is dropped and reopened for the thread's next job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from homeserver.threads import PoolClosed, WorkerThreads

log = Logger()

__all__ = ["ConnectionPool", "PoolClosed"]


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
            try:
                if conn is None:
                    conn = local["conn"] = self._connect()
                cursor = conn.cursor()
                try:
                    result = fn(cursor, *args)
                    committing = True
                    conn.commit()
                finally:
                    self._close_quietly(cursor)
                return result
            except BaseException as error:
                if conn is not None:
                    self._rollback_quietly(conn)
                    if self._is_disconnect(error, conn):
                        log.warn("database connection lost: {error}", error=error)
                        self._close_quietly(conn)
                        del local["conn"]
                        if not (fresh or committing or retry):
                            continue
                raise
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
