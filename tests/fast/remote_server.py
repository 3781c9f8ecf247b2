"""Another server, played by the test: its name and signing key, PDUs it signs, and a
way to run a federation call to its end under the test clock."""

from __future__ import annotations

from typing import Any

from harness import TestClock, turn
from signedjson.key import generate_signing_key
from twisted.internet.defer import Deferred

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
