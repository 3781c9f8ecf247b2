"""Two upgrades of one room at once (core/room_upgrade.py): one replacement room and one
tombstone, both requests answered with that room; a later upgrade of the replaced room to
another version is refused (docs/api.md, room upgrades)."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server, room_path
from remote_server import settle
from twisted.internet.defer import gatherResults


@pytest_twisted.ensureDeferred
async def test_two_upgrades_at_once_make_one_replacement(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        alice, _, old = await client.alice_and_bob(hs)
        token = alice["access_token"]
        # Two requests at once, as from a client that sent it twice (or two of its devices).
        both = [
            client.start("POST", f"{CS}{room_path(old)}/upgrade", token, {"new_version": "11"}) for _ in "ab"
        ]
        # The group commit's gathering waits run on the test clock: move it while they work.
        answers = await settle(clock, gatherResults(both))
        assert [status for status, _ in answers] == [200, 200], answers
        new = answers[0][1]["replacement_room"]
        assert answers[1][1]["replacement_room"] == new

        # One room was made: Alice is in the old room and that one only.
        joined = (await client.call("GET", "/joined_rooms", token))["joined_rooms"]
        assert sorted(joined) == sorted([old, new])
        # The old room has one tombstone, naming it.
        page = await client.call("GET", f"{room_path(old)}/messages?dir=b&limit=100", token)
        tombstones = [e for e in page["chunk"] if e["type"] == "m.room.tombstone"]
        assert [t["content"]["replacement_room"] for t in tombstones] == [new]

        # Upgrading the replaced room again to another version would give it a second successor.
        status, body = await client.start(
            "POST", f"{CS}{room_path(old)}/upgrade", token, {"new_version": "12"}
        )
        assert (status, body["errcode"]) == (400, "M_BAD_STATE"), body
        assert new in body["error"]
    finally:
        await hs.stop(None)
