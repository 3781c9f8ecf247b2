"""An event writer's PostgreSQL advisory lock, held on a connection of its own while its
process lives: how the other writers tell a dead writer from a slow one
(workers/writer_fence.py, ADR 0008)."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from homeserver.storage.stream_writers import LOCK_KEY
from homeserver.threads import WorkerThreads

log = Logger()

# PostgreSQL ends a writer's lock connection after this long without a ping (each heartbeat):
# how long a stopped or partitioned writer keeps its lock, so the others wait for it.
LEASE_S = 10.0
# The lease is `idle_session_timeout`, which PostgreSQL has from version 14 on.
MIN_SERVER_VERSION = 140000


class ServerTooOld(RuntimeError):
    """The database cannot end a stopped writer's lock: fencing would never happen."""


def require_lease_support(server_version: int) -> None:
    """Refuse, saying why, to run an event writer on a PostgreSQL without
    `idle_session_timeout` (before 14, SET would fail with an unknown parameter)."""
    if server_version < MIN_SERVER_VERSION:
        v = server_version  # 130012 is 13.12, 90624 is 9.6.24
        major = str(v // 10000) if v >= 100000 else f"{v // 10000}.{v // 100 % 100}"
        raise ServerTooOld(
            f"workers need PostgreSQL 14 or later (idle_session_timeout, ADR 0008);"
            f" the database at database.url is PostgreSQL {major}"
        )


class WriterLock:
    """This writer's advisory lock, on a connection of its own, held while the process lives.

    `hold` takes it before the first commit; `renew` (each heartbeat) pings it, and after a
    lost connection (a PostgreSQL restart, the lease expired while the process was stopped)
    takes it again and says whether the writer was fenced meanwhile."""

    def __init__(self, url: str, name: str, reactor: Any) -> None:
        self.url = url
        self.name = name
        self._threads = WorkerThreads(1, 1, f"writer-lock-{name}", reactor)
        self._conn: Any = None
        self._renewing = False

    async def hold(self) -> None:
        """Take the lock, waiting for a previous instance's to go (it is the same writer)."""
        await self._threads.run(self._lock)

    async def renew(self) -> bool:
        """Ping the lock's connection, or take the lock again: whether this writer was fenced
        (retired by another while it held no lock). Errors are left to the next heartbeat."""
        if self._renewing:
            return False
        self._renewing = True
        try:
            result: bool = await self._threads.run(self._renew)
            return result
        finally:
            self._renewing = False

    def close(self) -> None:
        """Let the lock go (on its thread, after what it is doing: not waited for)."""
        self._threads.run(self._close)

    # On the lock's thread ---------------------------------------------------------------------

    def _lock(self) -> None:
        import psycopg2

        self._close()
        # Keepalives: a connection whose server vanished errs instead of hanging the pings.
        conn = psycopg2.connect(
            self.url, connect_timeout=5, keepalives=1, keepalives_idle=5, keepalives_interval=2,
            keepalives_count=2,
        )  # fmt: skip
        conn.autocommit = True
        try:
            require_lease_support(conn.server_version)
        except ServerTooOld:
            conn.close()
            raise
        with conn.cursor() as cur:
            cur.execute("SET idle_session_timeout = %s", (int(LEASE_S * 1000),))
            cur.execute("SET application_name = %s", (f"event writer {self.name}",))
            cur.execute(f"SELECT pg_advisory_lock({LOCK_KEY.replace('?', '%s')})", (self.name,))
        self._conn = conn

    def _renew(self) -> bool:
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return False
            except Exception:  # noqa: BLE001 - lost: take it again below
                log.warn("event writer {me} lost its lock's connection; taking it again", me=self.name)
        self._lock()
        with self._conn.cursor() as cur:
            cur.execute("SELECT retired_at FROM stream_writers WHERE name = %s", (self.name,))
            row = cur.fetchone()
        return row is not None and row[0] is not None

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass
