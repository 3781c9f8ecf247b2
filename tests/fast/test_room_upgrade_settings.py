"""Room upgrades carry a user's notification settings for the room over to the new room
(spec: Room Upgrades, "Server behaviour"): the upgrader's at once, everyone else's as they
join it. A muted room stays muted, a room's own sound stays."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from harness import Client, TestClock, make_server, room_path


def mute(room_id: str) -> dict[str, Any]:
    """What Element sends to mute a room."""
    return {"conditions": [{"kind": "event_match", "key": "room_id", "pattern": room_id}], "actions": []}


@pytest_twisted.ensureDeferred
async def test_an_upgrade_carries_the_rooms_push_rules_over(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, old = await client.alice_and_bob(hs)
        a, b = alice["access_token"], bob["access_token"]
        await client.call("PUT", f"/pushrules/global/override/{quote(old)}", b, mute(old))
        sound = {"actions": ["notify", {"set_tweak": "sound", "value": "bell"}]}
        await client.call("PUT", f"/pushrules/global/room/{quote(old)}", a, sound)

        new = (await client.call("POST", f"{room_path(old)}/upgrade", a, {"new_version": "11"}))[
            "replacement_room"
        ]
        # The upgrader's rule is there at once; Bob's once he joins the new room.
        assert (await client.call("GET", f"/pushrules/global/room/{quote(new)}", a))["actions"] == sound[
            "actions"
        ]
        status, _ = await client.start("GET", f"/_matrix/client/v3/pushrules/global/override/{quote(new)}", b)
        assert status == 404
        await client.call("POST", f"/join/{quote(new)}", b, {})
        rule = await client.call("GET", f"/pushrules/global/override/{quote(new)}", b)
        assert rule["conditions"] == mute(new)["conditions"] and rule["actions"] == []
        # The old rules stay, the new one right after them.
        overrides = (await client.call("GET", "/pushrules/", b))["global"]["override"]
        ids = [r["rule_id"] for r in overrides]
        assert ids.index(new) == ids.index(old) + 1

        # So Bob is not notified of the new room's messages.
        path = f"{room_path(new)}/send/m.room.message/{secrets.token_hex(4)}"
        await client.call("PUT", path, a, {"msgtype": "m.text", "body": "in the new room"})
        status, synced = await client.sync(b)
        assert status == 200
        assert synced["rooms"]["join"][new]["unread_notifications"]["notification_count"] == 0
    finally:
        await hs.stop(None)
