"""A small HTTP/1.1 client on raw asyncio protocols: keep-alive, one request per connection at a time.

Why not aiohttp for the hot path: the load generator has to answer tens of
thousands of sync responses a second from one Python process sharing two cores
with the server under test; a bare protocol costs a fraction of aiohttp's
per-request work (no cookie jar, tracing, middleware or response objects).
It speaks exactly what the Matrix Client-Server API needs: JSON bodies, a bearer
token, Content-Length or chunked responses.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import orjson


class HttpError(Exception):
    """A request that got no (complete) answer: connection refused, reset or closed early."""


@dataclass
class HttpResponse:
    status: int
    body: bytes
    # Which server behind the balancer answered (the bench's HAProxy sets X-Served-By).
    served_by: str = ""

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def text(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request` sends one request and returns its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._head_request = False
        self._reset_state()

    def _reset_state(self) -> None:
        self._status = 0
        self._have_head = False
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = True
        self._chunks: list[bytes] = []
        self.served_by = ""

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is not None:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if self._have_head and self._length is None and not self._chunked:
                # A body delimited by the end of the connection.
                waiter.set_result((self._status, bytes(self._buf), False))
            else:
                waiter.set_exception(HttpError(f"connection lost: {exc or 'closed by peer'}"))

    # Requests -------------------------------------------------------------------------------

    def request(self, raw: bytes, head: bool = False) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._head_request = head
        self._reset_state()
        self.used = True
        self.transport.write(raw)
        if self._buf:
            self._parse()
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body, self._keep_alive))

    def _parse(self) -> None:
        buf = self._buf
        if not self._have_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                self._fail(f"bad status line {lines[0][:80]!r}")
                return
            self._status = int(parts[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self._length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self._chunked = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    self._keep_alive = False
                elif name == b"x-served-by":
                    self.served_by = value.strip().decode("latin-1")
            self._have_head = True
            if self._head_request or self._status in (204, 304) or 100 <= self._status < 200:
                self._length = 0
                self._chunked = False
        if self._chunked:
            self._parse_chunks()
        elif self._length is not None and len(buf) >= self._length:
            body = bytes(buf[: self._length])
            del buf[: self._length]
            self._finish(body)

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self._fail(f"bad chunk size {size_text[:20]!r}")
                return
            if size == 0:
                # The last chunk; trailers (none expected) end with an empty line.
                if len(buf) < end + 4:
                    return
                if buf[end + 2 : end + 4] == b"\r\n":
                    stop = end + 4
                else:
                    trailers_end = buf.find(b"\r\n\r\n", end + 2)
                    if trailers_end < 0:
                        return
                    stop = trailers_end + 4
                del buf[:stop]
                self._finish(b"".join(self._chunks))
                return
            if len(buf) < end + 2 + size + 2:
                return
            self._chunks.append(bytes(buf[end + 2 : end + 2 + size]))
            del buf[: end + 2 + size + 2]

    def _fail(self, why: str) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpError(why))


class HttpClient:
    """Keep-alive connections to one host:port, opened on demand and reused.

    A connection is taken from the idle list for the time of one request (a long
    poll holds one for its whole wait) and put back after, unless the server
    asked to close it. `source_addrs` spreads new connections over several
    loopback source addresses when one runs short of ephemeral ports.
    """

    def __init__(self, host: str, port: int, source_addrs: list[str] | None = None) -> None:
        self.host = host
        self.port = port
        self._host_header = f"{host}:{port}"
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._sources = itertools.cycle(source_addrs) if source_addrs else None
        self.connections_opened = 0
        self.requests = 0

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        local = (next(self._sources), 0) if self._sources is not None else None
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port, local_addr=local)
        except OSError as e:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {e}") from e
        self.connections_opened += 1
        return conn

    def _encode(self, method: str, path: str, body: Any, token: str | None) -> bytes:
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = orjson.dumps(body)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        if payload or method in ("POST", "PUT"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        return (head + "\r\n").encode("latin-1") + payload

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        """Send one request; retried once on a fresh connection if a reused one was already dead."""
        raw = self._encode(method, path, body, token)
        for attempt in (0, 1):
            conn = self._idle.pop() if self._idle else await self._connect()
            while conn.closed and self._idle:
                conn = self._idle.pop()
            if conn.closed:
                conn = await self._connect()
            reused = conn.used
            self._busy.add(conn)
            try:
                fut = conn.request(raw, head=method == "HEAD")
                if timeout is None:
                    status, data, keep = await fut
                else:
                    status, data, keep = await asyncio.wait_for(fut, timeout)
            except HttpError:
                self._busy.discard(conn)
                conn.close()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                # Cancelled (a long poll we stop) or timed out: the connection is in an unknown state.
                self._busy.discard(conn)
                conn.close()
                raise
            self._busy.discard(conn)
            self.requests += 1
            served_by = conn.served_by
            if keep and not conn.closed:
                self._idle.append(conn)
            else:
                conn.close()
            return HttpResponse(status, data, served_by)
        raise AssertionError("unreachable")

    async def preconnect(self, count: int, concurrency: int = 50) -> None:
        """Open `count` idle connections ahead of a burst (at most `concurrency` handshakes at once,
        so the server's listen backlog never overflows)."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                self._idle.append(await self._connect())

        await asyncio.gather(*(one() for _ in range(count)))

    def close_idle(self) -> None:
        """Close the idle connections (before a memory measurement, say)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        self.close_idle()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
