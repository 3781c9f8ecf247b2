"""createRoom's initial_state may not give the new room another room's alias as its
canonical alias: the public directory would list the impostor under that alias."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_initial_state_cannot_claim_another_rooms_alias(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        await client.call(
            "PUT", "/directory/room/" + quote("#official:fast.test"), alice["access_token"], {"room_id": room}
        )

        for content in ({"alias": "#official:fast.test"}, {"alt_aliases": ["#official:fast.test"]}):
            body = {
                "preset": "public_chat",
                "visibility": "public",
                "initial_state": [{"type": "m.room.canonical_alias", "state_key": "", "content": content}],
            }
            status, answer = await client.start("POST", CS + "/createRoom", bob["access_token"], body)
            assert (status, answer.get("errcode")) == (400, "M_BAD_ALIAS"), answer
        listed = await client.call("GET", "/publicRooms", bob["access_token"])
        assert [r for r in listed["chunk"] if r.get("canonical_alias") == "#official:fast.test"] == []

        # The room's own new alias is still fine to name.
        body = {
            "room_alias_name": "mine",
            "initial_state": [
                {"type": "m.room.canonical_alias", "content": {"alias": "#mine:fast.test", "alt_aliases": []}}
            ],
        }
        created = await client.call("POST", "/createRoom", bob["access_token"], body)
        state = await client.call(
            "GET", f"/rooms/{quote(created['room_id'])}/state/m.room.canonical_alias/", bob["access_token"]
        )
        assert state["alias"] == "#mine:fast.test"
    finally:
        await hs.stop(None)
