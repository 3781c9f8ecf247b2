"""Read receipts are limited per user: each is a write, and a public one wakes the sync of
every member of the room."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import CS, Client, TestClock, make_server, room_path


async def _bob_and_a_message(
    tmp_path: Path, clock: TestClock, burst: int
) -> tuple[Any, Client, dict[str, str], str, str]:
    """A server whose receipt limit refills 1 a second up to `burst`; bob in a room where
    alice sent one message: (server, client, bob, room id, the message's event id)."""
    limits = {"enabled": True, "receipt_per_user": {"per_second": 1, "burst": burst}}
    hs = await make_server(tmp_path, clock, rate_limits=limits)
    client = Client(hs)
    alice, bob, room_id = await client.alice_and_bob(hs)
    sent = await client.call(
        "PUT", f"{room_path(room_id)}/send/m.room.message/t1", alice["access_token"], {"body": "x"}
    )
    return hs, client, bob, room_id, sent["event_id"]


@pytest_twisted.ensureDeferred
async def test_a_loop_of_read_receipts_is_limited(tmp_path: Path) -> None:
    clock = TestClock()
    hs, client, bob, room_id, event_id = await _bob_and_a_message(tmp_path, clock, burst=3)
    try:
        receipt = f"{CS}{room_path(room_id)}/receipt/m.read/{event_id}"
        answers = [(await client.start("POST", receipt, bob["access_token"], {}))[0] for _ in range(3)]
        assert answers == [200, 200, 200]
        status, body = await client.start("POST", receipt, bob["access_token"], {})
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED") and body["retry_after_ms"] > 0
        # Each marker of read_markers counts: the fully-read marker and the receipt are two.
        clock.advance(2.0)
        markers = {"m.fully_read": event_id, "m.read": event_id}
        path = f"{CS}{room_path(room_id)}/read_markers"
        assert (await client.start("POST", path, bob["access_token"], markers))[0] == 200
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 429
        # A second later the user reads again.
        clock.advance(1.0)
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_read_markers_is_stored_whole_or_refused_whole(tmp_path: Path) -> None:
    clock = TestClock()
    hs, client, bob, room_id, event_id = await _bob_and_a_message(tmp_path, clock, burst=1)
    try:
        markers = {"m.fully_read": event_id, "m.read": event_id}
        path = f"{CS}{room_path(room_id)}/read_markers"
        fully_read = f"{CS}/user/{bob['user_id']}/rooms/{room_id}/account_data/m.fully_read"
        receipt = f"{CS}{room_path(room_id)}/receipt/m.read/{event_id}"
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 200
        # The bucket is empty: refused whole, neither marker stored.
        status, body = await client.start("POST", path, bob["access_token"], markers)
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert (await client.start("GET", fully_read, bob["access_token"]))[0] == 404
        # A marker naming an unknown event is refused before the other one is stored.
        clock.advance(1.0)
        bad = {"m.fully_read": event_id, "m.read": "$unknown"}
        assert (await client.start("POST", path, bob["access_token"], bad))[0] == 404
        assert (await client.start("GET", fully_read, bob["access_token"]))[0] == 404
        # One token lets both through, as one request; the bucket is then below zero.
        status, _ = await client.start("POST", path, bob["access_token"], markers)
        assert status == 200
        status, body = await client.start("GET", fully_read, bob["access_token"])
        assert (status, body) == (200, {"event_id": event_id})
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 429
        clock.advance(1.0)
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 429
        clock.advance(1.0)
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 200
    finally:
        await hs.stop(None)
