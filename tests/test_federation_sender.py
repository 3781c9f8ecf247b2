"""The federation sender against a real TLS endpoint, with a real server process.

The destination is a recording endpoint in this test process (not one of our servers:
inbound `/send` is another part's work). It listens with TLS on loopback with a certificate
from the test CA, under the server name `localhost:PORT`, and for every
`PUT /_matrix/federation/v1/send/{txnId}` checks what a real receiver would: the X-Matrix
signature (with our server's key fetched from it), the destination, the transaction's shape
(origin, at most 50 PDUs and 100 EDUs) and each PDU's signature. It answers, refuses (503) or
holds the request as the test says, or stops listening for a while (a restart).

Before joins over federation exist, the remote member is put into the room the simplest
honest way: with the server process stopped, the same configuration is opened in-process
and the remote user's join is built and persisted by our own event path
(`EventService.send`), so the room's state lists them when the process starts again.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import requests
import yaml
from conftest import ServerProcess, _launch, free_port
from federation_harness import FederatedServer, TestCA, start_federated_server
from signedjson.key import (
    decode_verify_key_bytes,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import sign_json, verify_signed_json
from unpaddedbase64 import decode_base64

from homeserver.config import parse_config
from homeserver.core.federation.request_auth import authorization_header
from homeserver.events.signing import verify_event_signature
from homeserver.server import HomeServer

_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Recorder:
    """A federation endpoint that records the transactions sent to it (see the module doc)."""

    def __init__(self, ca: TestCA, origin: FederatedServer | None = None) -> None:
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.origin = origin
        self.mode = "ok"  # "ok", "down" (503) or "hold" (never answers until released)
        self.release = threading.Event()
        self.received: list[tuple[str, dict[str, Any]]] = []  # every request, in arrival order
        self.answered: dict[str, dict[str, Any]] = {}  # txn id -> body, once answered 200
        self.order: list[str] = []  # txn ids in the order first answered
        self.problems: list[str] = []
        self._keys: dict[str, Any] = {}
        # Its own signing key, served at /_matrix/key/v2/server, for the requests it makes.
        self.signing_key = generate_signing_key("rec")
        cert, key = ca.issue(f"recorder-{self.port}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/_matrix/key/v2/server":
                    self.send_error(404)
                    return
                data = json.dumps(recorder.server_keys()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = recorder.handle(self.path, self.headers.get("Authorization", ""), raw)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the sender went away while its request was held

        self._handler, self._context = Handler, context
        self.come_back()

    def come_back(self) -> None:
        """Listen (again) on its port."""
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self.httpd.socket = self._context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def go_away(self) -> None:
        """Stop listening: connections are refused, as while a server restarts."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def server_keys(self) -> dict[str, Any]:
        key = self.signing_key
        body = {
            "server_name": self.server_name,
            "valid_until_ts": int(time.time() * 1000) + 3_600_000,
            "verify_keys": {f"ed25519:{key.version}": {"key": encode_verify_key_base64(get_verify_key(key))}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.server_name, key)

    def signed_get(self, server: FederatedServer, path: str) -> requests.Response:
        """A request signed by the recorder, as another server would make it."""
        header = authorization_header("GET", path, self.server_name, server.server_name, self.signing_key)
        return server.get(path, headers={"Authorization": header})

    def verify_key(self, key_id: str) -> Any:
        if key_id not in self._keys:
            assert self.origin is not None
            body = self.origin.get("/_matrix/key/v2/server").json()
            for kid, entry in body["verify_keys"].items():
                self._keys[kid] = decode_verify_key_bytes(kid, decode_base64(entry["key"]))
        return self._keys[key_id]

    def handle(self, path: str, authorization: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        match = re.fullmatch(r"/_matrix/federation/v1/send/([^/?]+)", path)
        if match is None:
            return 404, {"errcode": "M_UNRECOGNIZED", "error": path}
        txn_id = match.group(1)
        body = json.loads(raw)
        params = dict(_PARAM.findall(authorization))
        assert self.origin is not None
        try:
            assert authorization.startswith("X-Matrix "), authorization
            assert params["origin"] == self.origin.server_name and params["destination"] == self.server_name
            key = self.verify_key(params["key"])
            signed = {
                "method": "PUT",
                "uri": path,
                "origin": params["origin"],
                "destination": self.server_name,
                "content": body,
                "signatures": {params["origin"]: {params["key"]: params["sig"]}},
            }
            verify_signed_json(signed, params["origin"], key)
            assert body["origin"] == self.origin.server_name
            assert isinstance(body["origin_server_ts"], int)
            assert len(body["pdus"]) <= 50 and len(body.get("edus", [])) <= 100
            for pdu in body["pdus"]:
                verify_event_signature(pdu, self.origin.server_name, key, "10")
        except Exception as error:  # recorded: the test fails on it, with the reason
            self.problems.append(f"{txn_id}: {error!r}")
            return 401, {"errcode": "M_UNAUTHORIZED", "error": repr(error)}
        self.received.append((txn_id, body))
        if self.mode == "down":
            return 503, {"errcode": "M_UNKNOWN", "error": "down for the test"}
        if self.mode == "hold":
            self.release.wait(60)
            return 503, {"errcode": "M_UNKNOWN", "error": "held"}
        if txn_id not in self.answered:  # a real receiver's dedupe by (origin, txn id)
            self.answered[txn_id] = body
            self.order.append(txn_id)
        return 200, {"pdus": {}}

    def texts(self) -> list[str]:
        """Message bodies in the order of the answered transactions."""
        return [
            pdu["content"]["body"]
            for txn in self.order
            for pdu in self.answered[txn]["pdus"]
            if pdu["type"] == "m.room.message"
        ]

    def wait_for(self, condition: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert not self.problems, self.problems
            if time.monotonic() > deadline:
                raise AssertionError(f"never happened: {what}")
            time.sleep(0.05)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()


@pytest.fixture
def recorder(ca: TestCA) -> Iterator[Recorder]:
    rec = Recorder(ca)
    yield rec
    rec.close()


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _send(server: ServerProcess, token: str, room_id: str, text: str) -> str:
    r = requests.put(
        server.url(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{text}"),
        json={"msgtype": "m.text", "body": text},
        headers=_headers(token),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def _create_public_room(server: ServerProcess, token: str) -> str:
    r = requests.post(
        server.url("/_matrix/client/v3/createRoom"),
        json={"preset": "public_chat"},
        headers=_headers(token),
        timeout=30,
    )
    return str(r.json()["room_id"])


async def _add_remote_member(process: ServerProcess, room_id: str, user_id: str) -> None:
    """With the process stopped: the remote user's join, persisted by our event path."""
    raw = yaml.safe_load(process.config_path.read_text())
    from twisted.internet import reactor

    hs = HomeServer(parse_config(raw, str(process.config_path), env={}), reactor)
    await hs.start()
    try:
        await hs.events.send(user_id, room_id, "m.room.member", {"membership": "join"}, state_key=user_id)
    finally:
        await hs.stop(None)


def _restart(process: ServerProcess, tmp_path: Path) -> ServerProcess:
    started = _launch(tmp_path, process.port, process.config_path, process.config, None)
    return started


@pytest_twisted.ensureDeferred
async def test_events_reach_the_remote_in_order_in_fifty_pdu_transactions_and_survive_kill_9(
    tmp_path: Path, ca: TestCA, recorder: Recorder
) -> None:
    fed = start_federated_server(tmp_path, ca)
    recorder.origin = fed
    process = fed.process
    try:
        alice = process.register("alice")
        token = alice["access_token"]
        room_id = _create_public_room(process, token)
        assert process.stop() == 0
        await _add_remote_member(process, room_id, f"@bob:{recorder.server_name}")
        process = fed.process = _restart(process, tmp_path)

        # 120 messages: all of them, in order, in transactions of at most 50 PDUs.
        texts = [f"m{i:03d}" for i in range(120)]
        started = time.monotonic()
        for text in texts:
            _send(process, token, room_id, text)
        recorder.wait_for(lambda: recorder.texts() == texts, "the 120 messages")
        elapsed = time.monotonic() - started
        sizes = [len(recorder.answered[t]["pdus"]) for t in recorder.order]
        assert max(sizes) <= 50, sizes
        print(
            f"120 events to one destination in {elapsed:.2f}s ({120 / elapsed:.0f}/s, client sends included)"
        )

        # A transaction in flight when the sender is killed -9 goes again, under its id.
        recorder.mode = "hold"
        _send(process, token, room_id, "k1")
        recorder.wait_for(
            lambda: any(
                p["content"].get("body") == "k1" for _, body in recorder.received for p in body["pdus"]
            ),
            "k1 in flight",
        )
        held_txn, held_body = recorder.received[-1]
        process.stop(signal.SIGKILL)
        recorder.mode = "ok"
        recorder.release.set()
        process = fed.process = _restart(process, tmp_path)
        _send(process, token, room_id, "k2")
        recorder.wait_for(lambda: recorder.texts()[-2:] == ["k1", "k2"], "k1 and k2 after the restart")
        # The transaction in flight was sent again under its id, with the same events.
        assert held_txn in recorder.answered
        assert recorder.answered[held_txn]["pdus"] == held_body["pdus"]
        assert recorder.texts() == [*texts, "k1", "k2"]  # nothing lost, nothing twice

        # A destination that refuses is tried again, and gets what was refused. The pauses,
        # and what ends them early (a request from it, a probe finding it back), are timed
        # on a test clock in tests/fast/test_federation_backoff.py; here, over the network,
        # delivery within a generous wait (the backoff alone brings it in 5 s).
        recorder.mode = "down"
        _send(process, token, room_id, "d1")
        recorder.wait_for(lambda: recorder.received[-1][1]["pdus"], "the refused try")
        recorder.mode = "ok"
        recorder.wait_for(lambda: recorder.texts()[-1:] == ["d1"], "d1 once it is back")

        # Refused again; the destination calls us meanwhile (a signed request over TLS,
        # our key fetched from it), and is answered.
        recorder.mode = "down"
        tries = len(recorder.received)
        _send(process, token, room_id, "d2")
        recorder.wait_for(lambda: len(recorder.received) > tries, "the refused try")
        recorder.mode = "ok"
        query = (
            f"/_matrix/federation/v1/query/profile?user_id={requests.utils.quote(alice['user_id'], safe='')}"
        )
        r = recorder.signed_get(fed, query)
        assert r.status_code == 200, r.text
        recorder.wait_for(lambda: recorder.texts()[-1:] == ["d2"], "d2 after the destination called")

        # Unreachable (restarting: connections refused), then back without calling us.
        recorder.go_away()
        refused = f"{recorder.server_name} did not take a transaction (Cannot reach"
        _send(process, token, room_id, "d3")
        deadline = time.monotonic() + 60
        while refused not in process.log_text():
            assert time.monotonic() < deadline, "no refused try"
            time.sleep(0.05)
        recorder.come_back()
        recorder.wait_for(lambda: recorder.texts()[-1:] == ["d3"], "d3 once it is back")
        assert recorder.texts() == [*texts, "k1", "k2", "d1", "d2", "d3"]
        assert not recorder.problems, recorder.problems
    finally:
        fed.process.stop()


@pytest_twisted.ensureDeferred
async def test_synapse_takes_our_transactions(tmp_path: Path, ca: TestCA) -> None:
    """Synapse as the destination: it checks our X-Matrix signature (fetching our keys) and
    parses the transaction. It is not in the room (joins come later), so it answers 200 and
    logs that it ignores the PDUs of a room it does not know: proof that it read them."""
    from synapse import start_synapse

    syn = start_synapse(tmp_path / "synapse", ca)
    fed = start_federated_server(tmp_path / "ours", ca)
    try:
        process = fed.process
        alice = process.register("alice")
        token = alice["access_token"]
        room_id = _create_public_room(process, token)
        assert process.stop() == 0
        await _add_remote_member(process, room_id, f"@bob:{syn.server_name}")
        process = fed.process = _restart(process, tmp_path / "ours")
        _send(process, token, room_id, "hello-synapse")
        r = requests.put(
            process.url(f"/_matrix/client/v3/rooms/{room_id}/typing/{alice['user_id']}"),
            json={"typing": True, "timeout": 5000},
            headers=_headers(token),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60

        def sends() -> list[str]:
            return [
                line for line in syn.log_text().splitlines() if "PUT /_matrix/federation/v1/send/" in line
            ]

        # Its access line is written once the answer is sent, after it processed the PDUs.
        needle = f"Ignoring PDU for unknown room_id: {room_id}"
        while needle not in syn.log_text() or not sends():
            assert time.monotonic() < deadline, syn.log_text()[-3000:]
            time.sleep(0.1)
        assert all(" 200 " in line for line in sends()), sends()
        assert "did not take a transaction" not in process.log_text()
    finally:
        fed.process.stop()
        syn.stop()


def test_to_device_reaches_a_user_of_another_of_our_servers(tmp_path: Path, ca: TestCA) -> None:
    """End to end: A's sender, B's /send and its to-device handler, B's user's /sync."""
    a = start_federated_server(tmp_path / "a", ca)
    b = start_federated_server(tmp_path / "b", ca)
    try:
        alice = a.process.register("alice")
        bob = b.process.register("bob")
        body = {"messages": {bob["user_id"]: {bob["device_id"]: {"secret": "for bob"}}}}
        r = requests.put(
            a.process.url("/_matrix/client/v3/sendToDevice/m.test/t1"),
            json=body,
            headers=_headers(alice["access_token"]),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        since = None
        received: list[dict[str, Any]] = []
        while not received:
            assert time.monotonic() < deadline, "bob never got the message"
            params = {"timeout": "1000", **({"since": since} if since else {})}
            s = requests.get(
                b.process.url("/_matrix/client/v3/sync"),
                params=params,
                headers=_headers(bob["access_token"]),
                timeout=30,
            ).json()
            since = s["next_batch"]
            received = s.get("to_device", {}).get("events", [])
        assert received == [{"type": "m.test", "sender": alice["user_id"], "content": {"secret": "for bob"}}]
    finally:
        a.stop()
        b.stop()


def test_a_message_reaches_a_member_on_another_of_our_servers(tmp_path: Path, ca: TestCA) -> None:
    """End to end with joins: B's user joins a room on A; A's messages reach B's user's
    /sync, in order, through A's sender and B's /send."""
    a = start_federated_server(tmp_path / "a", ca)
    b = start_federated_server(tmp_path / "b", ca)
    try:
        alice = a.process.register("alice")
        bob = b.process.register("bob")
        room_id = _create_public_room(a.process, alice["access_token"])
        r = requests.post(
            b.process.url(f"/_matrix/client/v3/join/{room_id}"),
            params={"server_name": a.server_name},
            json={},
            headers=_headers(bob["access_token"]),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        texts = [f"to bob {i}" for i in range(5)]
        for text in texts:
            _send(a.process, alice["access_token"], room_id, text.replace(" ", "-"))
        deadline = time.monotonic() + 30
        since = None
        seen: list[str] = []
        while len(seen) < len(texts):
            assert time.monotonic() < deadline, f"bob saw only {seen}"
            params = {"timeout": "1000", **({"since": since} if since else {})}
            s = requests.get(
                b.process.url("/_matrix/client/v3/sync"),
                params=params,
                headers=_headers(bob["access_token"]),
                timeout=30,
            ).json()
            since = s["next_batch"]
            events = s.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
            seen += [e["content"]["body"] for e in events if e["type"] == "m.room.message"]
        assert seen == [t.replace(" ", "-") for t in texts]
    finally:
        a.stop()
        b.stop()
