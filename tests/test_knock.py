"""Knocking (`POST /knock/{roomIdOrAlias}`, join rules `knock` and `knock_restricted`) against
a real server: matrix-nio knocks; the knock shows in the moderators' timeline and in the
knocker's `rooms.knock`; an invite accepts it, a kick rejects it, a leave withdraws it."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from conftest import ServerProcess
from nio import AsyncClient, LoginResponse, RoomKnockError, RoomKnockResponse
from test_room_authz import Client, assert_forbidden, new_client
from test_rooms_nio import PASSWORD, close_all, run


def knock_room(server: ServerProcess, rule: str = "knock") -> tuple[Client, str]:
    mod = new_client(server, "mod")
    room_id = mod.create_room(
        name="knock knock", initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": rule}}]
    )
    return mod, room_id


def member_events(sync: dict[str, Any], room_id: str, user_id: str) -> list[str]:
    room = sync["rooms"]["join"].get(room_id, {})
    return [
        e["content"]["membership"]
        for e in room.get("timeline", {}).get("events", [])
        if e["type"] == "m.room.member" and e["state_key"] == user_id
    ]


async def nio_knock(server: ServerProcess, local: str, room_id: str) -> Any:
    client = AsyncClient(server.base_url, user=local)
    login = await client.login(PASSWORD, device_name="nio knock")
    assert isinstance(login, LoginResponse), login
    try:
        return await client.room_knock(room_id, reason="let me in")
    finally:
        await close_all(client)


def test_knock_accepted_by_invite(any_server: ServerProcess) -> None:
    mod, room_id = knock_room(any_server)
    local = f"knocker{secrets.token_hex(4)}"
    knocker = Client(any_server, any_server.register(local, PASSWORD))
    mod_since = mod.sync()["next_batch"]
    knocker_since = knocker.sync()["next_batch"]

    response = run(nio_knock(any_server, local, room_id))
    assert isinstance(response, RoomKnockResponse), response
    assert response.room_id == room_id

    # The moderator sees the knock (with its reason) in the room's timeline.
    mod_sync = mod.sync(mod_since)
    assert member_events(mod_sync, room_id, knocker.user_id) == ["knock"]
    knock_event = next(
        e
        for e in mod_sync["rooms"]["join"][room_id]["timeline"]["events"]
        if e["state_key"] == knocker.user_id
    )
    assert knock_event["content"]["reason"] == "let me in"
    # The knocker sees the room under rooms.knock with its stripped state and their knock.
    knocker_sync = knocker.sync(knocker_since)
    knock_state = knocker_sync["rooms"]["knock"][room_id]["knock_state"]["events"]
    types = {(e["type"], e["state_key"]) for e in knock_state}
    assert ("m.room.name", "") in types and ("m.room.join_rules", "") in types
    own = [e for e in knock_state if e["type"] == "m.room.member"]
    assert [(e["state_key"], e["content"]["membership"]) for e in own] == [(knocker.user_id, "knock")]
    assert room_id not in knocker_sync["rooms"]["join"]
    # Knocking again changes nothing.
    assert knocker.ok("POST", f"/knock/{room_id}", json={}) == {"room_id": room_id}
    assert member_events(mod.sync(mod_sync["next_batch"]), room_id, knocker.user_id) == []

    # Accepting: an invite, which the knocker finds in rooms.invite, then joins.
    assert mod.member("invite", room_id, knocker.user_id).status_code == 200
    invited = knocker.sync(knocker_sync["next_batch"])
    assert room_id in invited["rooms"]["invite"]
    assert knocker.join(room_id).status_code == 200
    assert knocker.send(room_id).status_code == 200


def test_knock_rejected_by_kick_and_withdrawn_by_leave(server: ServerProcess) -> None:
    mod, room_id = knock_room(server)
    knocker = new_client(server, "knocker")
    since = knocker.sync()["next_batch"]
    knocker.ok("POST", f"/knock/{room_id}", json={"reason": "please"})
    since = knocker.sync(since)["next_batch"]
    # Rejecting: the moderator kicks the knock; the knocker sees the room leave, with the kick.
    assert mod.member("kick", room_id, knocker.user_id).status_code == 200
    left = knocker.sync(since)
    timeline = left["rooms"]["leave"][room_id]["timeline"]["events"]
    assert [(e["sender"], e["content"]["membership"]) for e in timeline if e["type"] == "m.room.member"] == [
        (mod.user_id, "leave")
    ]
    # A rejected knocker may knock again, and withdraw it by leaving.
    knocker.ok("POST", f"/knock/{room_id}", json={})
    knocker.ok("POST", f"/rooms/{room_id}/leave", json={})
    assert mod.ok("GET", f"/rooms/{room_id}/state/m.room.member/{knocker.user_id}")["membership"] == "leave"
    # Knocking did not let them in.
    assert_forbidden(knocker.send(room_id), "a knocker sending")


def test_who_may_not_knock(server: ServerProcess) -> None:
    mod, room_id = knock_room(server)
    # A room that takes no knocks (invite-only, or public: just join).
    invite_only = mod.create_room()
    stranger = new_client(server, "stranger")
    assert_forbidden(stranger.request("POST", f"/knock/{invite_only}", json={}), "knock on invite-only")
    # Banned, invited and joined users cannot knock.
    banned = new_client(server, "banned")
    assert mod.member("ban", room_id, banned.user_id).status_code == 200
    assert_forbidden(banned.request("POST", f"/knock/{room_id}", json={}), "a banned user knocking")
    invited = new_client(server, "invited")
    assert mod.member("invite", room_id, invited.user_id).status_code == 200
    assert_forbidden(invited.request("POST", f"/knock/{room_id}", json={}), "an invited user knocking")
    assert_forbidden(mod.request("POST", f"/knock/{room_id}", json={}), "a member knocking")
    # Bad input and unknown rooms.
    r = stranger.request("POST", f"/knock/!nope:{server.server_name}", json={})
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    r = stranger.request("POST", "/knock/not-a-room", json={})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    r = stranger.request("POST", f"/knock/{room_id}", json={"reason": 5})
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", r.text
    # A member without the invite level cannot accept a knock.
    knocker = new_client(server, "knocker")
    knocker.ok("POST", f"/knock/{room_id}", json={})
    member = new_client(server, "member")
    assert mod.member("invite", room_id, member.user_id).status_code == 200
    assert member.join(room_id).status_code == 200
    mod.ok(
        "PUT",
        f"/rooms/{room_id}/state/m.room.power_levels/",
        json={**mod.ok("GET", f"/rooms/{room_id}/state/m.room.power_levels/"), "invite": 50},
    )
    assert_forbidden(member.member("invite", room_id, knocker.user_id), "a plain member accepting a knock")


def test_knock_by_alias_and_knock_restricted(server: ServerProcess) -> None:
    mod = new_client(server, "mod")
    space = mod.create_room(name="space", creation_content={"type": "m.space"})
    alias_name = f"kr{secrets.token_hex(4)}"
    room_id = mod.create_room(
        room_alias_name=alias_name,
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "knock_restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}],
                },
            }
        ],
    )
    # Not in the space: knock (here by alias), not join.
    outsider = new_client(server, "outsider")
    assert_forbidden(outsider.join(room_id), "an outsider joining a knock_restricted room")
    alias = f"#{alias_name}:{server.server_name}"
    assert outsider.ok("POST", f"/knock/{quote(alias)}", json={}) == {"room_id": room_id}
    # A member of the space joins directly: the server vouches (join_authorised_via_users_server).
    insider = new_client(server, "insider")
    assert mod.member("invite", space, insider.user_id).status_code == 200
    assert insider.join(space).status_code == 200
    assert insider.join(room_id).status_code == 200
    joined = mod.ok("GET", f"/rooms/{room_id}/state/m.room.member/{insider.user_id}")
    assert joined["membership"] == "join"
    assert joined["join_authorised_via_users_server"] == mod.user_id


def test_nio_knock_refused(server: ServerProcess) -> None:
    mod = new_client(server, "mod")
    room_id = mod.create_room()
    local = f"knocker{secrets.token_hex(4)}"
    server.register(local, PASSWORD)
    response = run(nio_knock(server, local, room_id))
    assert isinstance(response, RoomKnockError) and response.status_code == "M_FORBIDDEN", response
