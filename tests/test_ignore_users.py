"""m.ignored_user_list enforced, seen through matrix-nio's sync against a real server: an
ignored user's messages and invites never reach the ignoring user (incremental and
initial sync), others' do, and un-ignoring shows what comes next without backfilling
(spec: Ignoring Users). The list is set over plain HTTP: nio has no account-data call."""

from __future__ import annotations

import secrets

import requests
from conftest import ServerProcess
from nio import AsyncClient, RoomCreateResponse, RoomMessageText, SyncResponse
from test_rooms_nio import PASSWORD, close_all, logged_in, new_users, run, send_text, sync_until, timeline

CS = "/_matrix/client/v3"


def set_ignored(server: ServerProcess, client: AsyncClient, *user_ids: str) -> requests.Response:
    return requests.put(
        server.url(f"{CS}/user/{client.user_id}/account_data/m.ignored_user_list"),
        json={"ignored_users": {u: {} for u in user_ids}},
        headers={"Authorization": f"Bearer {client.access_token}"},
        timeout=10,
    )


def texts(response: SyncResponse, room_id: str) -> list[str]:
    return [ev.body for ev in timeline(response, room_id) if isinstance(ev, RoomMessageText)]


def test_an_ignored_users_messages_and_invites_never_reach_sync(server: ServerProcess) -> None:
    async def scenario() -> None:
        names = new_users(server, "alice", "bob", "carol")
        alice, bob, carol = [await logged_in(server, n) for n in names]
        try:
            created = await alice.room_create(invite=[bob.user_id, carol.user_id])
            assert isinstance(created, RoomCreateResponse), created
            room = created.room_id
            for member in (bob, carol):
                await sync_until(member, lambda r: room in r.rooms.invite, "the invite")
                await member.join(room)
            assert set_ignored(server, alice, bob.user_id).status_code == 200

            await send_text(bob, room, "from bob, ignored")
            await send_text(carol, room, "from carol")
            seen: list[str] = []

            def until_carol(r: SyncResponse) -> bool:
                seen.extend(texts(r, room))
                return "from carol" in seen

            await sync_until(alice, until_carol, "carol's message")
            assert seen == ["from carol"]

            # A fresh device's initial sync leaves them out too.
            fresh = AsyncClient(server.base_url, user=names[0])
            await fresh.login(PASSWORD)
            first = await fresh.sync(timeout=0, full_state=True)
            assert isinstance(first, SyncResponse)
            assert "from carol" in texts(first, room) and "from bob, ignored" not in texts(first, room)
            await fresh.close()

            # Bob's invite to another room is dropped; carol's arrives.
            by_bob = await bob.room_create(invite=[alice.user_id])
            by_carol = await carol.room_create(invite=[alice.user_id])
            assert isinstance(by_bob, RoomCreateResponse) and isinstance(by_carol, RoomCreateResponse)
            invites: set[str] = set()

            def until_carols_invite(r: SyncResponse) -> bool:
                invites.update(r.rooms.invite)
                return by_carol.room_id in invites

            await sync_until(alice, until_carols_invite, "carol's invite")
            assert by_bob.room_id not in invites

            # Un-ignoring: bob's next message arrives, the ignored one is not backfilled.
            assert set_ignored(server, alice).status_code == 200
            await send_text(bob, room, "from bob, heard")
            later: list[str] = []

            def until_heard(r: SyncResponse) -> bool:
                later.extend(texts(r, room))
                return "from bob, heard" in later

            await sync_until(alice, until_heard, "bob's next message")
            assert later == ["from bob, heard"]
        finally:
            await close_all(alice, bob, carol)

    run(scenario())


def test_the_ignore_list_must_have_the_spec_shape(server: ServerProcess) -> None:
    user = server.register(f"shape{secrets.token_hex(3)}")
    url = server.url(f"{CS}/user/{user['user_id']}/account_data/m.ignored_user_list")
    headers = {"Authorization": f"Bearer {user['access_token']}"}
    for content in ({}, {"ignored_users": []}, {"ignored_users": {"@a:b": 1}}, {"ignored_users": {"x": {}}}):
        r = requests.put(url, json=content, headers=headers, timeout=10)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), content
    r = requests.put(url, json={"ignored_users": {"@a:b": {}}}, headers=headers, timeout=10)
    assert r.status_code == 200


def test_sliding_sync_leaves_out_an_ignored_users_messages_and_invites(server: ServerProcess) -> None:
    """Element X's path (simplified sliding sync, MSC4186): the same rules as /sync. No client
    library speaks it here: requests shaped as the MSC says."""
    from test_sliding_sync import SS, post, put, send, users

    alice, bob, carol = users(server, 3)
    a, b, c = (u["access_token"] for u in (alice, bob, carol))
    room = post(server, a, f"{CS}/createRoom", {"preset": "public_chat"})["room_id"]
    post(server, b, f"{CS}/join/{room}", {})
    post(server, c, f"{CS}/join/{room}", {})
    put(
        server,
        a,
        f"{CS}/user/{alice['user_id']}/account_data/m.ignored_user_list",
        {"ignored_users": {bob["user_id"]: {}}},
    )
    send(server, b, room, "bob, ignored")
    send(server, c, room, "carol, heard")
    by_bob = post(server, b, f"{CS}/createRoom", {"invite": [alice["user_id"]]})["room_id"]
    by_carol = post(server, c, f"{CS}/createRoom", {"invite": [alice["user_id"]]})["room_id"]

    body = {"lists": {"all": {"ranges": [[0, 20]], "timeline_limit": 10}}}
    r = requests.post(server.url(SS), json=body, headers={"Authorization": f"Bearer {a}"}, timeout=30)
    assert r.status_code == 200, r.text
    rooms = r.json()["rooms"]
    bodies = [ev["content"].get("body") for ev in rooms[room]["timeline"] if ev["type"] == "m.room.message"]
    assert bodies == ["carol, heard"]
    assert by_carol in rooms and by_bob not in rooms
