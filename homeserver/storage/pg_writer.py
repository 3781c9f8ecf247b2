"""One non-blocking PostgreSQL connection, driven by the reactor, for the write of each commit.

The group commit's transaction is writes only, sent as one query string that ends in COMMIT
(`Txn.batched(commit=True)`). Through the thread pool it took a hop to a pool thread, the GIL
handed back and forth while psycopg2 built and read the messages, and a hop back through the
reactor's waker: at 500 messages/s about half of a commit's time, and most of its tail. Here
psycopg2's asynchronous mode sends the string and reads the answer as the socket allows, on
the reactor thread, with no thread at all (psycopg2 docs, "Asynchronous support").

`run` answers as the pool does: `DatabaseUnavailable` when the string was never sent (no
connection), `CommitOutcomeUnknown` when the connection broke after it was sent, and the
server's own error otherwise (the transaction is then rolled back). While idle the connection
is watched, so one the server closed is noticed and reopened before the next write.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from homeserver.storage.connection_pool import CommitOutcomeUnknown, DatabaseUnavailable

log = Logger()


@implementer(IReadWriteDescriptor)
class PgWriter:
    def __init__(self, dsn: str, reactor: Any) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._conn: Any = None
        self._connected = False
        self._waiting: Deferred[None] | None = None
        self._reading = self._writing = False
        # Our own duplicate of the connection's socket, for the reactor: libpq closes its fd
        # as soon as it sees the connection gone, and a closed fd cannot leave the reactor.
        self._fd = -1
        self._fd_inode = 0
        self._busy = False
        self._cursor: Any = None
        self.prepared: set[str] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    def backend_pid(self) -> int | None:
        """The server process on the other end (for logs and tests), None when not connected."""
        return int(self._conn.info.backend_pid) if self._connected else None

    # The write ---------------------------------------------------------------------------------

    async def run(self, prepares: list[tuple[str, str]], sql: str, args: tuple[Any, ...]) -> None:
        """BEGIN, the PREPAREs this connection lacks, `sql`, COMMIT: one query string."""
        if self._busy:
            raise RuntimeError("PgWriter runs one transaction at a time")
        self._busy = True
        try:
            await self._ensure_connected()
            new = [(name, text) for name, text in prepares if name not in self.prepared]
            # psycopg2 fills `args` into the whole string: a literal % must be doubled.
            prefix = "".join(f"PREPARE {name} AS {text.replace('%', '%%')};" for name, text in new)
            try:
                self._send("BEGIN;" + prefix + sql + ";COMMIT", args)
            except Exception as error:
                self._drop()
                raise DatabaseUnavailable() from error
            try:
                await self._until_answered()
            except Exception as error:
                if self._conn is None or self._conn.closed:
                    self._drop()
                    raise CommitOutcomeUnknown() from error
                await self._roll_back(bool(new))
                raise
            self.prepared.update(name for name, _ in new)
        finally:
            self._busy = False

    async def _roll_back(self, prepared_some: bool) -> None:
        """After the server refused the string: end its transaction, relearn what is prepared
        (a PREPARE before the failing statement stays, one after it never ran)."""
        try:
            self._send("ROLLBACK", None)
            await self._until_answered()
            if prepared_some:
                cursor = self._send("SELECT name FROM pg_prepared_statements", None)
                await self._until_answered()
                self.prepared = {row[0] for row in cursor.fetchall()}
        except Exception:
            self._drop()  # the next write starts on a new connection

    # The connection ----------------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        if self._conn is not None and not self._conn.closed and self._connected:
            return
        self._drop()
        import psycopg2

        try:
            self._conn = psycopg2.connect(self._dsn, async_=1)
            await self._until_answered()
        except Exception as error:
            self._drop()
            raise DatabaseUnavailable() from error
        self._connected = True

    def _send(self, sql: str, args: Any) -> Any:
        # The cursor must live until its answer is read (psycopg2 keeps only a weak reference).
        self._cursor = self._conn.cursor()
        self._cursor.execute(sql, args)
        return self._cursor

    def _until_answered(self) -> Deferred[None]:
        self._waiting = Deferred()
        waiting = self._waiting
        self._poll()
        return waiting

    def _drop(self) -> None:
        self._watch(read=False, write=False)
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass
        self._conn = None
        self._cursor = None
        self._connected = False
        self._fd_inode = 0
        self.prepared = set()

    def close(self) -> None:
        self._drop()

    def _poll(self) -> None:
        import psycopg2.extensions as ext

        try:
            state = self._conn.poll()
            if not self._connected:
                self._follow_socket()  # libpq may open a new one while it connects
        except Exception:
            self._answer(Failure())
            return
        if state == ext.POLL_OK:
            # Answered; keep reading while idle, to notice a connection the server closes.
            self._watch(read=True, write=False)
            self._answer(None)
        elif state == ext.POLL_READ:
            self._watch(read=True, write=False)
        else:  # POLL_WRITE
            self._watch(read=False, write=True)

    def _follow_socket(self) -> None:
        inode = os.fstat(self._conn.fileno()).st_ino
        if inode != self._fd_inode:
            self._watch(read=False, write=False)
            if self._fd != -1:
                os.close(self._fd)
            self._fd, self._fd_inode = os.dup(self._conn.fileno()), inode

    def _answer(self, result: Failure | None) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            if result is not None:  # idle, and the connection went away
                log.info("the writer's database connection closed; it reopens on the next write")
                self._drop()
            return
        if result is None:
            waiting.callback(None)
        else:
            waiting.errback(result)

    def _watch(self, *, read: bool, write: bool) -> None:
        if read != self._reading:
            (self._reactor.addReader if read else self._reactor.removeReader)(self)
            self._reading = read
        if write != self._writing:
            (self._reactor.addWriter if write else self._reactor.removeWriter)(self)
            self._writing = write

    # IReadWriteDescriptor ----------------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:  # noqa: N802 - Twisted's names
        if self._conn is not None:
            self._poll()

    def doWrite(self) -> None:  # noqa: N802
        if self._conn is not None:
            self._poll()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        # The reactor saw the socket hang up with nothing left to read (a refused connect
        # while PostgreSQL is down, a reset mid-query) and stopped watching it without a
        # doRead or doWrite: a write waiting here would wait forever, and every send with it.
        self._reading = self._writing = False
        if self._conn is None:
            return
        waiting = self._waiting
        if waiting is not None:
            self._poll()  # libpq reads what is left and names the error
            if self._waiting is not waiting:
                return
        # libpq has not noticed: the connection is unusable all the same. Dropped first, so
        # a write in flight reads as CommitOutcomeUnknown (its COMMIT may have arrived).
        self._drop()
        self._answer(reason)

    def logPrefix(self) -> str:  # noqa: N802
        return "pg-writer"
