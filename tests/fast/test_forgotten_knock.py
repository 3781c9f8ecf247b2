"""A user who left and forgot a room and then knocks on it sees their knock: knocking, like
joining or an invite, puts the room back in their sync (it was left out as forgotten)."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, room_path

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


@pytest_twisted.ensureDeferred
async def test_a_knock_on_a_forgotten_room_shows_in_sync(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        a, b = alice["access_token"], bob["access_token"]
        await client.call("POST", f"{room_path(room)}/leave", b, {})
        await client.call("POST", f"{room_path(room)}/forget", b, {})
        await client.call("PUT", f"{room_path(room)}/state/m.room.join_rules/", a, {"join_rule": "knock"})

        await client.call("POST", f"/knock/{room}", b, {"reason": "back, please"})
        status, synced = await client.sync(b)
        assert status == 200 and room in synced["rooms"]["knock"]
        body = {"lists": {"all": {"ranges": [[0, 9]]}}}
        status, sliding = await client.start("POST", SS, b, body, timeout="0")
        assert status == 200 and "invite_state" in sliding["rooms"][room]
    finally:
        await hs.stop(None)
