"""Synapse's published federation advisories, replayed against ours where no other test
shows the refusal (docs/federation.md, "Synapse's advisories, one by one"): malformed
invites that broke the invitee's sync (CVE-2024-52815), and an oversized
/.well-known/matrix/server (CVE-2021-21274)."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import requests
from federation_harness import (
    LOOPBACK,
    FederatedServer,
    TestCA,
    federated_pair,
    signed_request,
    signing_key,
)
from signedjson.key import generate_signing_key

from homeserver.events.hashing import compute_event_id
from homeserver.events.signing import sign_event

SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer]]:
    yield from federated_pair(tmp_path_factory, ca)


def _client(server: FederatedServer, token: str, method: str, path: str, body: Any = None) -> Any:
    r = requests.request(
        method,
        server.process.url(path),
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_malformed_invites_neither_break_sync_nor_show_their_junk(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    # CVE-2024-52815: a crafted invite over federation broke the invitee's /sync.
    a, b = servers
    alice = a.process.register("alice_adv_invite")
    key = signing_key(b)
    junk_state: list[Any] = [
        "not a list",
        {"type": "m.room.name"},
        [1, "x", None, [], {"type": 5, "state_key": "", "content": {}, "sender": "@m:x"}],
        [{"type": "m.room.name", "state_key": "", "content": [1], "sender": "@m:x"}],
        [{"type": "m.room.name", "state_key": None, "content": {}, "sender": "@m:x"}],
        [{"type": "m.room.name", "state_key": "", "content": {"name": {"deep": [1]}}, "sender": 7}],
        [
            {
                "type": "m.room.name",
                "state_key": "",
                "content": {"name": 5},
                "sender": "@m:x",
                "extra": "x" * 1000,
            }
        ]
        * 80,
    ]
    rooms = []
    for i, state in enumerate(junk_state):
        room = f"!junk{i}:{b.server_name}"
        pdu = {
            "room_id": room,
            "sender": f"@m:{b.server_name}",
            "type": "m.room.member",
            "state_key": alice["user_id"],
            "content": {"membership": "invite", "displayname": {"not": "a string"}},
            "origin_server_ts": int(time.time() * 1000),
            "depth": 3,
            "prev_events": [],
            "auth_events": [],
        }
        signed = sign_event(pdu, b.server_name, key, "10")
        path = f"/_matrix/federation/v2/invite/{quote(room)}/{compute_event_id(signed, '10')}"
        body = {"event": signed, "room_version": "10", "invite_room_state": state}
        r = signed_request("PUT", b, a, path, body)
        assert r.status_code == 200, r.text
        rooms.append(room)

    token = alice["access_token"]
    invites = _client(a, token, "GET", "/_matrix/client/v3/sync?timeout=0")["rooms"]["invite"]
    assert set(invites) == set(rooms)
    for room in rooms:
        events = invites[room]["invite_state"]["events"]
        # Only well-formed stripped events, the spec's four fields, at most 50 of them.
        for ev in events:
            assert isinstance(ev["type"], str) and isinstance(ev["state_key"], str), ev
            assert isinstance(ev["content"], dict) and isinstance(ev["sender"], str), ev
            assert "extra" not in ev
        assert len(events) <= 51  # the stripped state and the invite itself
    sliding = {"lists": {"all": {"ranges": [[0, 20]], "timeline_limit": 1}}}
    answer = _client(a, token, "POST", SLIDING_SYNC, sliding)
    assert set(answer["rooms"]) == set(rooms)
    # Rejecting one still works, and leaves the others.
    _client(a, token, "POST", f"/_matrix/client/v3/rooms/{quote(rooms[-1])}/leave", {})
    invites = _client(a, token, "GET", "/_matrix/client/v3/sync?timeout=0")["rooms"]["invite"]
    assert set(invites) == set(rooms[:-1])


class _HugeWellKnown(http.server.BaseHTTPRequestHandler):
    """A .well-known that is valid JSON delegating to `target`, padded to 20 MiB."""

    target = ""
    sent = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        pad = b" " * (1024 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(pad) * 20 + len(self.target) + 16))
        self.end_headers()
        try:
            self.wfile.write(b'{"m.server": "' + self.target.encode() + b'"')
            for _ in range(20):
                self.wfile.write(pad)
                type(self).sent += len(pad)
            self.wfile.write(b"}")
        except OSError:
            pass  # the reader hung up, as it should

    def log_message(self, *args: Any) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_an_oversized_well_known_is_not_read_to_its_end(
    servers: tuple[FederatedServer, FederatedServer], ca: TestCA, tmp_path: Path
) -> None:
    # CVE-2021-21274: a server answering .well-known with a huge file made others read it all.
    a, _ = servers
    cert, key = ca.issue("huge-well-known")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HugeWellKnown)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    _HugeWellKnown.target = a.server_name
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        from twisted.internet import reactor

        from homeserver.config import FederationConfig
        from homeserver.core.clock import Clock
        from homeserver.core.federation.client import FederationClient
        from homeserver.core.federation.discovery import Destination

        client = FederationClient(
            reactor,
            Clock(reactor),
            "tester.example",
            generate_signing_key("t"),
            FederationConfig(ca_file=str(ca.ca_file), ip_range_whitelist=LOOPBACK),
        )
        client.well_known_port = httpd.server_address[1]
        # Read whole, it would delegate to A; cut off at its cap, there is no delegation
        # and the name's default port is used.
        assert await client.resolver.resolve("localhost") == Destination(
            "localhost", 8448, "localhost", "localhost"
        )
        assert _HugeWellKnown.sent < 20 * 1024 * 1024
    finally:
        httpd.shutdown()
        httpd.server_close()
