"""POST /user_directory/search against a real server on both engines: who is found (sharing
a room, in a public or world-readable room, never a stranger in a private room), the
ranking by name match, `limit`/`limited`, and the index following profile changes,
memberships, join rules and deactivation. matrix-nio has no directory call: plain HTTP."""

from __future__ import annotations

import secrets
from typing import Any

from conftest import ServerProcess
from test_history_visibility import CS, Client


def named(server: ServerProcess, prefix: str, displayname: str | None) -> Client:
    client = Client(server, prefix)
    if displayname is not None:
        client.ok("PUT", f"/profile/{client.user_id}/displayname", json={"displayname": displayname})
    return client


def find(client: Client, term: str, **extra: Any) -> dict[str, Any]:
    return dict(client.ok("POST", "/user_directory/search", json={"search_term": term, **extra}))


def ids(result: dict[str, Any]) -> list[str]:
    return [r["user_id"] for r in result["results"]]


def test_found_if_sharing_a_room_or_in_a_public_one(any_server: ServerProcess) -> None:
    tag = secrets.token_hex(3)
    me = named(any_server, "me", None)
    friend = named(any_server, "friend", f"Quinn {tag} Friend")
    stranger = named(any_server, "stranger", f"Quinn {tag} Stranger")
    public_member = named(any_server, "pub", f"Quinn {tag} Public")

    # A stranger in a private room of their own, and nobody shares a room with me yet.
    stranger.create_room("shared", preset="private_chat")
    assert ids(find(me, f"quinn {tag}")) == []

    private = me.create_room("shared", preset="private_chat")
    me.member("invite", private, friend.user_id)
    friend.join(private)
    public = public_member.create_room("shared", preset="public_chat")
    found = find(me, f"Quinn {tag}")
    assert set(ids(found)) == {friend.user_id, public_member.user_id}
    entry = next(r for r in found["results"] if r["user_id"] == friend.user_id)
    assert entry["display_name"] == f"Quinn {tag} Friend"

    # The public room turns invite-only: its member is no longer found by strangers.
    public_member.ok("PUT", f"/rooms/{public}/state/m.room.join_rules/", json={"join_rule": "invite"})
    assert ids(find(me, f"quinn {tag}")) == [friend.user_id]
    # World-readable history makes a room's members findable too (the spec's minimum).
    public_member.set_visibility(public, "world_readable")
    assert set(ids(find(me, f"quinn {tag}"))) == {friend.user_id, public_member.user_id}

    # A member who leaves stops sharing the room.
    friend.leave(private)
    assert ids(find(me, f"quinn {tag}")) == [public_member.user_id]
    assert stranger.user_id not in ids(find(me, f"quinn {tag} stranger"))


def test_ranked_by_name_match_with_limit(any_server: ServerProcess) -> None:
    tag = secrets.token_hex(3)
    me = named(any_server, "me", None)
    names = {
        "word": f"Ann {tag}zed",  # a later word starts with the query
        "prefix": f"{tag}zed Smith",  # the name starts with it
        "exact": f"{tag}zed",  # the name is the query
        "accent": f"Zoë {tag}",  # found without the accent, any case
    }
    users = {k: named(any_server, k, v) for k, v in names.items()}
    room = me.create_room("shared", preset="public_chat")
    for user in users.values():
        user.join(room)

    found = find(me, f"{tag}ZED")
    assert ids(found) == [users["exact"].user_id, users["prefix"].user_id, users["word"].user_id]
    assert found["limited"] is False
    limited = find(me, f"{tag}zed", limit=2)
    assert ids(limited) == [users["exact"].user_id, users["prefix"].user_id] and limited["limited"] is True
    assert ids(find(me, f"zoe {tag}")) == [users["accent"].user_id]
    # The user id's localpart finds its user too.
    localpart = users["word"].user_id[1:].split(":")[0]
    assert ids(find(me, localpart)) == [users["word"].user_id]

    # A new display name is searchable at once, the old one no longer.
    users["word"].ok(
        "PUT", f"/profile/{users['word'].user_id}/displayname", json={"displayname": f"Renamed {tag}q"}
    )
    assert users["word"].user_id not in ids(find(me, f"{tag}zed"))
    assert ids(find(me, f"renamed {tag}q")) == [users["word"].user_id]
    assert find(me, f"renamed {tag}q")["results"][0]["display_name"] == f"Renamed {tag}q"


def test_deactivated_users_are_not_found(any_server: ServerProcess) -> None:
    tag = secrets.token_hex(3)
    me = named(any_server, "me", None)
    gone = named(any_server, "gone", f"Leaving {tag}")
    room = me.create_room("shared", preset="public_chat")
    gone.join(room)
    assert ids(find(me, f"leaving {tag}")) == [gone.user_id]
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": gone.user_id}}
    auth["password"] = "correct horse battery"
    gone.ok("POST", "/account/deactivate", json={"auth": auth})
    assert ids(find(me, f"leaving {tag}")) == []


def test_search_all_users_switch(start_server: Any) -> None:
    server = start_server({"user_directory": {"search_all_users": True}})
    tag = secrets.token_hex(3)
    me = named(server, "me", None)
    loner = named(server, "loner", f"Hermit {tag}")
    assert ids(find(me, f"hermit {tag}")) == [loner.user_id]


def test_bad_directory_requests(any_server: ServerProcess) -> None:
    me = Client(any_server, "me")
    url = CS + "/user_directory/search"
    for body, code, errcode in [
        ({}, 400, "M_MISSING_PARAM"),
        ({"search_term": 3}, 400, "M_BAD_JSON"),
        ({"search_term": "a", "limit": "5"}, 400, "M_BAD_JSON"),
        ({"search_term": "a", "limit": -1}, 400, "M_BAD_JSON"),
        ({"search_term": "a" * 300}, 400, "M_INVALID_PARAM"),
    ]:
        r = me.request("POST", url, json=body)
        assert (r.status_code, r.json()["errcode"]) == (code, errcode), body
    assert find(me, "!!!") == {"results": [], "limited": False}
    r = me.request("POST", url, json={"search_term": "a"}, headers={"Authorization": ""})
    assert r.status_code == 401
