"""deploy/haproxy.cfg in a real HAProxy, in front of three small recording backends.

The backends stand in for workers only to show what HAProxy does with each request: which
one gets it, what is retried, what is never routed, and how a draining or dead one is
taken out. The workers themselves behind this same file are in test_workers_faults.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import free_port
from workers_harness import HAProxy, haproxy_binary

from homeserver.workers.topology import room_shard

CLIENT = "/_matrix/client/v3"


class Backend:
    """An HTTP server that records what it gets; /health answers `health`; a request whose
    path is in `fail` gets that status, or its connection closed unanswered for "drop"."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.fail: dict[str, int | str] = {}
        self.seen: list[tuple[str, str]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                if length:
                    self.rfile.read(length)
                if self.path == "/health":
                    self._answer(backend.health)
                    return
                backend.seen.append((self.command, self.path))
                failure = backend.fail.get(self.path.split("?")[0])
                if failure == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._answer(int(failure) if failure else 200)

            do_GET = do_PUT = do_POST = _handle  # noqa: N815 - http.server's names

            def _answer(self, status: int) -> None:
                body = f'{{"worker": "{backend.name}"}}'.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # HAProxy closes its health checks with a reset: not worth a traceback each.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[tuple[HAProxy, dict[str, Backend]]]:
    haproxy_binary()
    backends = {name: Backend(name) for name in ("w1", "w2", "w3")}
    layout = {
        "client_workers": [(b.name, b.port, b.name != "w3") for b in backends.values()],
        "any_worker": [(b.name, b.port, False) for b in backends.values()],
    }
    proxy = HAProxy(tmp_path, layout, free_port())
    try:
        for name in backends:
            proxy.wait_server(name, up=True)
        yield proxy, backends
    finally:
        proxy.close()
        for b in backends.values():
            b.close()


def who(proxy: HAProxy, method: str, path: str, token: str = "t", **kwargs: Any) -> tuple[int, str]:
    r = requests.request(
        method, proxy.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, **kwargs
    )
    return r.status_code, (
        r.json().get("worker", "") if r.headers.get("Content-Type") == "application/json" else ""
    )


def test_syncs_and_streams_go_to_the_client_worker_the_rest_to_any(balancer: Any) -> None:
    proxy, _ = balancer
    for path in (f"{CLIENT}/sync?timeout=0", "/_matrix/client/r0/sync",
                 "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "/_homeserver/ws"):  # fmt: skip
        method = "POST" if "msc3575" in path else "GET"
        assert {who(proxy, method, path, token=f"user{i}")[1] for i in range(6)} == {"w3"}, path
    # Everything else is spread over every worker.
    assert {who(proxy, "GET", f"{CLIENT}/profile/@a:x")[1] for _ in range(6)} == {"w1", "w2", "w3"}


def test_without_the_client_worker_each_user_sticks_to_one_writer(balancer: Any) -> None:
    proxy, backends = balancer
    backends["w3"].health = 503
    proxy.wait_server("w3", up=False)
    for i in range(8):
        token = f"user{i}"
        places = {who(proxy, "GET", f"{CLIENT}/sync?timeout=0", token=token)[1] for _ in range(4)}
        assert len(places) == 1 and places <= {"w1", "w2"}, places
        # The query-parameter token (older clients) sticks the same way.
        r = requests.get(proxy.url + f"{CLIENT}/sync?access_token={token}", timeout=10)
        again = requests.get(proxy.url + f"{CLIENT}/sync?access_token={token}", timeout=10)
        assert r.json()["worker"] == again.json()["worker"]


def test_a_rooms_writes_go_straight_to_its_writer(balancer: Any) -> None:
    proxy, backends = balancer
    writers = ["w1", "w2"]  # deploy/haproxy.cfg's event writers, in `workers.event_writers` order
    rooms = [f"!room{i}:example.org" for i in range(12)] + ["!ünï:x", "!Zx_-9:a.b"]
    assert {writers[room_shard(r, 2)] for r in rooms} == {"w1", "w2"}
    for room in rooms:
        writer = writers[room_shard(room, 2)]
        at = f"{CLIENT}/rooms/{quote(room)}"
        for method, path in (
            ("PUT", f"{at}/send/m.room.message/t1"),
            ("POST", f"{at}/send/m.room.message"),  # older clients' form
            ("PUT", f"{at}/state/m.room.topic/"),
            ("PUT", f"{at}/redact/$ev/t2"),
        ):
            assert {who(proxy, method, path, json={})[1] for _ in range(3)} == {writer}, (room, path)
    # Reads of a room are spread like every other request.
    room = rooms[0]
    places = {who(proxy, "GET", f"{CLIENT}/rooms/{quote(room)}/state/m.room.topic/")[1] for _ in range(6)}
    assert places == {"w1", "w2", "w3"}


def test_a_rooms_writes_go_elsewhere_while_its_writer_is_down(balancer: Any) -> None:
    proxy, backends = balancer
    room = next(f"!r{i}:x" for i in range(50) if room_shard(f"!r{i}:x", 2) == 0)  # written by w1
    backends["w1"].health = 503
    proxy.wait_server("w1", up=False)
    send = f"{CLIENT}/rooms/{quote(room)}/send/m.room.message/t1"
    # Another worker takes it (and forwards it to the writer, or answers 503 to be retried).
    assert {who(proxy, "PUT", send, json={})[1] for _ in range(4)} == {"w2", "w3"}
    backends["w1"].health = 200
    proxy.wait_server("w1", up=True)
    assert {who(proxy, "PUT", send, json={})[1] for _ in range(4)} == {"w1"}


def test_the_internal_api_is_never_routed(balancer: Any) -> None:
    proxy, backends = balancer
    for method in ("GET", "POST", "PUT"):
        r = requests.request(method, proxy.url + "/_homeserver/internal/events.send", json={}, timeout=10)
        assert r.status_code == 404
    assert not any(path.startswith("/_homeserver/internal") for b in backends.values() for _, path in b.seen)


def test_a_draining_worker_gets_no_new_requests_and_comes_back(balancer: Any) -> None:
    proxy, backends = balancer
    backends["w2"].health = 503  # what a worker answers from SIGTERM on
    proxy.wait_server("w2", up=False)
    backends["w2"].seen.clear()
    assert {who(proxy, "GET", f"{CLIENT}/profile/@a:x")[1] for _ in range(6)} == {"w1", "w3"}
    assert backends["w2"].seen == []
    backends["w2"].health = 200
    proxy.wait_server("w2", up=True)
    assert "w2" in {who(proxy, "GET", f"{CLIENT}/profile/@a:x")[1] for _ in range(6)}


def test_a_dead_worker_costs_no_request(balancer: Any) -> None:
    proxy, backends = balancer
    backends["w1"].close()  # refused connections, before any health check notices
    statuses = [who(proxy, "POST", f"{CLIENT}/createRoom", json={})[0] for _ in range(9)]
    assert statuses == [200] * 9  # a refused connection is retried elsewhere, POST included
    proxy.wait_server("w1", up=False)


def test_a_503_or_a_dropped_connection_is_retried_for_a_send_but_not_for_a_post(balancer: Any) -> None:
    proxy, backends = balancer
    send = f"{CLIENT}/rooms/!r:x/send/m.room.message/txn1"
    for failure in (503, "drop"):
        for b in backends.values():
            b.seen.clear()
            b.fail = {}
        backends["w1"].fail[send] = failure
        backends["w1"].fail[f"{CLIENT}/createRoom"] = failure
        # A PUT with a transaction id: replayed on another worker (the writer dedupes it).
        statuses = {who(proxy, "PUT", send, json={})[0] for _ in range(6)}
        assert statuses == {200}, (failure, statuses)
        assert any(path == send for path in (p for _, p in backends["w1"].seen))
        # A POST that reached a worker is not replayed: the client gets the failure.
        answers = [who(proxy, "POST", f"{CLIENT}/createRoom", json={})[0] for _ in range(6)]
        created = sum(1 for b in backends.values() for _, p in b.seen if p == f"{CLIENT}/createRoom")
        assert created == 6, failure  # each POST reached exactly one worker
        assert sorted(set(answers)) == ([200, 503] if failure == 503 else [200, 502]), answers
