"""Spaces (`GET /v1/rooms/{roomId}/hierarchy`), room previews (`GET /v1/room_summary/...`) and
the `room_types` filter of `POST /publicRooms`, against a real server. The hierarchy is read
through matrix-nio's `space_get_hierarchy`; the rest with plain HTTP (nio has no call for them)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import requests
from conftest import ServerProcess
from nio import AsyncClient, LoginResponse, SpaceGetHierarchyError, SpaceGetHierarchyResponse
from test_room_authz import Client, new_client
from test_rooms_nio import PASSWORD, close_all, run

V1 = "/_matrix/client/v1"


def v1(client: Client, path: str, **params: Any) -> requests.Response:
    return client.session.get(client.server.url(V1 + path), params=params, timeout=20)


def add_child(owner: Client, space: str, child: str, **content: Any) -> None:
    content.setdefault("via", [owner.server.server_name])
    r = owner.state(space, "m.space.child", content, child)
    assert r.status_code == 200, r.text


def make_tree(server: ServerProcess) -> tuple[Client, dict[str, str]]:
    """space -> (public "a" [suggested, order "1"], private "b", subspace -> world-readable "c");
    plus a child event without via (ignored)."""
    owner = new_client(server, "owner")
    rooms = {
        "space": owner.create_room(name="space", visibility="public", creation_content={"type": "m.space"}),
        "a": owner.create_room(name="a", preset="public_chat"),
        "b": owner.create_room(name="b"),
        "sub": owner.create_room(name="sub", preset="public_chat", creation_content={"type": "m.space"}),
        "c": owner.create_room(
            name="c",
            initial_state=[
                {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
            ],
        ),
        "novia": owner.create_room(name="novia", preset="public_chat"),
    }
    add_child(owner, rooms["space"], rooms["b"])
    add_child(owner, rooms["space"], rooms["a"], suggested=True, order="1")
    add_child(owner, rooms["space"], rooms["sub"], order="2")
    add_child(owner, rooms["sub"], rooms["c"])
    r = owner.state(rooms["space"], "m.space.child", {"via": []}, rooms["novia"])
    assert r.status_code == 200
    return owner, rooms


async def nio_hierarchy(server: ServerProcess, local: str, space: str, **kwargs: Any) -> Any:
    client = AsyncClient(server.base_url, user=local)
    login = await client.login(PASSWORD, device_name="nio spaces")
    assert isinstance(login, LoginResponse), login
    try:
        return await client.space_get_hierarchy(space, **kwargs)
    finally:
        await close_all(client)


def names(response: dict[str, Any] | SpaceGetHierarchyResponse) -> list[str]:
    rooms = response.rooms if isinstance(response, SpaceGetHierarchyResponse) else response["rooms"]
    return [r.get("name") for r in rooms]


def test_hierarchy_through_nio(any_server: ServerProcess) -> None:
    owner, rooms = make_tree(any_server)
    local = f"viewer{secrets.token_hex(4)}"
    Client(any_server, any_server.register(local, PASSWORD))
    response = run(nio_hierarchy(any_server, local, rooms["space"]))
    assert isinstance(response, SpaceGetHierarchyResponse), response
    # Depth first, children by order then the rest; the private room "b" is hidden from a
    # non-member, the world-readable "c" is shown, the child without `via` is ignored.
    assert names(response) == ["space", "a", "sub", "c"]
    space = response.rooms[0]
    assert space["room_type"] == "m.space" and space["join_rule"] == "public"
    child_ids = {e["state_key"] for e in space["children_state"]}
    assert child_ids == {rooms["a"], rooms["b"], rooms["sub"]}
    assert all(e["type"] == "m.space.child" and "origin_server_ts" in e for e in space["children_state"])
    assert response.rooms[3]["world_readable"] is True
    # The owner, a member of "b", sees it too.
    r = v1(owner, f"/rooms/{rooms['space']}/hierarchy")
    assert names(r.json()) == ["space", "a", "sub", "c", "b"]
    # suggested_only and max_depth.
    suggested = run(nio_hierarchy(any_server, local, rooms["space"], suggested_only=True))
    assert names(suggested) == ["space", "a"]
    shallow = run(nio_hierarchy(any_server, local, rooms["space"], max_depth=1))
    assert names(shallow) == ["space", "a", "sub"]
    # nio drops a max_depth of 0 (falsy): asked with plain HTTP.
    assert names(v1(owner, f"/rooms/{rooms['space']}/hierarchy", max_depth=0).json()) == ["space"]


def test_hierarchy_paging(server: ServerProcess) -> None:
    owner, rooms = make_tree(server)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if token:
            params["from"] = token
        body = v1(owner, f"/rooms/{rooms['space']}/hierarchy", **params).json()
        seen += names(body)
        pages += 1
        token = body.get("next_batch")
        if not token:
            break
    assert seen == ["space", "a", "sub", "c", "b"] and pages == 3
    # A token belongs to its parameters: changing max_depth or suggested_only is refused.
    first = v1(owner, f"/rooms/{rooms['space']}/hierarchy", limit=1).json()
    for changed in ({"max_depth": 1}, {"suggested_only": "true"}):
        r = v1(owner, f"/rooms/{rooms['space']}/hierarchy", **{"from": first["next_batch"], **changed})
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    for bad in (
        {"limit": 0},
        {"limit": "x"},
        {"max_depth": -1},
        {"from": "garbage"},
        {"suggested_only": "yes"},
    ):
        r = v1(owner, f"/rooms/{rooms['space']}/hierarchy", **bad)
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", (bad, r.text)


def test_hierarchy_of_a_private_space(server: ServerProcess) -> None:
    owner = new_client(server, "owner")
    space = owner.create_room(name="secret space", creation_content={"type": "m.space"})
    inner = owner.create_room(name="inner")
    add_child(owner, space, inner)
    # A non-member and a former member may not look inside; a banned user neither.
    stranger = new_client(server, "stranger")
    left = new_client(server, "left")
    banned = new_client(server, "banned")
    for user in (left, banned):
        assert owner.member("invite", space, user.user_id).status_code == 200
        assert user.join(space).status_code == 200
    assert left.request("POST", f"/rooms/{space}/leave", json={}).status_code == 200
    assert owner.member("ban", space, banned.user_id).status_code == 200
    for user in (stranger, left, banned):
        r = v1(user, f"/rooms/{space}/hierarchy")
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    r = v1(stranger, f"/rooms/!unknown:{server.server_name}/hierarchy")
    assert r.status_code == 403, r.text
    # An invited user may look (and sees only what they may: not the invite-only inner room).
    invited = new_client(server, "invited")
    assert owner.member("invite", space, invited.user_id).status_code == 200
    assert names(v1(invited, f"/rooms/{space}/hierarchy").json()) == ["secret space"]
    # A restricted room open to the space's members shows to members of the space.
    restricted = owner.create_room(
        name="for members",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}],
                },
            }
        ],
    )
    add_child(owner, space, restricted)
    member = new_client(server, "member")
    assert owner.member("invite", space, member.user_id).status_code == 200
    assert member.join(space).status_code == 200
    assert names(v1(member, f"/rooms/{space}/hierarchy").json()) == ["secret space", "for members"]
    assert names(v1(invited, f"/rooms/{space}/hierarchy").json()) == ["secret space"]
    r = requests.get(server.url(f"{V1}/rooms/{space}/hierarchy"), timeout=10)
    assert r.status_code == 401, r.text


def test_nio_hierarchy_refused(server: ServerProcess) -> None:
    owner = new_client(server, "owner")
    space = owner.create_room(name="closed", creation_content={"type": "m.space"})
    local = f"outsider{secrets.token_hex(4)}"
    server.register(local, PASSWORD)
    response = run(nio_hierarchy(server, local, space))
    assert isinstance(response, SpaceGetHierarchyError) and response.status_code == "M_FORBIDDEN", response


# Room summary ----------------------------------------------------------------------------------


def test_room_summary(any_server: ServerProcess) -> None:
    owner = new_client(any_server, "owner")
    alias_name = f"sum{secrets.token_hex(4)}"
    public = owner.create_room(
        name="open", topic="all welcome", preset="public_chat", room_alias_name=alias_name
    )
    stranger = new_client(any_server, "stranger")
    body = v1(stranger, f"/room_summary/{public}").json()
    assert body["room_id"] == public and body["name"] == "open" and body["topic"] == "all welcome"
    assert body["join_rule"] == "public" and body["num_joined_members"] == 1
    assert body["membership"] == "leave" and body["room_version"] == "10"
    assert body["canonical_alias"] == f"#{alias_name}:{any_server.server_name}"
    # By alias, and without a token (a public room may be previewed by anyone).
    alias = quote(f"#{alias_name}:{any_server.server_name}")
    assert v1(stranger, f"/room_summary/{alias}").json()["room_id"] == public
    anonymous = requests.get(any_server.url(f"{V1}/room_summary/{public}"), timeout=10)
    assert anonymous.status_code == 200 and "membership" not in anonymous.json()
    assert v1(owner, f"/room_summary/{public}").json()["membership"] == "join"


def test_room_summary_of_private_and_knock_rooms(server: ServerProcess) -> None:
    owner = new_client(server, "owner")
    private = owner.create_room(name="private")
    knock = owner.create_room(
        name="knock", initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
    )
    stranger, left, banned, invited = (
        new_client(server, n) for n in ("stranger", "left", "banned", "invited")
    )
    for user in (left, banned):
        assert owner.member("invite", private, user.user_id).status_code == 200
        assert user.join(private).status_code == 200
    assert left.request("POST", f"/rooms/{private}/leave", json={}).status_code == 200
    assert owner.member("ban", private, banned.user_id).status_code == 200
    assert owner.member("invite", private, invited.user_id).status_code == 200
    # A private room: 404 for a non-member, a former member, a banned user and without a token.
    for user in (stranger, left, banned):
        r = v1(user, f"/room_summary/{private}")
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    assert requests.get(server.url(f"{V1}/room_summary/{private}"), timeout=10).status_code == 404
    # The invitee may see what they are invited to.
    body = v1(invited, f"/room_summary/{private}").json()
    assert body["name"] == "private" and body["membership"] == "invite"
    # A knockable room previews to anyone, so they can decide to knock.
    body = v1(stranger, f"/room_summary/{knock}").json()
    assert body["join_rule"] == "knock" and body["membership"] == "leave"
    # Bad input and unknown rooms.
    assert v1(stranger, "/room_summary/nonsense").json()["errcode"] == "M_INVALID_PARAM"
    r = v1(stranger, f"/room_summary/{quote('#missing:' + server.server_name)}")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"


# publicRooms room_types -------------------------------------------------------------------------


def test_public_rooms_room_types_filter(server: ServerProcess) -> None:
    owner = new_client(server, "owner")
    tag = secrets.token_hex(4)
    space = owner.create_room(name=f"space {tag}", visibility="public", creation_content={"type": "m.space"})
    room = owner.create_room(name=f"room {tag}", visibility="public")

    def listed(room_types: Any = "absent") -> set[str]:
        search: dict[str, Any] = {"generic_search_term": tag}
        if room_types != "absent":
            search["room_types"] = room_types
        chunk = owner.ok("POST", "/publicRooms", json={"filter": search})["chunk"]
        return {entry["room_id"] for entry in chunk}

    assert listed() == {space, room}
    assert listed(["m.space"]) == {space}
    assert listed([None]) == {room}  # null: rooms without a type
    assert listed([None, "m.space"]) == {space, room}
    assert listed([]) == set()
    chunk = owner.ok(
        "POST", "/publicRooms", json={"filter": {"generic_search_term": tag, "room_types": ["m.space"]}}
    )
    assert chunk["chunk"][0]["room_type"] == "m.space"
    for bad in ("m.space", [1], {"a": 1}):
        r = owner.request("POST", "/publicRooms", json={"filter": {"room_types": bad}})
        assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", (bad, r.text)
