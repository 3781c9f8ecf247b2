"""Push delivery survives kill -9 (docs/push.md, "Guarantees"): a real server process with the
push plugin sends many messages to users whose pushers point at a slow gateway, is killed
with SIGKILL while notifications are queued (committed, not pushed) and in flight, and is
started again. Every notification reaches the gateway; the only ones it receives twice are
those that were in flight at the kill, each with the same event id.

The gateway is a real HTTP endpoint in this process (Sygnal cannot run here), checking what
a gateway checks (path, a notification with devices carrying app id and pushkey). It
answers each request after a short pause, longer for one pusher, so the pushers are at
different places in the stream at the kill (the others have pushed events the slow one
has not, and those must not come again). When the test closes its gate the gateway stops
answering, so the requests held at the gate are exactly those in flight at the kill.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from conftest import ServerProcess, restart_server_process

NOTIFY = "/_matrix/push/v1/notify"
RECEIVERS = 4
MESSAGES = 150


class SlowGateway:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, str]] = []  # (pushkey, event_id) in arrival order
        self.answered: list[tuple[str, str]] = []
        self.held: list[tuple[str, str]] = []
        self.bad = 0
        self.gate_open = threading.Event()
        self.gate_open.set()
        self.release = threading.Event()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    notification = json.loads(raw)["notification"]
                    device = notification["devices"][0]
                    key = (device["pushkey"], notification["event_id"])
                    assert self.path == NOTIFY and device["app_id"]
                except (ValueError, KeyError, IndexError, AssertionError):
                    with gateway.lock:
                        gateway.bad += 1
                    self._answer(400, b"{}")
                    return
                with gateway.lock:
                    gateway.received.append(key)
                if not gateway.gate_open.is_set():
                    with gateway.lock:
                        gateway.held.append(key)
                    gateway.release.wait(60)  # never answered before the kill
                    return
                # Slow, and one pusher slower than the others: at the kill the pushers are at
                # different places in the stream.
                time.sleep(0.015 if key[0] == "phone-0" else 0.004)
                with gateway.lock:
                    gateway.answered.append(key)
                self._answer(200, b'{"rejected": []}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{NOTIFY}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def push_plugin() -> dict[str, Any]:
    return {
        "pushers": {"allow_private_addresses": True},
        "plugins": [{"module": "plugins.push.PushPlugin", "config": {"request_timeout": "30s"}}],
    }


def call(server: ServerProcess, method: str, path: str, token: str, body: Any = None) -> Any:
    r = requests.request(
        method, server.url("/_matrix/client/v3" + path), json=body, timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_after_kill_9_every_notification_is_pushed_and_only_those_in_flight_twice(
    start_server: Any,
) -> None:
    gateway = SlowGateway()
    try:
        server = start_server(push_plugin())
        sender = server.register("sender")["access_token"]
        room_id = call(server, "POST", "/createRoom", sender, {"preset": "public_chat"})["room_id"]
        receivers = []
        for n in range(RECEIVERS):
            token = server.register(f"receiver{n}")["access_token"]
            call(server, "POST", f"/join/{room_id}", token, {})
            pusher = {
                "kind": "http", "app_id": "org.example.app", "pushkey": f"phone-{n}",
                "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
                "data": {"url": gateway.url, "format": "event_id_only"},
            }  # fmt: skip
            call(server, "POST", "/pushers/set", token, pusher)
            receivers.append(token)

        def send_range(start: int) -> list[str]:
            ids = []
            for n in range(start, MESSAGES, 4):
                body = {"msgtype": "m.text", "body": f"message {n}"}
                ids.append(
                    call(server, "PUT", f"/rooms/{room_id}/send/m.room.message/k{n}", sender, body)[
                        "event_id"
                    ]
                )
            return ids

        with ThreadPoolExecutor(4) as pool:
            event_ids = {e for ids in pool.map(send_range, range(4)) for e in ids}
        assert len(event_ids) == MESSAGES
        expected = {(f"phone-{n}", e) for n in range(RECEIVERS) for e in event_ids}

        # Part of the way through, the gateway stops answering: one request per pusher is in
        # flight, and the rest of each pusher's notifications are committed but not pushed.
        wait_until(lambda: sum(k == "phone-0" for k, _ in gateway.answered) >= 30, "30 pushes to phone-0")
        gateway.gate_open.clear()
        wait_until(lambda: len(gateway.held) == RECEIVERS, "a request in flight per pusher")
        answered = set(gateway.answered)
        assert answered and len(answered) < len(expected) - RECEIVERS

        # The settlement of what was answered is written within moments (push_progress);
        # wait for it, so that "in flight" is exactly what is held at the gate.
        db = sqlite3.connect(server.data_dir / "homeserver.db")
        position = dict(db.execute("SELECT event_id, stream_ordering FROM events").fetchall())
        pusher_of = {f"phone-{n}": None for n in range(RECEIVERS)}
        for pushkey, pusher_id in db.execute("SELECT pushkey, pusher_id FROM pushers").fetchall():
            pusher_of[pushkey] = pusher_id

        def answered_recorded() -> bool:
            progress = dict(db.execute("SELECT pusher_id, position FROM push_progress").fetchall())
            return all(progress.get(pusher_of[k], 0) >= position[e] for k, e in answered)

        wait_until(answered_recorded, "the answered pushes recorded")
        in_flight = set(gateway.held)
        server.stop(signal.SIGKILL)
        gateway.gate_open.set()

        server = restart_server_process(server, push_plugin())
        try:
            wait_until(lambda: set(gateway.received) >= expected, "every notification pushed")
            # Settled to the end: nothing more is coming.
            last = max(position[e] for e in event_ids)
            wait_until(
                lambda: (
                    all(
                        p >= last
                        for p in dict(db.execute("SELECT pusher_id, position FROM push_progress")).values()
                    )
                    and len(dict(db.execute("SELECT pusher_id, position FROM push_progress"))) == RECEIVERS
                ),
                "progress at the last message",
            )
            # Nothing more is coming: one more message, and each pusher's notifications come
            # in stream order, so a repeat still queued anywhere would reach the gateway first.
            body = {"msgtype": "m.text", "body": "the last word"}
            marker = call(server, "PUT", f"/rooms/{room_id}/send/m.room.message/marker", sender, body)
            marker_id = marker["event_id"]
            wait_until(
                lambda: {k for k, e in gateway.received if e == marker_id} == set(pusher_of),
                "the marker pushed to every pusher",
            )
        finally:
            server.stop()
            db.close()
    finally:
        gateway.close()

    assert sorted(k for k, e in gateway.received if e == marker_id) == sorted(pusher_of)  # once each
    received = [(k, e) for k, e in gateway.received if e != marker_id]
    counts = Counter(received)
    assert set(counts) == expected  # nothing lost, nothing unexpected
    repeated = {key for key, count in counts.items() if count > 1}
    assert repeated == in_flight  # repeats only of what was in flight at the kill...
    assert all(counts[key] == 2 for key in repeated)  # ...once each, with the same event id
    assert gateway.bad == 0
    # Each pusher's notifications reached the gateway in stream order (the repeat aside),
    # the marker last.
    for n in range(RECEIVERS):
        assert [e for k, e in gateway.received if k == f"phone-{n}"][-1] == marker_id
        order = [position[e] for k, e in received if k == f"phone-{n}"]
        first_seen = [p for i, p in enumerate(order) if p not in order[:i]]
        assert first_seen == sorted(first_seen)
