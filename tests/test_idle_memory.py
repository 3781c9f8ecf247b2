"""What idle connections hold, and that holding less changed no behaviour.

An idle long-poll waits in the notifier's shared deadline buckets (no timer of
its own) and keeps no copy of its request head; docs/adr/0004, "Idle
connections". These tests pin the behaviour around that: timeouts still fire
on time and never early, wake-ups still reach every waiter, disconnected
clients are still let go.
"""

from __future__ import annotations

import gc
import json
import secrets
import socket
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import requests
import treq
import websocket
from conftest import ServerProcess, free_port
from test_metrics import metrics_config, value, wait_for
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from homeserver.api import ws as ws_module
from homeserver.config import parse_config
from homeserver.server import HomeServer

reactor: Any = _reactor

CLIENT = "/_matrix/client/v3"
EMPTY_FILTER = json.dumps({"room": {"rooms": [], "timeline": {"limit": 0}}, "presence": {"not_types": ["*"]}})


# Long-polls against a real server ------------------------------------------------------


def new_user(server: ServerProcess) -> dict[str, Any]:
    return server.register(f"idle{secrets.token_hex(4)}")


def sync(
    server: ServerProcess,
    token: str,
    since: str | None = None,
    timeout_ms: int = 0,
    filter_: str | None = None,
) -> dict[str, Any]:
    path = f"{CLIENT}/sync?timeout={timeout_ms}"
    if since is not None:
        path += f"&since={quote(since)}"
    if filter_ is not None:
        path += f"&filter={quote(filter_)}"
    r = requests.get(server.url(path), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_client_that_hangs_up_mid_long_poll_is_let_go(start_server: Callable[..., ServerProcess]) -> None:
    """Over a real socket: the long-poll the client hung up on ends (its answer goes into the
    void) and the next request, on a new connection, works as ever. The long-polls waiting,
    read from the metrics, order the steps; that it ends at its timeout, never early, is
    timed on a test clock in tests/fast/test_notifier_timeouts.py."""
    port = free_port()
    server = start_server(metrics_config(port))
    user = new_user(server)
    since = sync(server, user["access_token"])["next_batch"]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        f"GET {CLIENT}/sync?timeout=1000&since={quote(since)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {user['access_token']}\r\n\r\n".encode()
    )
    wait_for(port, lambda m: value(m, "homeserver_long_polls_waiting") == 1)
    sock.close()
    wait_for(port, lambda m: value(m, "homeserver_long_polls_waiting") == 0, timeout=60)
    body = sync(server, user["access_token"], since, 200)
    assert "next_batch" in body
    assert "Traceback" not in server.log_text()


# WebSocket streams in-process, with fast timers ---------------------------------------


@pytest.fixture
def fast_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "AUTO_PING_INTERVAL_S", 0.5)
    monkeypatch.setattr(ws_module, "AUTO_PING_TIMEOUT_S", 0.5)
    monkeypatch.setattr(ws_module, "KEEPALIVE_S", 0.5)
    monkeypatch.setattr(ws_module, "SWEEP_S", 0.1)


class InProcess:
    """A whole server on the test's reactor, listening on a free port."""

    def __init__(self, hs: HomeServer, port: Any) -> None:
        self.hs = hs
        self.port = port
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @property
    def streams(self) -> set[Any]:
        return self.hs.websocket.connections

    async def user(self, name: str) -> str:
        user_id = await self.hs.accounts.register(name, "correct horse battery")
        login = await self.hs.accounts.create_session(user_id, None, None, refreshable=False, ip=None)
        return login.tokens.access_token

    def connect(self, token: str) -> websocket.WebSocket:
        """A header-authenticated stream past its ready and initial sync frames (blocking: a thread)."""
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port.getHost().port}/_homeserver/ws",
            header=[f"Authorization: Bearer {token}"],
            timeout=10,
        )
        assert json.loads(ws.recv())["type"] == "ready"
        assert json.loads(ws.recv())["type"] == "sync"
        return ws


def answer_a_ping(ws: websocket.WebSocket) -> None:
    """Read until the server pings (websocket-client answers each ping with a pong)."""
    ws.settimeout(10)
    while ws.recv_data_frame(True)[0] != websocket.ABNF.OPCODE_PING:
        pass


async def start_in_process(tmp_path: Path) -> InProcess:
    raw = {
        "server_name": "idle.test",
        "data_dir": str(tmp_path / "data"),
        "database": {"url": f"sqlite:///{tmp_path / 'hs.db'}"},
        "auth": {"password_hashing": "fast"},
        "plugins": [],
    }
    hs = HomeServer(parse_config(raw, "test-idle.yaml", env={}), reactor)
    await hs.start()
    return InProcess(hs, reactor.listenTCP(0, hs.site(), interface="127.0.0.1"))


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_until(predicate: Any, timeout: float) -> float:
    """Seconds until `predicate()` held (fails after `timeout`)."""
    start = reactor.seconds()
    while not predicate():
        assert reactor.seconds() - start < timeout, "timed out"
        await sleep(0.02)
    return float(reactor.seconds() - start)


@pytest_twisted.ensureDeferred
async def test_an_idle_stream_sheds_its_handshake_state_and_still_works(
    tmp_path: Path, fast_timers: None
) -> None:
    server = await start_in_process(tmp_path)
    try:
        alice = await server.user("alice")
        bob = await server.user("bob")
        ws = await deferToThread(server.connect, bob)
        (conn,) = server.streams
        await sleep(0.3)  # the sweep compacts streams authenticated since the last one
        state = conn.__dict__
        assert not [name for name in state if name.startswith("http_")], sorted(state)
        assert len(state) <= 12, sorted(state)
        bob_id = conn.requester.user_id

        # Everything still works: app-level ping, a pushed message, a send acked after its commit.
        headers = {"Authorization": f"Bearer {alice}"}
        r = await treq.post(
            server.base + f"{CLIENT}/createRoom",
            json.dumps({"invite": [bob_id]}).encode(),
            headers=headers,
        )
        room_id = (await r.json())["room_id"]

        def exchange() -> list[dict[str, Any]]:
            ws.send(json.dumps({"type": "ping", "id": "p1"}))
            frames = []
            ws.settimeout(5)
            while not any(f["type"] == "pong" for f in frames) or not any(
                f["type"] == "sync" and room_id in f["data"]["rooms"]["invite"] for f in frames
            ):
                frames.append(json.loads(ws.recv()))
            return frames

        frames = await deferToThread(exchange)
        assert {"type": "pong", "id": "p1"} in frames
        r = await treq.post(
            server.base + f"{CLIENT}/join/{quote(room_id)}", b"{}", headers={"Authorization": f"Bearer {bob}"}
        )
        assert r.code == 200
        await r.content()

        def send_and_ack() -> dict[str, Any]:
            txn = {
                "type": "send",
                "txn_id": "t1",
                "room_id": room_id,
                "content": {"msgtype": "m.text", "body": "hi"},
            }
            ws.send(json.dumps(txn))
            ws.settimeout(5)
            while True:
                frame: dict[str, Any] = json.loads(ws.recv())
                if frame["type"] == "send_ack":
                    return frame

        ack = await deferToThread(send_and_ack)
        assert ack["txn_id"] == "t1" and ack["event_id"].startswith("$")
        # Pings (and compactions) after the messages; the client answers them.
        await deferToThread(answer_a_ping, ws)
        await sleep(0.2)  # the sweep after the last pong
        assert len(conn.__dict__) <= 12, repr(conn.__dict__)
        ws.close()
        await wait_until(lambda: not server.streams, timeout=5)
        assert server.hs.websocket._by_user == {}
    finally:
        await server.hs.stop(server.port)


@pytest_twisted.ensureDeferred
async def test_a_closed_stream_is_freed_without_the_garbage_collector(tmp_path: Path) -> None:
    """Nothing of a closed stream waits for a collector pass: with 10,000 streams closing at
    once (a network blip) that pass took 200 ms, and every request waited for it."""
    server = await start_in_process(tmp_path)
    try:
        token = await server.user("leaver")
        ws = await deferToThread(server.connect, token)
        (conn,) = server.streams
        gone = weakref.ref(conn)
        del conn
        ws.close()
        await wait_until(lambda: not server.streams, timeout=5)
        gc.disable()
        try:
            await sleep(0.3)  # the sweep and any pending callbacks let go
            assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
        finally:
            gc.enable()
    finally:
        await server.hs.stop(server.port)
