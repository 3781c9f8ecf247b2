"""Graceful shutdown of `homeserver run`: in-flight requests finish, the process exits 0."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable

import pytest
from conftest import ServerProcess

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """Read until the data ends with `end` or the server closes."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def wait_exit(server: ServerProcess) -> int:
    """The exit code, once the process has exited. The wait is generous (a loaded machine's
    process teardown): that nothing held the shutdown for SHUTDOWN_GRACE_S shows in its log
    ("still in flight"), and is timed on a test clock in tests/fast/test_shutdown_driven.py."""
    return server.process.wait(60)


@pytest.mark.parametrize("sig", SIGNALS)
def test_request_in_flight_completes_and_process_exits_cleanly(
    start_server: Callable[..., ServerProcess], sig: int
) -> None:
    """Waits on the socket, never on time: `100 Continue` proves the server is reading our
    request, which it then cannot finish until we send the rest of the body."""
    server = start_server()
    body = json.dumps(
        {"username": "inflight", "password": "correct horse battery", "auth": {"type": "m.login.dummy"}}
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(
            b"POST /_matrix/client/v3/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
        server.process.send_signal(sig)

        # The listener closes at once: new connections are refused while our request is read.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: queued, then closed
                break
            assert time.monotonic() < deadline, "the server kept accepting connections"

        sock.sendall(body[10:])
        response = read_until(sock, b"}")
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), response
    assert b"Connection: close" in head
    assert json.loads(payload)["user_id"] == f"@inflight:{server.server_name}"

    code = wait_exit(server)
    assert code == 0, server.log_text()
    log = server.log_text()
    assert "shut down cleanly" in log
    assert "still in flight" not in log
    assert "Traceback" not in log

    # The database was closed properly: it opens, checks out and holds the new user.
    db = sqlite3.connect(server.data_dir / "homeserver.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        users = db.execute("SELECT user_id, password_hash FROM users").fetchall()
        devices = db.execute("SELECT user_id FROM devices").fetchall()
    finally:
        db.close()
    assert [u[0] for u in users] == [f"@inflight:{server.server_name}"]
    assert users[0][1].startswith("$argon2id$")
    assert devices == [(f"@inflight:{server.server_name}",)]


@pytest.mark.parametrize("sig", SIGNALS)
def test_idle_server_exits_quickly(start_server: Callable[..., ServerProcess], sig: int) -> None:
    server = start_server()
    server.register("idle_user")
    server.process.send_signal(sig)
    code = wait_exit(server)
    assert code == 0, server.log_text()
    # Nothing held the shutdown: it never reached the grace period's warning.
    assert "still in flight" not in server.log_text()
    assert "shut down cleanly" in server.log_text()

    db = sqlite3.connect(server.data_dir / "homeserver.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)
    finally:
        db.close()
