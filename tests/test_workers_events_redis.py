"""Two event writers as real `homeserver run --worker` processes over a real Redis (RedisBus)
and one PostgreSQL schema: messages sent to both at once, into a room of each, reach a /sync
long-poll on each process once each, in the order stored, with tokens that never go back.

The in-process tests (tests/test_workers_events.py) cover lost messages and restarts; this
one shows the same merge over Redis between processes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import requests
import yaml
from conftest import ROOT, VENV_BIN, free_port, stop_process
from workers_harness import system_binary

from homeserver.workers.topology import room_shard

WRITERS = ["w1", "w2"]
CS = "/_matrix/client/v3"
FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})
MESSAGES = 40


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = system_binary("redis-server", "redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


class Worker:
    def __init__(self, name: str, config_path: Path, port: int, log_path: Path) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        log = open(log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [str(VENV_BIN / "homeserver"), "run", "-c", str(config_path), "--worker", name],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')}")
            try:
                requests.get(self.base + "/_matrix/client/versions", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)

    def call(self, method: str, path: str, token: str | None = None, body: Any = None, **params: str) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = requests.request(
            method, self.base + CS + path, json=body, params=params, headers=headers, timeout=30
        )
        assert r.status_code == 200, f"{self.name} {method} {path}: {r.status_code} {r.text}"
        return r.json()

    def stop(self) -> None:
        stop_process(self.process, 15)


@pytest.fixture
def workers(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[dict[str, Worker]]:
    ports = {name: free_port() for name in WRITERS}
    config = {
        "server_name": "workers.test",
        "data_dir": str(tmp_path / "data"),
        "listen": {"bind": "127.0.0.1", "port": ports["w1"]},
        "database": {"url": pg_url},
        "registration": {"enabled": True},
        "auth": {"password_hashing": "fast"},
        "encryption": {"enabled_by_default_for_room_type": "off"},
        "rate_limits": {"enabled": False},
        "plugins": [],
        "web_client": {"enabled": False},
        "workers": {
            "redis_url": redis_url,
            "secret": "s" * 24,
            "instances": {
                name: {"listen": f"127.0.0.1:{ports[name]}", "internal": f"127.0.0.1:{free_port()}"}
                for name in WRITERS
            },
            "event_writers": WRITERS,
        },
    }
    config_path = tmp_path / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started: dict[str, Worker] = {}
    try:
        for name in WRITERS:  # one after the other: the first one migrates the schema
            started[name] = Worker(name, config_path, ports[name], tmp_path / f"{name}.log")
        yield started
    finally:
        for worker in started.values():
            worker.stop()


def register(worker: Worker, name: str) -> dict[str, Any]:
    body = {"username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}}
    result: dict[str, Any] = worker.call("POST", "/register", body=body)
    return result


def room_of(worker: Worker, index: int, token: str) -> str:
    """A public room created on `worker` whose id hashes to event writer `index`."""
    for _ in range(30):
        room_id = str(worker.call("POST", "/createRoom", token, {"preset": "public_chat"})["room_id"])
        if room_shard(room_id, len(WRITERS)) == index:
            return room_id
    raise AssertionError(f"no room of writer {index} in 30 tries")


def sync_until(
    worker: Worker, token: str, since: str, rooms: list[str]
) -> tuple[dict[str, list[str]], list[int]]:
    got: dict[str, list[str]] = {r: [] for r in rooms}
    tokens = []
    for _ in range(60):
        if all(len(v) >= MESSAGES for v in got.values()):
            return got, tokens
        body = worker.call("GET", "/sync", token, since=since, timeout="5000", filter=FILTER)
        since = body["next_batch"]
        tokens.append(int(since[1:].split("_")[0]))
        joined = body.get("rooms", {}).get("join", {})
        for room_id in rooms:
            for ev in joined.get(room_id, {}).get("timeline", {}).get("events", []):
                if ev["type"] == "m.room.message":
                    got[room_id].append(ev["content"]["body"])
    raise AssertionError(f"{worker.name}: sync never got every message: {got}")


def stored_bodies(pg_url: str, room_id: str) -> list[str]:
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT json FROM events WHERE room_id = %s AND type = 'm.room.message' ORDER BY stream_ordering",
                (room_id,),
            )
            return [json.loads(r[0])["content"]["body"] for r in cur.fetchall()]
    finally:
        conn.close()


def test_two_writer_processes_over_redis_sync_every_message_once_in_order(
    workers: dict[str, Worker], pg_url: str
) -> None:
    w1, w2 = workers["w1"], workers["w2"]
    alice, bob = register(w1, "alice"), register(w2, "bob")
    r1 = room_of(w1, 0, alice["access_token"])
    r2 = room_of(w2, 1, bob["access_token"])
    w1.call("POST", f"/rooms/{quote(r1)}/join", bob["access_token"], {})
    w2.call("POST", f"/rooms/{quote(r2)}/join", alice["access_token"], {})
    rooms = [r1, r2]
    since_alice = w2.call("GET", "/sync", alice["access_token"], filter=FILTER)["next_batch"]
    since_bob = w1.call("GET", "/sync", bob["access_token"], filter=FILTER)["next_batch"]

    def send(worker: Worker, room_id: str, token: str, body: str) -> None:
        worker.call(
            "PUT",
            f"/rooms/{quote(room_id)}/send/m.room.message/{body}",
            token,
            {"msgtype": "m.text", "body": body},
        )

    with ThreadPoolExecutor(8) as pool:
        syncs = [
            pool.submit(sync_until, w2, alice["access_token"], since_alice, rooms),
            pool.submit(sync_until, w1, bob["access_token"], since_bob, rooms),
        ]
        sends = []
        for i in range(MESSAGES):
            sends.append(pool.submit(send, w1, r1, alice["access_token"], f"a{i}"))
            sends.append(pool.submit(send, w2, r2, bob["access_token"], f"b{i}"))
        for f in sends:
            f.result()
        results = [s.result() for s in syncs]

    expected = {r: stored_bodies(pg_url, r) for r in rooms}
    assert sorted(expected[r1]) == sorted(f"a{i}" for i in range(MESSAGES))
    assert sorted(expected[r2]) == sorted(f"b{i}" for i in range(MESSAGES))
    for got, tokens in results:
        assert got == expected
        assert tokens == sorted(tokens), "a sync token went back"
