"""Two real `homeserver run --worker NAME` processes on one PostgreSQL database and Redis:
w1 writes every room's events, w2 only serves clients and forwards writes to w1 over the
internal listener (docs/architecture.md, "Past one process")."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
import yaml
from conftest import ROOT, VENV_BIN, base_config, free_port, stop_process

CS = "/_matrix/client/v3"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


class Worker:
    def __init__(self, name: str, port: int, config_path: Path, log_path: Path) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process = subprocess.Popen(
            [str(VENV_BIN / "homeserver"), "run", "-c", str(config_path), "--worker", name],
            stdout=open(log_path, "ab"),  # noqa: SIM115 - the process owns it
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()}")
            try:
                requests.get(self.base + "/_matrix/client/versions", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.process, 15)


@pytest.fixture
def workers(tmp_path: Path, pg_url: str) -> Iterator[tuple[dict[str, Worker], dict[str, Any]]]:
    if not _redis_up():
        if os.environ.get("CI"):
            raise AssertionError("Redis is not reachable at 127.0.0.1:6379")
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    ports = {name: (free_port(), free_port()) for name in ("w1", "w2")}
    config = base_config(tmp_path, ports["w1"][0], pg_url)
    config["workers"] = {
        "redis_url": "redis://127.0.0.1:6379/0",
        "redis_prefix": f"test{secrets.token_hex(4)}:",
        "secret_file": str(tmp_path / "data" / "worker_secret"),
        "instances": {
            name: {"listen": f"127.0.0.1:{client}", "internal": f"127.0.0.1:{internal}"}
            for name, (client, internal) in ports.items()
        },
        "event_writers": ["w1"],
    }
    config_path = tmp_path / "workers.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [str(VENV_BIN / "homeserver"), "migrate", "-c", str(config_path)], cwd=ROOT, check=True, timeout=60
    )
    started = {name: Worker(name, ports[name][0], config_path, tmp_path / f"{name}.log") for name in ports}
    try:
        for worker in started.values():
            worker.wait_ready()
        yield started, config
    finally:
        for worker in started.values():
            worker.stop()


def test_a_send_to_a_worker_that_does_not_write_the_room_is_stored_once_by_its_writer(
    workers: tuple[dict[str, Worker], dict[str, Any]], pg_url: str
) -> None:
    started, config = workers
    w1, w2 = started["w1"], started["w2"]
    r = requests.post(
        w2.base + CS + "/register",
        json={"username": "alice", "password": "correct horse battery", "auth": {"type": "m.login.dummy"}},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = requests.post(w2.base + CS + "/createRoom", json={"name": "sharded"}, headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    room_id = r.json()["room_id"]
    url = f"{CS}/rooms/{room_id}/send/m.room.message/txn-1"
    r = requests.put(w2.base + url, json={"msgtype": "m.text", "body": "hello"}, headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    # The client retries through the other process (its answer was lost): the same event.
    again = requests.put(w1.base + url, json={"msgtype": "m.text", "body": "hello"}, headers=auth, timeout=10)
    assert again.status_code == 200 and again.json()["event_id"] == event_id
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT room_id FROM events WHERE event_id = %s", (event_id,))
            assert cur.fetchall() == [(room_id,)]
            cur.execute(
                "SELECT count(*) FROM events WHERE room_id = %s AND type = 'm.room.message'", (room_id,)
            )
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    # A wrong secret on the internal listener is refused.
    internal = config["workers"]["instances"]["w1"]["internal"]
    r = requests.post(
        f"http://{internal}/_homeserver/internal/events.send",
        json={},
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    # The admin command works with the workers' config, beside the running workers.
    config_path = w1.log_path.parent / "workers.yaml"
    created = subprocess.run(
        [str(VENV_BIN / "homeserver"), "admin", "create-user", "-c", str(config_path)]
        + ["--email", "bob@example.org", "--password", "correct horse battery", "--username", "bob"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}}
    r = requests.post(
        w2.base + CS + "/login", json={**login, "password": "correct horse battery"}, timeout=10
    )
    assert r.status_code == 200, r.text
    # SIGTERM: /health answers 503 while the process still serves (workers.drain_delay, 2s
    # with several instances), so a balancer moves new requests elsewhere; then it exits.
    assert requests.get(w2.base + "/health", timeout=5).json() == {"status": "ok", "instance": "w2"}
    w2.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while requests.get(w2.base + "/health", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "/health never turned 503"
        time.sleep(0.02)
    assert requests.get(w2.base + "/_matrix/client/versions", timeout=5).status_code == 200
    assert w2.process.wait(15) == 0
    # Both shut down cleanly, with no error logged on either side of the forwarding.
    w1.stop()
    assert "Traceback" not in w1.log_path.read_text() + w2.log_path.read_text()
