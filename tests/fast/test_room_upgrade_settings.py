"""Room upgrades carry a user's notification settings for the room, and a direct chat's place
in m.direct, over to the new room (spec: Room Upgrades, "Server behaviour"): the
upgrader's at once, everyone else's as they join it. A muted room stays muted, a room's
own sound stays, a direct chat stays one."""

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


@pytest_twisted.ensureDeferred
async def test_an_upgraded_direct_chat_stays_a_direct_chat(tmp_path: Path) -> None:
    """Clients list direct chats by m.direct (Element X's people filter, sliding sync's is_dm)."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        a, b = alice["access_token"], bob["access_token"]
        body = {"is_direct": True, "invite": [bob["user_id"]], "preset": "trusted_private_chat"}
        old = (await client.call("POST", "/createRoom", a, body))["room_id"]
        await client.call("POST", f"/join/{quote(old)}", b, {})
        await client.call(
            "PUT", f"/user/{quote(alice['user_id'])}/account_data/m.direct", a, {bob["user_id"]: [old]}
        )
        new = (await client.call("POST", f"{room_path(old)}/upgrade", a, {"new_version": "11"}))[
            "replacement_room"
        ]
        direct = await client.call("GET", f"/user/{quote(alice['user_id'])}/account_data/m.direct", a)
        assert direct == {bob["user_id"]: [old, new]}
        # Bob's m.direct came from accepting the invite; joining the new room adds it.
        await client.call("POST", f"{room_path(new)}/invite", a, {"user_id": bob["user_id"]})
        await client.call("POST", f"/join/{quote(new)}", b, {})
        direct = await client.call("GET", f"/user/{quote(bob['user_id'])}/account_data/m.direct", b)
        assert direct == {alice["user_id"]: [old, new]}
    finally:
        await hs.stop(None)
