"""Push decisions are kept only for members with a pusher: the commit pass of a busy room
does no push work for members who have nowhere to be pushed. The set of users with a
pusher follows every change (set, delete, a device logged out) and is read again at
start-up."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path

from homeserver.server import HomeServer


def pusher(user: dict[str, str], kind: str | None = "http") -> dict[str, Any]:
    return {
        "kind": kind,
        "app_id": "org.example.app",
        "pushkey": f"key-{user['user_id']}",
        "app_display_name": "App",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    }


async def send(client: Client, token: str, room_id: str) -> str:
    path = f"{room_path(room_id)}/send/m.room.message/{secrets.token_hex(4)}"
    result = await client.call("PUT", path, token, {"msgtype": "m.text", "body": "hello"})
    return str(result["event_id"])


async def decided(hs: HomeServer, event_id: str) -> set[str]:
    return {d.user_id for d in await hs.unread.decisions(event_id)}


@pytest_twisted.ensureDeferred
async def test_decisions_follow_who_has_a_pusher(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        users = {name: await client.register(hs, name) for name in ("alice", "bob", "carol")}
        alice, bob, carol = users["alice"], users["bob"], users["carol"]
        room_id = (
            await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"})
        )["room_id"]
        for other in (bob, carol):
            await client.call("POST", f"/join/{room_id}", other["access_token"], {})
        await client.call("POST", "/pushers/set", bob["access_token"], pusher(bob))
        hs.unread.keep_decisions = True  # as once the push plugin has asked

        # Both notify by the default rules; only bob can be pushed to.
        assert await decided(hs, await send(client, alice["access_token"], room_id)) == {bob["user_id"]}

        await client.call("POST", "/pushers/set", carol["access_token"], pusher(carol))
        both = {bob["user_id"], carol["user_id"]}
        assert await decided(hs, await send(client, alice["access_token"], room_id)) == both

        await client.call("POST", "/pushers/set", bob["access_token"], pusher(bob, kind=None))
        assert await decided(hs, await send(client, alice["access_token"], room_id)) == {carol["user_id"]}

        await client.call("POST", "/logout", carol["access_token"], {})  # the device takes its pusher
        assert await decided(hs, await send(client, alice["access_token"], room_id)) == set()
        await client.call("POST", "/pushers/set", bob["access_token"], pusher(bob))
    finally:
        await hs.stop(None)

    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        assert hs.pushers.owners == {bob["user_id"]}
        hs.unread.keep_decisions = True
        event_id = await send(client, alice["access_token"], room_id)
        assert await decided(hs, event_id) == {bob["user_id"]}
    finally:
        await hs.stop(None)
