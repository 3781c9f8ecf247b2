"""PostgreSQL goes away under load and comes back, with every durable consumer running.

A real server process on PostgreSQL through tests/pg_proxy.py (the machine's PostgreSQL is
shared, so the proxy plays the outage: every connection reset, new ones refused), with the
push plugin pushing to a Matrix push gateway in this process, the calls plugin keeping its
call log, and search on. Clients send messages, read receipts, searches, /sync and call
events in an unencrypted room, before, during and after a few seconds without a database.

What a user sees during the outage: every request answers (sends wait and go through, or
answer 503; reads answer 503 at once), never a 500, never past the documented timeout; the
process stays up. What an operator sees afterwards: each acknowledged send is stored once,
each pusher got each notification once, the search index and the call log hold everything,
every stream consumer's saved position reached the stream's end, /sync works.

The gateway is a plain HTTP endpoint checking what a gateway checks (path, a notification
whose device carries app id and pushkey); Sygnal cannot run here.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import psycopg2
import requests
from conftest import ServerProcess
from pg_proxy import PgProxy

NOTIFY = "/_matrix/push/v1/notify"
CLIENT = "/_matrix/client/v3"
# Pushed to; they never sync, so no device of theirs proves receipt and suppresses a push.
RECEIVERS = ("carol", "dave")
OUTAGE_S = 5.0
# The longest a request may take: a send waits for the database up to GIVE_UP_S (30 s,
# core/persist.py) before it answers 503; anything else answers at once.
SEND_TIMEOUT_S = 35.0
OTHER_TIMEOUT_S = 5.0


class Gateway:
    """A Matrix push gateway that records each (pushkey, event_id) it is sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, str]] = []
        self.bad = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    notification = json.loads(raw)["notification"]
                    device = notification["devices"][0]
                    assert self.path == NOTIFY and device["app_id"]
                    key = (device["pushkey"], notification["event_id"])
                except (ValueError, KeyError, IndexError, AssertionError):
                    with gateway.lock:
                        gateway.bad += 1
                    self._answer(400)
                    return
                with gateway.lock:
                    gateway.received.append(key)
                self._answer(200)

            def _answer(self, status: int) -> None:
                body = b'{"rejected": []}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{NOTIFY}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Load:
    """Client threads; every answer is recorded as (what, status, errcode, seconds)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[str, int, str, float]] = []
        self.sent: dict[str, str] = {}  # body -> event_id, for every acknowledged send
        self.calls: list[str] = []  # call ids whose invite and hangup were both acknowledged
        self.threads: list[threading.Thread] = []

    def request(self, what: str, method: str, path: str, token: str, body: Any = None) -> requests.Response:
        started = time.monotonic()
        timeout = SEND_TIMEOUT_S + 10 if what == "send" else OTHER_TIMEOUT_S + 10
        r = requests.request(
            method, self.server.url(path), json=body, timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        errcode = ""
        if r.status_code != 200:
            try:
                errcode = r.json().get("errcode", "")
            except ValueError:
                errcode = "(not JSON)"
        with self.lock:
            self.answers.append((what, r.status_code, errcode, time.monotonic() - started))
        return r

    def send(self, token: str, room: str, kind: str, txn: str, content: dict[str, Any]) -> str | None:
        """Send as a client does: on 503, again with the same transaction id until it is
        acknowledged (or the load stops); the event id, or None."""
        path = f"{CLIENT}/rooms/{quote(room)}/send/{kind}/{txn}"
        while True:
            r = self.request("send", "PUT", path, token, content)
            if r.status_code == 200:
                event_id: str = r.json()["event_id"]
                return event_id
            if self.stop.is_set():
                return None
            time.sleep(0.2)

    def run(self, name: str, loop: Callable[[int], None]) -> None:
        def body() -> None:
            n = 0
            while not self.stop.is_set():
                loop(n)
                n += 1
                time.sleep(0.02)

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(SEND_TIMEOUT_S + 15)
            assert not t.is_alive(), f"{t.name} never came back"


def db_rows(pg_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def wait_until(
    condition: Callable[[], bool], what: str, detail: Callable[[], str] = str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what} {detail()}"
        time.sleep(0.1)


def test_a_database_outage_under_load_loses_and_repeats_nothing(
    start_server: Any, pg_url: str, proxy: PgProxy
) -> None:
    gateway = Gateway()
    try:
        server = start_server(
            {
                "database": {"url": proxy.url_for(pg_url)},
                "pushers": {"allow_private_addresses": True},
                "plugins": [
                    {"module": "plugins.push.PushPlugin", "config": {"request_timeout": "10s"}},
                    {"module": "plugins.calls.CallsPlugin", "config": {}},
                ],
            }
        )
        _run_outage(server, gateway, pg_url, proxy)
    finally:
        gateway.close()


def _run_outage(server: ServerProcess, gateway: Gateway, pg_url: str, proxy: PgProxy) -> None:
    alice = server.register("alice")["access_token"]
    tokens = {name: server.register(name)["access_token"] for name in ("bob", *RECEIVERS)}
    load = Load(server)

    def ok(method: str, path: str, token: str, body: Any = None) -> Any:
        r = load.request("setup", method, path, token, body)
        assert r.status_code == 200, r.text
        return r.json()

    room = ok("POST", f"{CLIENT}/createRoom", alice, {"preset": "public_chat"})["room_id"]
    for name, token in tokens.items():
        ok("POST", f"{CLIENT}/join/{quote(room)}", token, {})
        if name not in RECEIVERS:
            continue
        pusher = {
            "kind": "http", "app_id": "org.example.app", "pushkey": f"phone-{name}",
            "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
            "data": {"url": gateway.url, "format": "event_id_only"},
        }  # fmt: skip
        ok("POST", f"{CLIENT}/pushers/set", token, pusher)

    # The load: two senders, receipts, searches, syncs and calls.
    def sender(prefix: str) -> Callable[[int], None]:
        def loop(n: int) -> None:
            body = f"{prefix} message {n}"
            event_id = load.send(
                alice, room, "m.room.message", f"{prefix}{n}", {"msgtype": "m.text", "body": body}
            )
            if event_id is not None:
                with load.lock:
                    load.sent[body] = event_id

        return loop

    def receipts(n: int) -> None:
        with load.lock:
            latest = list(load.sent.values())[-1:] if load.sent else []
        if latest:
            load.request("receipt", "POST", f"{CLIENT}/rooms/{quote(room)}/receipt/m.read/{quote(latest[0])}",
                         tokens["bob"], {})  # fmt: skip

    def searches(n: int) -> None:
        body = {"search_categories": {"room_events": {"search_term": "message"}}}
        load.request("search", "POST", f"{CLIENT}/search", tokens["carol"], body)
        time.sleep(0.2)

    since: dict[str, str] = {}

    def syncs(n: int) -> None:
        path = f"{CLIENT}/sync?timeout=1000" + (f"&since={since['bob']}" if "bob" in since else "")
        r = load.request("sync", "GET", path, tokens["bob"])
        if r.status_code == 200:
            since["bob"] = r.json()["next_batch"]

    def calls(n: int) -> None:
        call_id = f"call{n}"
        base = {"call_id": call_id, "version": "1", "party_id": "A"}
        offer = {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}
        if (
            load.send(alice, room, "m.call.invite", f"inv{n}", {**base, "lifetime": 60000, "offer": offer})
            is None
        ):
            return
        if load.send(alice, room, "m.call.hangup", f"hup{n}", {**base, "reason": "user_hangup"}) is None:
            return
        with load.lock:
            load.calls.append(call_id)
        time.sleep(0.3)

    for name, loop in [("send-a", sender("a")), ("send-b", sender("b")), ("receipts", receipts),
                       ("searches", searches), ("syncs", syncs), ("calls", calls)]:  # fmt: skip
        load.run(name, loop)

    time.sleep(2)  # the load runs with the database up
    before = len(load.sent)
    proxy.go_down()
    down_at = time.monotonic()
    time.sleep(OUTAGE_S)
    refused = proxy.refused
    proxy.come_back()
    up_at = time.monotonic()
    wait_until(lambda: len(load.sent) >= before + 2 * 20, "sends going through again after the outage")
    load.finish()

    # During the outage: answers, never a 500, never past the timeout.
    assert refused > 0  # the server did try to reach the database
    statuses = Counter((what, status, errcode) for what, status, errcode, _ in load.answers)
    assert all(status in (200, 503) for _, status, _ in statuses), statuses
    assert all(errcode == "M_UNKNOWN" for _, status, errcode in statuses if status == 503), statuses
    assert not any(what == "setup" and status != 200 for what, status, _ in statuses)
    slowest = {what: max(s for w, _, _, s in load.answers if w == what) for what, _, _ in statuses}
    assert slowest["send"] < SEND_TIMEOUT_S, slowest
    assert all(s < OTHER_TIMEOUT_S + 1.5 for w, s in slowest.items() if w != "send"), slowest
    # Sends waited through the outage instead of failing: it is shorter than GIVE_UP_S.
    assert not any(what == "send" and status == 503 for what, status, _ in statuses), statuses
    assert slowest["send"] > OUTAGE_S * 0.5, slowest
    assert server.process.poll() is None

    # Afterwards: every acknowledged send stored exactly once.
    stored = db_rows(
        pg_url,
        "SELECT event_id, json FROM events WHERE room_id = %s AND type = 'm.room.message'",
        room,
    )
    bodies = Counter(json.loads(j)["content"]["body"] for _, j in stored)
    assert all(count == 1 for count in bodies.values()), [b for b, c in bodies.items() if c > 1]
    assert set(load.sent) == set(bodies)  # each sender waited for every send it started
    assert {e for e, _ in stored} == set(load.sent.values())
    assert len(load.sent) > before + 40

    # Each pusher got each notification exactly once (messages and call invites).
    invites = [
        e
        for (e,) in db_rows(
            pg_url, "SELECT event_id FROM events WHERE room_id = %s AND type = 'm.call.invite'", room
        )
    ]
    notified = set(load.sent.values()) | set(invites)
    expected = {(f"phone-{name}", e) for name in RECEIVERS for e in notified}
    wait_until(
        lambda: set(gateway.received) >= expected,
        "every notification pushed",
        lambda: f"{len(expected - set(gateway.received))} of {len(expected)} missing",
    )
    with gateway.lock:
        pushed = Counter(gateway.received)
    assert gateway.bad == 0
    assert [k for k, c in pushed.items() if c > 1] == []
    assert set(pushed) - expected == set()

    # The search index holds every acknowledged message; the call log every call.
    def index_complete() -> bool:
        indexed = {
            e for (e,) in db_rows(pg_url, "SELECT event_id FROM event_search WHERE room_id = %s", room)
        }
        return indexed >= set(load.sent.values())

    wait_until(index_complete, "every message indexed")
    r = load.request("search", "POST", f"{CLIENT}/search", tokens["carol"],
                     {"search_categories": {"room_events": {"search_term": "message"}}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["search_categories"]["room_events"]["results"]

    def calls_logged() -> bool:
        rows = db_rows(pg_url, "SELECT call_id, outcome FROM calls_log WHERE room_id = %s", room)
        return {c for c, outcome in rows if outcome} >= set(load.calls)

    assert load.calls
    wait_until(calls_logged, "every call in the call log")

    # Every durable consumer's saved position reached the end of the stream.
    (head,) = db_rows(pg_url, "SELECT MAX(stream_ordering) FROM events")[0]

    def consumers_caught_up() -> bool:
        rows = db_rows(pg_url, "SELECT name, position FROM stream_consumers")
        return bool(rows) and all(position >= head for _, position in rows)

    wait_until(consumers_caught_up, "every stream consumer's saved position at the stream's end")
    names = {n for (n,) in db_rows(pg_url, "SELECT name FROM stream_consumers")}
    assert "search_index" in names and len(names) >= 3, names

    # /sync works, with the messages sent after the outage.
    r = load.request("sync", "GET", f"{CLIENT}/sync?timeout=0&since={since['bob']}", tokens["bob"])
    assert r.status_code == 200, r.text
    assert server.process.poll() is None
    # The pool reconnected without leaking: at most pool_max (10 by default) plus the writer's.
    live = sum(not link._closed for link in proxy._links)
    assert 0 < live <= 10 + 1, live
    # An operator reads one line per retry while the database is down, not a traceback each.
    log = server.log_text()
    assert "DatabaseUnavailable" not in log and "Traceback" not in log, log[log.find("Traceback") - 300 :][
        :3000
    ]
    print(f"outage {up_at - down_at:.1f}s, {len(load.sent)} messages, {len(load.calls)} calls, {live} connections,",
          f"answers {dict(statuses)}, slowest {slowest}")  # fmt: skip
