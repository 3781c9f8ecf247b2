"""A call invite to a user who is offline (no sync open) is pushed at high priority with the
default push rules' ring (`.m.rule.call`), while a plain message in the same group room goes
out at low priority: the push plugin against a local gateway (tests/test_push_delivery.py)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest_twisted
from fast.harness import room_path, until
from test_push_delivery import start


@pytest_twisted.ensureDeferred
async def test_a_call_invite_to_an_offline_user_is_a_high_priority_ring(tmp_path: Path) -> None:
    s = await start(tmp_path)
    try:
        alice, bob, carol = await s.user("alice"), await s.user("bob"), await s.user("carol")
        room_id = await s.room(alice, bob, carol, name="Team")  # three members: no one-to-one rule
        await s.pusher(bob, "bob-phone")
        await s.send(alice, room_id, "standup in five")
        invite = {
            "call_id": "c1",
            "party_id": alice["device_id"],
            "version": "1",
            "lifetime": 60000,
            "invitee": bob["user_id"],
            "offer": {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"},
        }
        path = f"{room_path(room_id)}/send/m.call.invite/{secrets.token_hex(4)}"
        await s.client.call("PUT", path, alice["access_token"], invite)
        await until(lambda: len(s.gateway.requests) == 2, "two pushes")
        message, call = s.gateway.requests
        assert message["type"] == "m.room.message" and message["prio"] == "low"
        assert call["type"] == "m.call.invite" and call["prio"] == "high"
        assert call["devices"][0]["tweaks"] == {"sound": "ring"}
        assert call["content"]["call_id"] == "c1"
    finally:
        await s.close()
