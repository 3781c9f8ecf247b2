"""Another server, played by the test: its name and signing key, PDUs it signs, a way to run
a federation call to its end under the test clock, and signed requests to our server's
federation routes (through its HttpChannel, as over a socket)."""

from __future__ import annotations

import json
from typing import Any

from harness import TestClock, connect, parse_response, turn
from signedjson.key import generate_signing_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey
from twisted.internet.defer import Deferred

from homeserver.core.federation.keys import parse_key_response
from homeserver.core.federation.request_auth import authorization_header
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.signing import sign_event
from homeserver.server import HomeServer
from homeserver.signing_key import verify_key_base64
from homeserver.storage.server_keys import StoredKey

THEM = "them.example"
KEY = generate_signing_key("t1")


def signed_pdu(
    room_id: str,
    sender: str,
    kind: str,
    content: dict[str, Any],
    prev: list[str],
    auth: list[str],
    depth: int,
    **extra: Any,
) -> tuple[str, dict[str, Any]]:
    """A room v10 PDU signed by THEM, and its event ID (`extra`: state_key and the like)."""
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "sender": sender,
        "type": kind,
        "content": content,
        "depth": depth,
        "origin_server_ts": 1_800_000_000_000,
        "prev_events": prev,
        "auth_events": auth,
        **extra,
    }
    pdu = sign_event(add_content_hash(pdu), THEM, KEY, "10")
    return compute_event_id(pdu, "10"), pdu


async def trust_them(hs: HomeServer, clock: TestClock) -> None:
    """Hold THEM's key for a day, so their PDUs verify without a key fetch."""
    far = clock.time_ms() + 86_400_000
    await hs.federation.key_ring._remember(
        [StoredKey(THEM, "ed25519:t1", verify_key_base64(KEY), far, None, "{}")]
    )


async def settle(clock: TestClock, d: Deferred[Any]) -> Any:
    """Run `d` to its end: the database threads answer on the real reactor, and the group
    commit's gathering waits are timed by the test clock."""
    for _ in range(5000):
        if d.called:
            return await d
        clock.advance(0.01)
        await turn()
    raise AssertionError("never finished")


class Origin:
    """A remote server whose key our server already holds (as after a key fetch)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key: SigningKey = generate_signing_key("k1")

    async def introduce(self, hs: HomeServer) -> None:
        now = hs.clock.time_ms()
        body = {
            "server_name": self.name,
            "valid_until_ts": now + 86_400_000,
            "verify_keys": {"ed25519:k1": {"key": verify_key_base64(self.key)}},
            "old_verify_keys": {},
        }
        signed = sign_json(body, self.name, self.key)
        await hs.storage.server_keys.store(parse_key_response(self.name, signed, now), now)

    def header(self, hs: HomeServer, method: str, uri: str, content: Any = None) -> str:
        return authorization_header(method, uri, self.name, hs.config.server_name, self.key, content)


def start(
    hs: HomeServer, method: str, uri: str, authorization: str | None = None, body: bytes | None = None
) -> Deferred[tuple[int, dict[str, str], dict[str, Any]]]:
    assert hs.http is not None
    head = f"{method} {uri} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
    if authorization is not None:
        head += f"Authorization: {authorization}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    _, transport = connect(hs.http)
    transport.protocol.dataReceived(head.encode() + b"\r\n" + (body or b""))

    def answered(_: None) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, headers, data = parse_response(transport.value())
        return status, headers, json.loads(data) if data else {}

    return transport.closed.addCallback(answered)


def signed(hs: HomeServer, origin: Origin, method: str, uri: str, content: Any = None) -> Deferred[Any]:
    body = None if content is None else json.dumps(content).encode()
    return start(hs, method, uri, origin.header(hs, method, uri, content), body)


def profile_uri(user_id: str) -> str:
    return f"/_matrix/federation/v1/query/profile?user_id={user_id.replace('@', '%40').replace(':', '%3A')}"
