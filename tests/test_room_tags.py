"""Room tags (`/user/{userId}/rooms/{roomId}/tags`) against a real server: the calls, their
authorisation, bad input, and the `m.tag` room account data a real client (matrix-nio,
which has no tag calls of its own but reads `m.tag` from /sync) receives."""

from __future__ import annotations

import secrets

from conftest import ServerProcess
from nio import AsyncClient, LoginResponse, SyncResponse, TagEvent
from test_room_authz import Client, joined_pair, new_client
from test_rooms_nio import PASSWORD, close_all, run, sync_until


def tags_path(client: Client, room_id: str, tag: str = "", user_id: str | None = None) -> str:
    base = f"/user/{user_id or client.user_id}/rooms/{room_id}/tags"
    return f"{base}/{tag}" if tag else base


def test_put_get_delete_tags(any_server: ServerProcess) -> None:
    alice, _bob, room_id = joined_pair(any_server)
    assert alice.ok("GET", tags_path(alice, room_id)) == {"tags": {}}
    alice.ok("PUT", tags_path(alice, room_id, "m.favourite"), json={"order": 0.25})
    alice.ok("PUT", tags_path(alice, room_id, "u.work"), json={})
    assert alice.ok("GET", tags_path(alice, room_id)) == {
        "tags": {"m.favourite": {"order": 0.25}, "u.work": {}}
    }
    # Replacing a tag replaces its body; deleting removes only that tag, and twice is fine.
    alice.ok("PUT", tags_path(alice, room_id, "m.favourite"), json={"order": 1})
    alice.ok("DELETE", tags_path(alice, room_id, "u.work"))
    alice.ok("DELETE", tags_path(alice, room_id, "u.work"))
    assert alice.ok("GET", tags_path(alice, room_id)) == {"tags": {"m.favourite": {"order": 1}}}


def test_tags_are_only_for_yourself_and_your_rooms(server: ServerProcess) -> None:
    alice, bob, room_id = joined_pair(server)
    alice.ok("PUT", tags_path(alice, room_id, "m.favourite"), json={"order": 0.5})
    # Someone else's tags: neither readable nor writable, even by a member of the room.
    for method, path, body in (
        ("GET", tags_path(bob, room_id, user_id=alice.user_id), None),
        ("PUT", tags_path(bob, room_id, "m.lowpriority", user_id=alice.user_id), {}),
        ("DELETE", tags_path(bob, room_id, "m.favourite", user_id=alice.user_id), None),
    ):
        r = bob.request(method, path, json=body)
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    assert alice.ok("GET", tags_path(alice, room_id)) == {"tags": {"m.favourite": {"order": 0.5}}}
    # A user who was never in the room cannot tag it.
    stranger = new_client(server, "stranger")
    r = stranger.request("PUT", tags_path(stranger, room_id, "m.favourite"), json={})
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    # A member who left keeps their own tags (rooms they were in stay theirs to label).
    assert bob.request("POST", f"/rooms/{room_id}/leave", json={}).status_code == 200
    bob.ok("PUT", tags_path(bob, room_id, "u.old"), json={})
    assert bob.ok("GET", tags_path(bob, room_id)) == {"tags": {"u.old": {}}}
    # No token: 401.
    r = stranger.session.get(
        server.url(f"/_matrix/client/v3{tags_path(alice, room_id)}"), headers={"Authorization": ""}
    )
    assert r.status_code == 401, r.text


def test_bad_tag_bodies_are_400(server: ServerProcess) -> None:
    alice, _bob, room_id = joined_pair(server)
    for body in ({"order": 2}, {"order": -0.1}, {"order": "0.5"}, {"order": True}):
        r = alice.request("PUT", tags_path(alice, room_id, "m.favourite"), json=body)
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", (body, r.text)
    r = alice.request("PUT", tags_path(alice, room_id, "m.favourite"), data=b"[1]")
    assert r.status_code == 400 and r.json()["errcode"] in ("M_BAD_JSON", "M_NOT_JSON"), r.text
    r = alice.request("PUT", tags_path(alice, room_id, "x" * 256), json={})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    assert alice.ok("GET", tags_path(alice, room_id)) == {"tags": {}}


async def tags_reach_sync(server: ServerProcess, alice: Client, room_id: str) -> None:
    client = AsyncClient(server.base_url, user=alice.user_id)
    login = await client.login(PASSWORD, device_name="nio tags")
    assert isinstance(login, LoginResponse), login
    try:
        first = await client.sync(timeout=0)
        assert isinstance(first, SyncResponse), first
        # The room has no new events: the tag alone must bring it into the incremental sync.
        alice.ok("PUT", tags_path(alice, room_id, "m.favourite"), json={"order": 0.5})

        def tagged(response: SyncResponse) -> dict | None:
            room = response.rooms.join.get(room_id)
            for ev in room.account_data if room is not None else []:
                if isinstance(ev, TagEvent):
                    return ev.tags
            return None

        assert await sync_until(client, tagged, "m.tag in /sync") == {"m.favourite": {"order": 0.5}}
        alice.ok("DELETE", tags_path(alice, room_id, "m.favourite"))
        assert await sync_until(client, lambda r: tagged(r) == {} or None, "the emptied m.tag") is True
    finally:
        await close_all(client)


def test_tags_reach_a_real_clients_sync(server: ServerProcess) -> None:
    alice = Client(server, server.register(f"tagger{secrets.token_hex(4)}", PASSWORD))
    room_id = alice.create_room(name="quiet room")
    run(tags_reach_sync(server, alice, room_id))
