"""An ignored user's messages count for nothing: not in the ignoring user's
`notification_count`/`highlight_count` or `unread_thread_notifications` (/sync and
simplified sliding sync), not in `GET /notifications`, and the push decisions leave the
ignoring user out (spec: Client-Server API, "Ignoring Users"). Both ways counts come
about are checked: kept current by the commit stream (the user synced before the
messages) and loaded from the database (they did not). The ignore lists are all in
memory: the send path never reads one.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path

from homeserver.core.ignored_users import IGNORED_USER_LIST
from homeserver.server import HomeServer

SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
THREAD_FILTER = '{"room": {"timeline": {"unread_thread_notifications": true}}}'


async def send(client: Client, token: str, room_id: str, content: dict[str, Any]) -> str:
    path = f"{room_path(room_id)}/send/m.room.message/{secrets.token_hex(4)}"
    result = await client.call("PUT", path, token, content)
    return str(result["event_id"])


async def sync_room(client: Client, token: str, room_id: str) -> dict[str, Any]:
    status, body = await client.start(
        "GET", "/_matrix/client/v3/sync", token, filter=THREAD_FILTER, timeout="0"
    )
    assert status == 200, body
    room: dict[str, Any] = body["rooms"]["join"][room_id]
    return room


async def sliding_counts(client: Client, token: str, room_id: str) -> tuple[int, int]:
    body = {"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1, "required_state": []}}}
    status, result = await client.start("POST", SLIDING, token, body)
    assert status == 200, result
    room = result["rooms"][room_id]
    return room["notification_count"], room["highlight_count"]


def counts(room: dict[str, Any]) -> tuple[int, int]:
    unread = room["unread_notifications"]
    return unread["notification_count"], unread["highlight_count"]


async def setup(hs: HomeServer, client: Client) -> dict[str, Any]:
    users = {name: await client.register(hs, name) for name in ("alice", "bob", "carol")}
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    rooms = []
    for _ in range(2):
        room_id = (
            await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"})
        )["room_id"]
        for other in (bob, carol):
            await client.call("POST", f"/join/{room_id}", other["access_token"], {})
        rooms.append(room_id)
    for user in (alice, carol):  # push decisions are kept for users with a pusher
        await client.call(
            "POST",
            "/pushers/set",
            user["access_token"],
            {
                "kind": "http",
                "app_id": "org.example.app",
                "pushkey": f"key-{user['user_id']}",
                "app_display_name": "App",
                "device_display_name": "Phone",
                "lang": "en",
                "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
            },
        )
    await client.call(
        "PUT",
        f"/user/{alice['user_id']}/account_data/{IGNORED_USER_LIST}",
        alice["access_token"],
        {"ignored_users": {bob["user_id"]: {}}},
    )
    return {**users, "rooms": rooms}


async def chatter(client: Client, ctx: dict[str, Any], room_id: str) -> dict[str, str]:
    """Bob (ignored by alice): a message, a mention of alice, a thread; carol: one message."""
    alice, bob, carol = ctx["alice"], ctx["bob"], ctx["carol"]
    root = await send(client, carol["access_token"], room_id, {"msgtype": "m.text", "body": "carol here"})
    mention = await send(
        client,
        bob["access_token"],
        room_id,
        {"msgtype": "m.text", "body": "hey alice", "m.mentions": {"user_ids": [alice["user_id"]]}},
    )
    await send(client, bob["access_token"], room_id, {"msgtype": "m.text", "body": "bob again"})
    await send(
        client,
        bob["access_token"],
        room_id,
        {
            "msgtype": "m.text",
            "body": "in a thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    return {"root": root, "mention": mention}


@pytest_twisted.ensureDeferred
async def test_an_ignored_users_messages_neither_count_nor_notify(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    reads: list[str] = []
    real_get = hs.storage.user_data.get_account_data

    async def counting_get(user_id: str, room_id: str, data_type: str) -> Any:
        reads.append(data_type)
        return await real_get(user_id, room_id, data_type)

    try:
        ctx = await setup(hs, client)
        alice, carol = ctx["alice"]["access_token"], ctx["carol"]["access_token"]
        live, loaded = ctx["rooms"]
        # Alice's counts for `live` are in memory (kept current by the commit stream);
        # for `loaded` they are first read after the messages, from the database.
        assert counts(await sync_room(client, alice, live)) == (0, 0)
        hs.storage.user_data.get_account_data = counting_get  # type: ignore[method-assign]
        sent = {room_id: await chatter(client, ctx, room_id) for room_id in (live, loaded)}
        assert IGNORED_USER_LIST not in reads  # the send path reads no ignore list

        for room_id in (live, loaded):
            room = await sync_room(client, alice, room_id)
            assert counts(room) == (1, 0), room  # carol's message only; bob's mention is no highlight
            assert "unread_thread_notifications" not in room or not room["unread_thread_notifications"]
            assert await sliding_counts(client, alice, room_id) == (1, 0)
            # Carol ignores nobody: bob's three messages and her own thread are hers to read.
            assert counts(await sync_room(client, carol, room_id)) == (2, 0)

        status, notes = await client.start("GET", "/_matrix/client/v3/notifications", alice)
        assert status == 200
        senders = {n["event"]["sender"] for n in notes["notifications"]}
        assert senders == {ctx["carol"]["user_id"]}

        # What the push plugin asks: bob's mention notifies carol, never alice.
        for room_id in (live, loaded):
            decided = {d.user_id for d in await hs.unread.decisions(sent[room_id]["mention"])}
            assert decided == {ctx["carol"]["user_id"]}
        assert IGNORED_USER_LIST not in reads
    finally:
        hs.storage.user_data.get_account_data = real_get  # type: ignore[method-assign]
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_ignore_lists_survive_a_restart_and_a_change_recounts(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await setup(hs, client)
        alice, bob = ctx["alice"], ctx["bob"]
        room_id = ctx["rooms"][0]
        assert counts(await sync_room(client, alice["access_token"], room_id)) == (0, 0)
        await send(client, bob["access_token"], room_id, {"msgtype": "m.text", "body": "unseen"})
        assert counts(await sync_room(client, alice["access_token"], room_id)) == (0, 0)
    finally:
        await hs.stop(None)

    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        assert hs.ignored_users.now(alice["user_id"]) == {bob["user_id"]}
        assert hs.ignored_users.ignorers_of(bob["user_id"]) == {alice["user_id"]}
        await send(client, bob["access_token"], room_id, {"msgtype": "m.text", "body": "still unseen"})
        assert counts(await sync_room(client, alice["access_token"], room_id)) == (0, 0)
        # Alice stops ignoring bob: her counts are recomputed, his unread messages count.
        await client.call(
            "PUT",
            f"/user/{alice['user_id']}/account_data/{IGNORED_USER_LIST}",
            alice["access_token"],
            {"ignored_users": {}},
        )
        assert hs.ignored_users.ignorers_of(bob["user_id"]) is None
        await send(client, bob["access_token"], room_id, {"msgtype": "m.text", "body": "seen"})
        assert counts(await sync_room(client, alice["access_token"], room_id)) == (3, 0)
    finally:
        await hs.stop(None)
