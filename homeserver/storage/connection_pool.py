"""Threads that each own one database connection and run transactions handed to them.

What `twisted.enterprise.adbapi` does, with less work per transaction: a job is a tuple on a
queue and its result goes back through `reactor.callFromThread`. adbapi's thread pool wraps
each call in a closure that refers to itself, so every transaction left a reference cycle for
the garbage collector (a thousand a second under load, and the collector's pauses with them).

A connection lives in its thread. A thread starts when a job waits and no thread is idle, up
to `size_max`; `size_min` start at once. A lost connection is dropped and reopened for the
thread's next job.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

# (function, args, deferred); None tells a thread to close its connection and end.
_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]] | None


class PoolClosed(Exception):
    """A transaction was submitted after close()."""


class ConnectionPool:
    def __init__(
        self,
        connect: Callable[[], Any],
        size_min: int,
        size_max: int,
        is_disconnect: Callable[[BaseException, Any], bool],
        name: str = "db",
    ) -> None:
        """`connect()` opens a ready connection; `is_disconnect(error, conn)` tells a lost one."""
        from twisted.internet import reactor

        self._reactor: Any = reactor
        self._connect = connect
        self._is_disconnect = is_disconnect
        self._size_max = max(1, size_max)
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job; only changed under _lock
        self._closed = False
        for _ in range(min(max(0, size_min), self._size_max)):
            self._start_thread(idle=True)

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """`fn(cursor, *args)` in one transaction on a pool thread: committed if it returns,
        rolled back if it raises. The Deferred fires on the reactor thread."""
        if self._closed:
            raise PoolClosed("the database pool is closed")
        d: Deferred[Any] = Deferred()
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread takes this job
            elif len(self._threads) < self._size_max:
                self._start_thread(idle=False)
            # else every thread is busy: the job waits on the queue for the first one free
            # (the idle count may then run ahead, which no longer matters at size_max).
        self._jobs.put((fn, args, d))
        return d

    def close(self) -> None:
        """Let queued jobs finish, close every connection and join the threads."""
        if self._closed:
            return
        self._closed = True
        threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for t in threads:
            t.join()

    def _start_thread(self, idle: bool) -> None:
        # Called with _lock held (or from __init__). A thread started for a job counts as
        # busy until that job is done; one started by size_min counts as idle at once.
        if idle:
            self._idle += 1
        name = f"{self._name}-{len(self._threads)}"
        t = threading.Thread(target=self._work, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        conn: Any = None
        jobs = self._jobs
        call = self._reactor.callFromThread
        while True:
            job = jobs.get()
            if job is None:
                break
            fn, args, d = job
            result: Any = None
            failure: Failure | None = None
            # A pooled connection can have died while idle (the server restarted, an admin
            # ended the session): then the transaction runs once more on a new connection.
            # Only when the failure came before COMMIT, so nothing of it can have been stored.
            for retry in (False, True):
                fresh = conn is None
                committing = False
                try:
                    if conn is None:
                        conn = self._connect()
                    cursor = conn.cursor()
                    try:
                        result = fn(cursor, *args)
                        committing = True
                        conn.commit()
                    finally:
                        self._close_quietly(cursor)
                except BaseException as error:  # noqa: BLE001 - every error goes to the caller
                    failure = Failure()
                    if conn is not None:
                        self._rollback_quietly(conn)
                        if self._is_disconnect(error, conn):
                            log.warn("database connection lost: {error}", error=error)
                            self._close_quietly(conn)
                            conn = None
                            if not (fresh or committing or retry):
                                continue
                    call(d.errback, failure)
                else:
                    call(d.callback, result)
                break
            # Drop this job's references before waiting: the caller owns them now.
            job = fn = args = d = result = failure = None  # type: ignore[assignment]
            with self._lock:
                self._idle += 1
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
