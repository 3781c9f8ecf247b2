"""A TCP proxy in front of PostgreSQL that can break connections at chosen moments.

It reads the frontend/backend protocol just enough to know where a query starts and where
the server's answer to it ends (spec: PostgreSQL "Message Formats"), so a test can:
- break the connection after a transaction's COMMIT reached the server and before the answer
  reaches the client (`break_after_commit_of`): the commit happened, the client cannot know;
- break it when a query is sent, before the server sees it (`break_before`);
- take the database away (every connection dropped, new ones refused) and bring it back.

Clients must connect with sslmode=disable and gssencmode=disable (plain startup message).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit


class PgProxy:
    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._down = False
        self._commit_marker: bytes | None = None
        self._query_marker: bytes | None = None
        self.refused = 0
        self.broken_commits = 0
        self.broken_queries = 0
        self.queries: list[bytes] = []  # every simple-protocol query string, as sent
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, url: str) -> str:
        """`url` (a PostgreSQL URL) through this proxy."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        query = parts.query + ("&" if parts.query else "") + "sslmode=disable&gssencmode=disable"
        return urlunsplit((parts.scheme, netloc_new, parts.path, query, parts.fragment))

    # What to break ---------------------------------------------------------------------------

    def break_after_commit_of(self, marker: bytes) -> None:
        """The next transaction that sends a query containing `marker`: its COMMIT goes through,
        its answer never arrives (the connection breaks)."""
        with self._lock:
            self._commit_marker = marker

    def break_before(self, marker: bytes) -> None:
        """The next query containing `marker` never reaches the server (the connection breaks)."""
        with self._lock:
            self._query_marker = marker

    def go_down(self) -> None:
        """Like a database that stopped: every connection breaks, new ones are refused."""
        with self._lock:
            self._down = True
            links, self._links = self._links, []
        for link in links:
            link.close()

    def come_back(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.go_down()

    # Internals -------------------------------------------------------------------------------

    def _take_commit_marker(self, query: bytes) -> bool:
        with self._lock:
            if self._commit_marker is not None and self._commit_marker in query:
                self._commit_marker = None
                return True
        return False

    def _take_query_marker(self, query: bytes) -> bool:
        with self._lock:
            if self._query_marker is not None and self._query_marker in query:
                self._query_marker = None
                self.broken_queries += 1
                return True
        return False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
                if down:
                    self.refused += 1
            if down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            link = _Link(self, client, server)
            with self._lock:
                self._links.append(link)
            link.start()


class _Link:
    """One client connection and its server connection, with a pump each way."""

    def __init__(self, proxy: PgProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.armed = False  # the current transaction carries the commit marker
        self.swallow = False  # the COMMIT went out: hold back its answer, then break
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._pump_client, daemon=True).start()
        threading.Thread(target=self._pump_server, daemon=True).start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in (self.client, self.server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump_client(self) -> None:
        try:
            startup = _read_exact(self.client, 4)
            startup += _read_exact(self.client, struct.unpack("!I", startup)[0] - 4)
            self.server.sendall(startup)
            while True:
                kind = _read_exact(self.client, 1)
                length = _read_exact(self.client, 4)
                body = _read_exact(self.client, struct.unpack("!I", length)[0] - 4)
                if kind == b"Q":
                    with self.proxy._lock:
                        self.proxy.queries.append(body.rstrip(b"\0"))
                    if self.proxy._take_query_marker(body):
                        self.close()
                        return
                    if self.proxy._take_commit_marker(body):
                        self.armed = True
                    if self.armed and body.rstrip(b"\0").strip().upper().endswith(b"COMMIT"):
                        # COMMIT alone, or ending the marked transaction's own string.
                        self.armed = False
                        self.swallow = True
                self.server.sendall(kind + length + body)
        except OSError:
            self.close()

    def _pump_server(self) -> None:
        try:
            while True:
                kind = _read_exact(self.server, 1)
                length = _read_exact(self.server, 4)
                body = _read_exact(self.server, struct.unpack("!I", length)[0] - 4)
                if self.swallow:
                    if kind == b"Z":  # ReadyForQuery: the server has finished with the COMMIT
                        with self.proxy._lock:
                            self.proxy.broken_commits += 1
                        self.close()
                        return
                    continue
                self.client.sendall(kind + length + body)
        except OSError:
            self.close()


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)
