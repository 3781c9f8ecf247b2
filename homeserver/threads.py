"""Blocking work on worker threads, answered on the reactor thread.

What `twisted.internet.threads.deferToThread` does, with less work per call: a job is a tuple
on a queue and its result goes back through `reactor.callFromThread`. Twisted's thread pool
wraps each call in a closure that refers to itself, so every call left a reference cycle for
the garbage collector (with database transactions, a thousand a second under load, and the
collector's pauses with them).

A thread starts when a job waits and no thread is idle, up to `size_max`; `size_min` start at
once. Subclasses keep per-thread state (a database connection: storage/connection_pool.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

# (function, args, deferred, monotonic time queued); None tells a thread to end.
_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any], float] | None


class PoolClosed(Exception):
    """Work was submitted after close()."""


class WorkerThreads:
    def __init__(self, size_min: int, size_max: int, name: str, reactor: Any) -> None:
        """`reactor` (its callFromThread) answers each job on the reactor thread."""
        self._reactor = reactor
        self._size_max = max(1, size_max)
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job; only changed under _lock
        self._closed = False
        # Told how long each job waited for a thread, on that thread (the metrics).
        self.wait_observer: Callable[[float], None] | None = None
        for _ in range(min(max(0, size_min), self._size_max)):
            self._start_thread(idle=True)

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the job on a worker thread; the Deferred fires on the reactor thread."""
        if self._closed:
            raise PoolClosed(f"the {self._name} threads are closed")
        d: Deferred[Any] = Deferred()
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread takes this job
            elif len(self._threads) < self._size_max:
                self._start_thread(idle=False)
            # else every thread is busy: the job waits on the queue for the first one free
            # (the idle count may then run ahead, which no longer matters at size_max).
        self._jobs.put((fn, args, d, time.monotonic()))
        return d

    def close(self) -> None:
        """Let queued jobs finish, then end and join the threads."""
        if self._closed:
            return
        self._closed = True
        threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for t in threads:
            t.join()

    def _execute(self, local: dict[str, Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """One job, on its thread; `local` is that thread's own state."""
        return fn(*args)

    def _thread_done(self, local: dict[str, Any]) -> None:
        """The thread ends: release what `local` holds."""

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
        local: dict[str, Any] = {}
        jobs = self._jobs
        call = self._reactor.callFromThread
        while True:
            job = jobs.get()
            if job is None:
                break
            fn, args, d, queued = job
            observe = self.wait_observer
            if observe is not None:
                observe(time.monotonic() - queued)
            try:
                result = self._execute(local, fn, args)
            except BaseException:  # noqa: BLE001 - every error goes to the caller
                call(d.errback, Failure())
            else:
                call(d.callback, result)
            # Drop this job's references before waiting: the caller owns them now.
            job = fn = args = d = result = None  # type: ignore[assignment]
            with self._lock:
                self._idle += 1
        self._thread_done(local)


class ChunksOnThreads:
    """A reader's bytes as an async iterator of `size`-byte chunks, each read by `run` (a
    worker-thread runner) so the reactor never waits on the disk or S3. The reader is
    closed at the end, or by `aclose` even if iteration never started (a HEAD request)."""

    def __init__(self, run: Callable[..., Deferred[Any]], reader: Any, size: int) -> None:
        self._run = run
        self._reader = reader
        self._size = size
        self._closed = False

    def __aiter__(self) -> ChunksOnThreads:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        chunk: bytes = await self._run(self._reader.read, self._size)
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._run(self._reader.close)
