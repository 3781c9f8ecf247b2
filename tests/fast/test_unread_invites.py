"""A user's own invitation counts as unread while it waits (the default push rules notify
of it), and no longer once the user has joined: accepted, it is no news. Messages sent
before the join still count until the user reads them."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, room_path


@pytest_twisted.ensureDeferred
async def test_an_accepted_invitation_is_not_unread_but_messages_before_the_join_are(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        created = await client.call(
            "POST", "/createRoom", bob["access_token"], {"invite": [alice["user_id"]], "name": "Plans"}
        )
        room = created["room_id"]
        send = f"{room_path(room)}/send/m.room.message"
        await client.call("PUT", f"{send}/t1", bob["access_token"], {"msgtype": "m.text", "body": "early"})
        await client.call("POST", f"{room_path(room)}/join", alice["access_token"], {})

        def unread(synced: dict) -> int:  # type: ignore[type-arg]
            return int(synced["rooms"]["join"][room]["unread_notifications"]["notification_count"])

        assert unread(await client.call("GET", "/sync", alice["access_token"])) == 1  # "early" only
        await client.call("PUT", f"{send}/t2", bob["access_token"], {"msgtype": "m.text", "body": "hi"})
        assert unread(await client.call("GET", "/sync", alice["access_token"])) == 2
    finally:
        await hs.stop(None)
