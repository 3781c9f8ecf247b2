"""The cap on connections from one address (`listen.max_connections_per_ip`), on a real
server process over real sockets: the client listener and the TLS federation listener
share it, a connection past it is closed without an answer, another address gets in, and
connections opened and closed every way leave the count where it was.

Each test connects from its own loopback address (127.0.0.x, x > 1): the start-up check
of the server's launcher connects from 127.0.0.1 and may not be counted out yet."""

from __future__ import annotations

import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import ServerProcess, start_server_process
from federation_harness import FederatedServer, TestCA, start_federated_server

CAP = 3
SECRET = "metrics-secret-for-the-connection-caps"
VERSIONS = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[FederatedServer]:
    server = start_federated_server(
        tmp_path_factory.mktemp("capped"),
        ca,
        {"listen": {"max_connections_per_ip": CAP}, "metrics": {"bearer_secret": SECRET}},
    )
    yield server
    server.process.stop()


def plain(server: ServerProcess, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))


def tls(server: FederatedServer, source: str) -> socket.socket:
    context = ssl.create_default_context(cafile=str(server.ca.ca_file))
    sock = socket.create_connection(
        ("127.0.0.1", server.federation_port), timeout=10, source_address=(source, 0)
    )
    return context.wrap_socket(sock, server_hostname="localhost")


def answered(sock: socket.socket) -> bool:
    """A request on the connection gets a whole 200 answer (the connection stays open)."""
    data = b""
    try:
        sock.sendall(VERSIONS)
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
    except (ssl.SSLError, ConnectionError):
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head.startswith(b"HTTP/1.1 200 ")


def refused(connect: Callable[[], socket.socket]) -> bool:
    """The connection is closed before any answer (for TLS: before the handshake ends)."""
    try:
        sock = connect()
    except (ssl.SSLError, ConnectionError):
        return True  # the TLS handshake met the closed connection
    with sock:
        try:
            sock.sendall(VERSIONS)
            return sock.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def eventually(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """For what the server learns asynchronously (a client's close): retried until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_one_address_gets_its_cap_and_another_is_not_affected(capped: FederatedServer) -> None:
    server = capped.process
    held = [plain(server, "127.0.0.2") for _ in range(CAP)]
    try:
        assert all(answered(sock) for sock in held)
        for _ in range(5):
            assert refused(lambda: plain(server, "127.0.0.2"))
        with plain(server, "127.0.0.3") as other:
            assert answered(other)

        # One warning for the address, not one per refused connection; a counter for each.
        log = server.wait_for_log("connections open from 127.0.0.2")
        assert log.count("connections open from 127.0.0.2") == 1
        metrics = requests.get(
            server.url("/_homeserver/metrics"), headers={"Authorization": f"Bearer {SECRET}"}, timeout=10
        ).text
        line = next(
            ln
            for ln in metrics.splitlines()
            if ln.startswith('homeserver_connections_refused_total{cap="per_ip"}')
        )
        assert float(line.split()[-1]) >= 5

        # A place comes back when one of them closes.
        held.pop().close()

        def gets_in() -> bool:
            sock = plain(server, "127.0.0.2")
            ok = answered(sock)
            if ok:
                held.append(sock)
            else:
                sock.close()
            return ok

        eventually(gets_in, "a connection from 127.0.0.2 served after one closed")
    finally:
        for sock in held:
            sock.close()


def test_the_tls_federation_listener_shares_the_count(capped: FederatedServer) -> None:
    source = "127.0.0.4"
    held = [plain(capped.process, source) for _ in range(CAP - 1)]
    try:
        assert all(answered(sock) for sock in held)
        over_tls = tls(capped, source)
        held.append(over_tls)
        assert answered(over_tls)
        assert refused(lambda: tls(capped, source))
        assert refused(lambda: plain(capped.process, source))
    finally:
        for sock in held:
            sock.close()


def test_connections_closed_every_way_leave_no_count_behind(capped: FederatedServer) -> None:
    server, source = capped.process, "127.0.0.5"

    def served_then_client_closes() -> None:
        with plain(server, source) as sock:
            assert answered(sock)

    def server_closes_after_connection_close() -> None:
        with plain(server, source) as sock:
            sock.sendall(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while sock.recv(65536):
                pass

    def server_refuses_a_bad_request() -> None:
        with plain(server, source) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx")
            while sock.recv(65536):
                pass

    def client_leaves_mid_head() -> None:
        with plain(server, source) as sock:
            sock.sendall(b"GET /_matrix/client/versions HTTP/1.1\r\nHo")

    def tls_served_then_closed() -> None:
        with tls(capped, source) as sock:
            assert answered(sock)

    def tls_handshake_abandoned() -> None:
        with socket.create_connection(
            ("127.0.0.1", capped.federation_port), timeout=10, source_address=(source, 0)
        ) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello, then gone

    ways = [
        served_then_client_closes,
        server_closes_after_connection_close,
        server_refuses_a_bad_request,
        client_leaves_mid_head,
        tls_served_then_closed,
        tls_handshake_abandoned,
    ]
    # One after another: the server may see a close after the next connection (at most
    # the one before lingers, under the cap of 3); the check at the end waits for both.
    for _ in range(10):
        for way in ways:
            way()

    def all_cap_at_once() -> bool:
        socks = [plain(server, source) for _ in range(CAP)]
        try:
            return all(answered(sock) for sock in socks) and refused(lambda: plain(server, source))
        except ConnectionError:
            return False
        finally:
            for sock in socks:
                sock.close()

    eventually(all_cap_at_once, f"{CAP} connections from {source} served at once, and no more")
    assert "Traceback" not in server.log_text()


def test_the_server_raises_its_open_files_limit_before_deriving_the_total_cap(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Started with Debian's usual soft limit of 1,024 under a higher hard one, the server
    takes the hard one, and the total cap comes from it (576 from 1,024 would refuse a busy
    server's clients long before its descriptors ran out)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip(f"the hard open-files limit here is {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        server = start_server_process(tmp_path_factory.mktemp("nofile"))  # inherits 1,024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)]
        total = (hard - 256) * 3 // 4
        deadline = time.monotonic() + 10
        while f"connections: at most {total} open" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
    finally:
        server.stop()
