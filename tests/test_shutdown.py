"""Graceful shutdown of `homeserver run`: in-flight requests finish, the process exits 0."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from conftest import ServerProcess

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def wait_exit(server: ServerProcess, timeout: float) -> tuple[int, float]:
    """Wait for the process to exit; return (exit code, seconds waited)."""
    start = time.monotonic()
    code = server.process.wait(timeout)
    return code, time.monotonic() - start


@pytest.mark.parametrize("sig", SIGNALS)
def test_request_in_flight_completes_and_process_exits_cleanly(
    start_server: Callable[..., ServerProcess], sig: int
) -> None:
    # "moderate" argon2id takes about half a second per hash: a request that stays in flight.
    server = start_server({"auth": {"password_hashing": "moderate"}})
    outcome: dict[str, Any] = {}

    def register() -> None:
        try:
            outcome["response"] = requests.post(
                server.url("/_matrix/client/v3/register"),
                json={
                    "username": "inflight",
                    "password": "correct horse battery",
                    "auth": {"type": "m.login.dummy"},
                },
                timeout=15,
            )
        except Exception as e:  # reported by the assertions below
            outcome["error"] = e

    thread = threading.Thread(target=register)
    thread.start()
    time.sleep(0.1)
    server.process.send_signal(sig)

    # The listener closes at once: new connections are refused while the request drains.
    time.sleep(0.1)
    if thread.is_alive():
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url("/_matrix/client/versions"), timeout=2)

    thread.join(15)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == f"@inflight:{server.server_name}"

    code, _ = wait_exit(server, 5)
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
    code, waited = wait_exit(server, 10)
    assert code == 0, server.log_text()
    assert waited < 2, f"took {waited:.2f}s to exit"
    assert "shut down cleanly" in server.log_text()

    db = sqlite3.connect(server.data_dir / "homeserver.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)
    finally:
        db.close()
