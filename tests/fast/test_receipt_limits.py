"""Read receipts are limited per user: each is a write, and a public one wakes the sync of
every member of the room."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server, room_path


@pytest_twisted.ensureDeferred
async def test_a_loop_of_read_receipts_is_limited(tmp_path: Path) -> None:
    clock = TestClock()
    limits = {"enabled": True, "receipt_per_user": {"per_second": 1, "burst": 3}}
    hs = await make_server(tmp_path, clock, rate_limits=limits)
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)
        sent = await client.call(
            "PUT", f"{room_path(room_id)}/send/m.room.message/t1", alice["access_token"], {"body": "x"}
        )
        receipt = f"{CS}{room_path(room_id)}/receipt/m.read/{sent['event_id']}"
        answers = [(await client.start("POST", receipt, bob["access_token"], {}))[0] for _ in range(3)]
        assert answers == [200, 200, 200]
        status, body = await client.start("POST", receipt, bob["access_token"], {})
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED") and body["retry_after_ms"] > 0
        # Each marker of read_markers counts: the fully-read marker and the receipt are two.
        clock.advance(2.0)
        markers = {"m.fully_read": sent["event_id"], "m.read": sent["event_id"]}
        path = f"{CS}{room_path(room_id)}/read_markers"
        assert (await client.start("POST", path, bob["access_token"], markers))[0] == 200
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 429
        # A second later the user reads again.
        clock.advance(1.0)
        assert (await client.start("POST", receipt, bob["access_token"], {}))[0] == 200
    finally:
        await hs.stop(None)
