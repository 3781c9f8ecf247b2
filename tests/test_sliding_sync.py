"""Simplified sliding sync (MSC4186) against a real server, requests checked against the MSC's
shapes: lists sorted by recency with ranges and filters, required_state with $LAZY / $ME / *,
timeline limits, subscriptions, pos, and the extensions (long-polling on a test clock:
tests/fast/test_sliding_sync_wakeups.py). matrix-js-sdk's
SlidingSync drives it too (tests/test_js_sdk.py, sliding_sync.mjs)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import requests
from conftest import ServerProcess, restart_server_process
from js_runner import node_or_skip, run_script

CS = "/_matrix/client/v3"
SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ss(server: ServerProcess, token: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    r = requests.post(server.url(SS), json=body, params=params, headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def post(server: ServerProcess, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(server.url(path), json=body, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def put(server: ServerProcess, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.put(server.url(path), json=body, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def send(server: ServerProcess, token: str, room_id: str, body: str) -> str:
    path = f"{CS}/rooms/{room_id}/send/m.room.message/{secrets.token_hex(6)}"
    return str(put(server, token, path, {"msgtype": "m.text", "body": body})["event_id"])


def users(server: ServerProcess, n: int) -> list[dict[str, Any]]:
    tag = secrets.token_hex(4)
    return [server.register(f"ss{i}_{tag}") for i in range(n)]


ALL = {"ranges": [[0, 99]], "timeline_limit": 2, "required_state": [["m.room.create", ""]]}


def test_versions_advertise_simplified_sliding_sync(server: ServerProcess) -> None:
    body = requests.get(server.url("/_matrix/client/versions"), timeout=10).json()
    assert body["unstable_features"]["org.matrix.simplified_msc3575"] is True


def test_lists_sorted_by_recency_with_ranges_and_room_fields(any_server: ServerProcess) -> None:
    s = any_server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    rooms = []
    for i in range(3):
        room = post(s, a, f"{CS}/createRoom", {"name": f"room {i}", "preset": "public_chat"})["room_id"]
        post(s, b, f"{CS}/join/{room}", {})
        rooms.append(room)
    for i in range(3):
        send(s, a, rooms[i], f"hello {i}")
    # A new topic in room 0: a state change, which must not move the room up.
    put(s, a, f"{CS}/rooms/{rooms[0]}/state/m.room.topic/", {"topic": "quiet"})
    send(s, b, rooms[1], "latest activity")

    body = {
        "lists": {
            "all": {
                "ranges": [[0, 1]],
                "timeline_limit": 1,
                "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
            }
        }
    }
    first = ss(s, b, body)
    assert first["lists"]["all"]["count"] == 3
    # Newest activity first; the window [0, 1] holds the two most recent rooms only.
    assert set(first["rooms"]) == {rooms[1], rooms[2]}
    r1 = first["rooms"][rooms[1]]
    assert r1["initial"] is True
    assert r1["name"] == "room 1"
    assert r1["joined_count"] == 2 and r1["invited_count"] == 0
    assert [ev["content"]["body"] for ev in r1["timeline"]] == ["latest activity"]
    assert r1["limited"] is True and r1["prev_batch"]
    assert r1["bump_stamp"] > first["rooms"][rooms[2]]["bump_stamp"]
    # $LAZY: the member event of the timeline's sender, and the name.
    state = {(ev["type"], ev["state_key"]) for ev in r1["required_state"]}
    assert state == {("m.room.name", ""), ("m.room.member", bob["user_id"])}
    # Alice's message in room 2 notifies Bob: counts from his push rules.
    assert first["rooms"][rooms[2]]["notification_count"] == 1
    assert "pos" in first and first["extensions"] == {}

    # Incremental: only the room with news, not initial, its new event counted live.
    send(s, a, rooms[0], "room 0 wakes up")
    second = ss(s, b, body, pos=first["pos"])
    assert set(second["rooms"]) == {rooms[0]}
    r0 = second["rooms"][rooms[0]]
    assert r0.get("initial") is True  # scrolled into the window: new to the client
    third_body = ss(s, b, body, pos=second["pos"], timeout=0)
    assert third_body["rooms"] == {}
    send(s, a, rooms[0], "again")
    third = ss(s, b, body, pos=third_body["pos"])
    r0 = third["rooms"][rooms[0]]
    assert "initial" not in r0
    assert [ev["content"]["body"] for ev in r0["timeline"]] == ["again"]
    assert r0["num_live"] == 1 and r0["limited"] is False
    # Only what changed in required_state: Alice's member event ($LAZY, she sent it).
    assert [(ev["type"], ev["state_key"]) for ev in r0["required_state"]] == [
        ("m.room.member", alice["user_id"])
    ]


def test_required_state_wildcards_and_me(server: ServerProcess) -> None:
    s = server
    alice, bob = users(s, 2)
    a = alice["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"name": "wild", "invite": [bob["user_id"]]})["room_id"]

    def room_state(required: list[list[str]]) -> set[tuple[str, str]]:
        got = ss(s, a, {"room_subscriptions": {room: {"required_state": required, "timeline_limit": 0}}})
        return {(ev["type"], ev["state_key"]) for ev in got["rooms"][room]["required_state"]}

    everything = room_state([["*", "*"]])
    assert ("m.room.create", "") in everything and ("m.room.member", bob["user_id"]) in everything
    assert room_state([["m.room.member", "*"]]) == {
        ("m.room.member", alice["user_id"]),
        ("m.room.member", bob["user_id"]),
    }
    assert room_state([["m.room.member", "$ME"]]) == {("m.room.member", alice["user_id"])}
    assert room_state([["m.room.topic", ""]]) == set()


def test_filters_invites_dms_encryption_and_types(server: ServerProcess) -> None:
    s = server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    dm = post(
        s,
        a,
        f"{CS}/createRoom",
        {"is_direct": True, "invite": [bob["user_id"]], "preset": "trusted_private_chat"},
    )["room_id"]
    post(s, b, f"{CS}/join/{dm}", {})
    put(s, b, f"{CS}/user/{bob['user_id']}/account_data/m.direct", {alice["user_id"]: [dm]})
    plain = post(s, a, f"{CS}/createRoom", {"preset": "public_chat"})["room_id"]
    post(s, b, f"{CS}/join/{plain}", {})
    space = post(
        s, a, f"{CS}/createRoom", {"preset": "public_chat", "creation_content": {"type": "m.space"}}
    )["room_id"]
    post(s, b, f"{CS}/join/{space}", {})
    invite = post(s, a, f"{CS}/createRoom", {"name": "come in", "invite": [bob["user_id"]]})["room_id"]
    put(s, a, f"{CS}/rooms/{plain}/state/m.room.encryption/", {"algorithm": "m.megolm.v1.aes-sha2"})

    def listed(filters: dict[str, Any]) -> set[str]:
        got = ss(s, b, {"lists": {"l": {"ranges": [[0, 20]], "filters": filters}}})
        assert got["lists"]["l"]["count"] == len(got["rooms"])
        return set(got["rooms"])

    assert listed({}) == {dm, plain, space, invite}
    assert listed({"is_dm": True}) == {dm}
    assert listed({"is_invite": True}) == {invite}
    assert listed({"is_invite": False, "is_dm": False}) == {plain, space}
    encrypted = listed({"is_encrypted": True})
    assert plain in encrypted and space not in encrypted
    assert listed({"room_types": ["m.space"]}) == {space}
    assert listed({"not_room_types": ["m.space"], "is_invite": False}) == {dm, plain}
    got = ss(s, b, {"lists": {"l": {"ranges": [[0, 20]], "filters": {"is_invite": True}}}})
    entry = got["rooms"][invite]
    assert entry["initial"] is True and "timeline" not in entry
    names = [ev["content"].get("name") for ev in entry["invite_state"] if ev["type"] == "m.room.name"]
    assert names == ["come in"]


def test_unknown_pos_and_bad_requests(server: ServerProcess) -> None:
    s = server
    (alice,) = users(s, 1)
    a = alice["access_token"]
    r = requests.post(s.url(SS), json={}, params={"pos": "123456789"}, headers=auth(a), timeout=10)
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNKNOWN_POS"
    for bad, code in (
        ({"lists": {"l": {"ranges": [[5, 1]]}}}, "M_INVALID_PARAM"),
        ({"lists": {"l": {"ranges": "0-10"}}}, "M_BAD_JSON"),
        ({"lists": {"l": {"ranges": [[0, 1]], "required_state": [["m.room.name"]]}}}, "M_BAD_JSON"),
        ({"lists": {"l": {"ranges": [[0, 1]], "timeline_limit": -1}}}, "M_INVALID_PARAM"),
        ({"lists": {"l": {"filters": {"is_dm": "yes"}}}}, "M_BAD_JSON"),
        ({"room_subscriptions": {"not-a-room": {}}}, "M_INVALID_PARAM"),
        ({"extensions": {"to_device": {"enabled": True, "since": "abc"}}}, "M_INVALID_PARAM"),
    ):
        r = requests.post(s.url(SS), json=bad, headers=auth(a), timeout=10)
        assert r.status_code == 400 and r.json()["errcode"] == code, (bad, r.text)
    r = requests.post(s.url(SS), json={})
    assert r.status_code == 401


def test_subscriptions_of_non_members_and_left_members(server: ServerProcess) -> None:
    s = server
    alice, bob, eve = users(s, 3)
    a, b, e = alice["access_token"], bob["access_token"], eve["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"preset": "public_chat", "name": "secretive"})["room_id"]
    put(s, a, f"{CS}/rooms/{room}/state/m.room.history_visibility/", {"history_visibility": "joined"})
    post(s, b, f"{CS}/join/{room}", {})
    send(s, a, room, "while bob is here")
    post(s, b, f"{CS}/rooms/{room}/leave", {})
    send(s, a, room, "after bob left")
    put(s, a, f"{CS}/rooms/{room}/state/m.room.name/", {"name": "renamed later"})

    sub = {"room_subscriptions": {room: {"timeline_limit": 10, "required_state": [["*", "*"]]}}}
    # Eve was never in the room: nothing about it.
    assert ss(s, e, sub)["rooms"] == {}
    # Bob left: he sees the room as it was up to his leave, never what came after.
    seen = ss(s, b, sub)["rooms"][room]
    bodies = [ev["content"].get("body") for ev in seen["timeline"]]
    assert "while bob is here" in bodies and "after bob left" not in bodies
    assert seen["timeline"][-1]["type"] == "m.room.member"
    assert seen["timeline"][-1]["content"]["membership"] == "leave"
    assert seen["name"] != "renamed later"
    names = [ev["content"]["name"] for ev in seen["required_state"] if ev["type"] == "m.room.name"]
    assert names == ["secretive"]
    # Nor does the list show a room he left before the connection started.
    assert room not in ss(s, b, {"lists": {"all": ALL}})["rooms"]


def test_leaving_is_shown_once_to_a_connection_that_had_the_room(server: ServerProcess) -> None:
    s = server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"preset": "public_chat"})["room_id"]
    post(s, b, f"{CS}/join/{room}", {})
    body = {"lists": {"all": ALL}}
    first = ss(s, b, body)
    assert room in first["rooms"]
    r = requests.post(
        s.url(f"{CS}/rooms/{room}/kick"), json={"user_id": bob["user_id"]}, headers=auth(a), timeout=10
    )
    assert r.ok
    send(s, a, room, "after the kick")
    second = ss(s, b, body, pos=first["pos"])
    timeline = second["rooms"][room]["timeline"]
    assert timeline[-1]["content"]["membership"] == "leave"
    assert all(ev["content"].get("body") != "after the kick" for ev in timeline)
    third = ss(s, b, body, pos=second["pos"])
    assert room not in third["rooms"] and third["lists"]["all"]["count"] == 0


def test_extensions(server: ServerProcess) -> None:
    s = server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"preset": "public_chat"})["room_id"]
    post(s, b, f"{CS}/join/{room}", {})
    event_id = send(s, a, room, "read me")
    post(s, a, f"{CS}/rooms/{room}/receipt/m.read/{event_id}", {})
    put(s, b, f"{CS}/user/{bob['user_id']}/account_data/org.example.global", {"g": 1})
    put(s, b, f"{CS}/user/{bob['user_id']}/rooms/{room}/account_data/org.example.room", {"r": 1})
    put(s, a, f"{CS}/rooms/{room}/typing/{alice['user_id']}", {"typing": True, "timeout": 30000})
    put(
        s,
        a,
        f"{CS}/sendToDevice/org.example.ping/{secrets.token_hex(4)}",
        {"messages": {bob["user_id"]: {bob["device_id"]: {"n": 1}}}},
    )
    exts = {name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")}
    body = {"lists": {"all": ALL}, "extensions": exts}
    first = ss(s, b, body)
    ext = first["extensions"]
    assert [m["content"] for m in ext["to_device"]["events"]] == [{"n": 1}]
    assert ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"] == 0
    assert ext["e2ee"]["device_unused_fallback_key_types"] == []
    assert {"type": "org.example.global", "content": {"g": 1}} in ext["account_data"]["global"]
    assert any(e["type"] == "m.push_rules" for e in ext["account_data"]["global"])
    assert ext["account_data"]["rooms"][room] == [{"type": "org.example.room", "content": {"r": 1}}]
    receipt = ext["receipts"]["rooms"][room]
    assert receipt["type"] == "m.receipt" and alice["user_id"] in receipt["content"][event_id]["m.read"]
    assert ext["typing"]["rooms"][room]["content"]["user_ids"] == [alice["user_id"]]

    # to_device: the same messages until acknowledged through `since`, then deleted.
    again = ss(s, b, body)["extensions"]["to_device"]
    assert [m["content"] for m in again["events"]] == [{"n": 1}]
    exts["to_device"] = {"enabled": True, "since": again["next_batch"]}
    acked = ss(s, b, body, pos=first["pos"])
    assert acked["extensions"]["to_device"]["events"] == []
    exts["to_device"] = {"enabled": True}
    assert ss(s, b, body)["extensions"]["to_device"]["events"] == []

    # e2ee device lists: Alice uploads a new device key, Bob shares a room: changed.
    carol = s.register(f"ss_c_{secrets.token_hex(3)}")
    post(s, carol["access_token"], f"{CS}/join/{room}", {})
    later = ss(s, b, body, pos=acked["pos"])
    assert carol["user_id"] in later["extensions"]["e2ee"]["device_lists"]["changed"]
    put(s, a, f"{CS}/rooms/{room}/typing/{alice['user_id']}", {"typing": False})
    stopped = ss(s, b, body, pos=later["pos"])
    assert stopped["extensions"]["typing"]["rooms"][room]["content"]["user_ids"] == []


def test_matrix_js_sdk_sliding_sync(server: ServerProcess) -> None:
    """matrix-js-sdk 43's SlidingSync speaks MSC4186: its sync loop runs on sliding sync alone."""
    node = node_or_skip()
    s = server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"name": "JS sliding", "preset": "public_chat"})["room_id"]
    post(s, b, f"{CS}/join/{room}", {})
    send(s, a, room, "before the client started")
    invite = post(s, a, f"{CS}/createRoom", {"name": "invite only", "invite": [bob["user_id"]]})["room_id"]
    knocked = post(
        s,
        a,
        f"{CS}/createRoom",
        {
            "name": "knock first",
            "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        },
    )["room_id"]
    post(s, b, f"{CS}/knock/{knocked}", {})
    put(s, b, f"{CS}/user/{bob['user_id']}/rooms/{room}/tags/m.favourite", {"order": 0.5})
    result = run_script(node, "sliding_sync.mjs", s.base_url, a, b, room, invite, knocked)
    assert result["name"] == "JS sliding"
    assert result["members"] == 2
    assert result["bodies_before"] == ["before the client started"]
    assert result["list_count"] == 3
    assert result["invite_membership"] == "invite"
    assert result["knock_membership"] == "knock" and result["knock_name"] == "knock first"
    assert result["favourites_count"] == 1
    assert result["bodies_after"] == ["before the client started", "live from alice"]
    assert result["typing"] is True
    assert result["to_device"] == {"hello": "bob"}


def test_knocked_rooms_are_listed_with_stripped_state(server: ServerProcess) -> None:
    s = server
    alice, bob, eve = users(s, 3)
    a, b, e = alice["access_token"], bob["access_token"], eve["access_token"]
    room = post(
        s,
        a,
        f"{CS}/createRoom",
        {
            "name": "knock here",
            "preset": "private_chat",
            "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        },
    )["room_id"]
    send(s, a, room, "members only")
    assert ss(s, b, {"lists": {"all": ALL}})["lists"]["all"]["count"] == 0
    post(s, b, f"{CS}/knock/{room}", {"reason": "let me in"})

    body = {"lists": {"all": ALL}}
    first = ss(s, b, body)
    assert first["lists"]["all"]["count"] == 1
    entry = first["rooms"][room]
    assert entry["initial"] is True
    # Stripped state only: no timeline, nothing the members said.
    assert "timeline" not in entry and "required_state" not in entry
    stripped = {ev["type"]: ev for ev in entry["invite_state"] if ev["state_key"] in ("", bob["user_id"])}
    assert stripped["m.room.name"]["content"]["name"] == "knock here"
    assert stripped["m.room.join_rules"]["content"]["join_rule"] == "knock"
    assert stripped["m.room.member"]["content"]["membership"] == "knock"
    # A knock is not an invite.
    invites = ss(s, b, {"conn_id": "f", "lists": {"l": {"ranges": [[0, 9]], "filters": {"is_invite": True}}}})
    assert invites["rooms"] == {} and invites["lists"]["l"]["count"] == 0
    not_invites = ss(
        s, b, {"conn_id": "f", "lists": {"l": {"ranges": [[0, 9]], "filters": {"is_invite": False}}}}
    )
    assert set(not_invites["rooms"]) == {room}
    # Nothing new: the knock is not sent again.
    assert ss(s, b, body, pos=first["pos"])["rooms"] == {}
    # Nor does a subscription by a stranger show it.
    assert ss(s, e, {"room_subscriptions": {room: {"timeline_limit": 5}}})["rooms"] == {}

    # Accepted: an invite, sent as new to the client.
    post(s, a, f"{CS}/rooms/{room}/invite", {"user_id": bob["user_id"]})
    invited = ss(s, b, body, pos=first["pos"])
    entry = invited["rooms"][room]
    assert entry["initial"] is True
    members = [ev for ev in entry["invite_state"] if ev["type"] == "m.room.member"]
    assert any(m["state_key"] == bob["user_id"] and m["content"]["membership"] == "invite" for m in members)


def test_spaces_tags_and_room_type_filters(any_server: ServerProcess) -> None:
    s = any_server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]

    def room(extra: dict[str, Any]) -> str:
        room_id = post(s, a, f"{CS}/createRoom", {"preset": "public_chat", **extra})["room_id"]
        post(s, b, f"{CS}/join/{room_id}", {})
        return str(room_id)

    space = room({"creation_content": {"type": "m.space"}})
    other_space = room({"creation_content": {"type": "m.space"}})
    child, grandchild, outside, favourite, low = (room({}) for _ in range(5))
    custom_type = room({"creation_content": {"type": "org.example.kind"}})
    via = {"via": [s.server_name]}
    put(s, a, f"{CS}/rooms/{space}/state/m.space.child/{child}", via)
    put(s, a, f"{CS}/rooms/{space}/state/m.space.child/{other_space}", via)
    put(s, a, f"{CS}/rooms/{other_space}/state/m.space.child/{grandchild}", via)
    # A child without `via` does not count (spec: m.space.child).
    put(s, a, f"{CS}/rooms/{space}/state/m.space.child/{outside}", {})
    # A space Bob is not in: its children are not revealed through him.
    hidden_space = post(
        s, a, f"{CS}/createRoom", {"preset": "private_chat", "creation_content": {"type": "m.space"}}
    )["room_id"]
    put(s, a, f"{CS}/rooms/{hidden_space}/state/m.space.child/{favourite}", via)
    tags = f"{CS}/user/{bob['user_id']}/rooms"
    put(s, b, f"{tags}/{favourite}/tags/m.favourite", {"order": 0.5})
    put(s, b, f"{tags}/{low}/tags/m.lowpriority", {})
    put(s, b, f"{tags}/{low}/tags/u.work", {})

    def listed(filters: dict[str, Any]) -> set[str]:
        got = ss(s, b, {"lists": {"l": {"ranges": [[0, 50]], "filters": filters}}})
        assert got["lists"]["l"]["count"] == len(got["rooms"])
        return set(got["rooms"])

    everything = {space, other_space, child, grandchild, outside, favourite, low, custom_type}
    assert listed({}) == everything
    # Direct children only; subspaces are not walked; several spaces are OR'd.
    assert listed({"spaces": [space]}) == {child, other_space}
    assert listed({"spaces": [space, other_space]}) == {child, other_space, grandchild}
    assert listed({"spaces": [hidden_space]}) == set()
    assert listed({"spaces": ["!nowhere:example.org"]}) == set()
    # Tags: any of `tags`; `not_tags` wins over `tags`.
    assert listed({"tags": ["m.favourite"]}) == {favourite}
    assert listed({"tags": ["m.favourite", "u.work"]}) == {favourite, low}
    assert listed({"tags": ["u.work"], "not_tags": ["m.lowpriority"]}) == set()
    assert listed({"not_tags": ["m.lowpriority", "m.favourite"]}) == everything - {favourite, low}
    # Room types: null stands for rooms without a type.
    assert listed({"room_types": [None]}) == everything - {space, other_space, custom_type}
    assert listed({"not_room_types": [None]}) == {space, other_space, custom_type}
    assert listed({"not_room_types": ["m.space", None]}) == {custom_type}
    assert listed({"room_types": ["m.space", "org.example.kind"], "not_room_types": ["m.space"]}) == {
        custom_type
    }
    # `room_name_like`: checked, not applied (MSC4186 dropped it; Synapse never had it).
    assert listed({"room_name_like": "zzz"}) == everything

    # A tag added later moves the room into the list on the next response.
    body = {"lists": {"fav": {"ranges": [[0, 9]], "timeline_limit": 1, "filters": {"tags": ["m.favourite"]}}}}
    first = ss(s, b, body)
    assert set(first["rooms"]) == {favourite}
    put(s, b, f"{tags}/{child}/tags/m.favourite", {"order": 0.1})
    second = ss(s, b, body, pos=first["pos"], timeout=0)
    assert second["lists"]["fav"]["count"] == 2 and set(second["rooms"]) == {child}

    for bad in ({"spaces": "!a:b"}, {"tags": [1]}, {"not_tags": {"a": 1}}, {"room_name_like": 5}):
        r = requests.post(
            s.url(SS),
            json={"lists": {"l": {"ranges": [[0, 1]], "filters": bad}}},
            headers=auth(b),
            timeout=10,
        )
        assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", (bad, r.text)


def test_extensions_cover_only_the_lists_and_rooms_they_name(server: ServerProcess) -> None:
    s = server
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    rooms = []
    for i in range(3):
        room = post(s, a, f"{CS}/createRoom", {"preset": "public_chat", "name": f"scope {i}"})["room_id"]
        post(s, b, f"{CS}/join/{room}", {})
        rooms.append(room)
    dm_room, group, subscribed = rooms
    put(s, b, f"{CS}/user/{bob['user_id']}/account_data/m.direct", {alice["user_id"]: [dm_room]})
    for room in rooms:
        event_id = send(s, a, room, "read me")
        post(s, a, f"{CS}/rooms/{room}/receipt/m.read/{event_id}", {})
        put(s, a, f"{CS}/rooms/{room}/typing/{alice['user_id']}", {"typing": True, "timeout": 30000})
        put(s, b, f"{CS}/user/{bob['user_id']}/rooms/{room}/account_data/org.example.note", {"room": room})

    lists = {
        "dms": {"ranges": [[0, 9]], "filters": {"is_dm": True}},
        "groups": {"ranges": [[0, 9]], "filters": {"is_dm": False}},
    }

    def covered(scope: dict[str, Any]) -> dict[str, set[str]]:
        exts = {name: {"enabled": True, **scope} for name in ("account_data", "receipts", "typing")}
        got = ss(s, b, {"lists": lists, "room_subscriptions": {subscribed: {}}, "extensions": exts})[
            "extensions"
        ]
        assert any(ev["type"] == "m.direct" for ev in got["account_data"]["global"])  # never scoped
        return {
            "account_data": set(got["account_data"]["rooms"]),
            "receipts": set(got["receipts"]["rooms"]),
            "typing": set(got["typing"]["rooms"]),
        }

    def same(expected: set[str]) -> dict[str, set[str]]:
        return {"account_data": expected, "receipts": expected, "typing": expected}

    # Default ["*"] and ["*"]: every room in every list and subscription.
    assert covered({}) == same({dm_room, group, subscribed})
    assert covered({"lists": ["dms"], "rooms": []}) == same({dm_room})
    # `rooms` names subscriptions; a room in a list only is not one.
    assert covered({"lists": [], "rooms": [subscribed, dm_room]}) == same({subscribed})
    assert covered({"lists": ["groups"], "rooms": []}) == same({group, subscribed})
    assert covered({"lists": [], "rooms": ["*"]}) == same({subscribed})
    assert covered({"lists": ["no such list"], "rooms": []}) == same(set())

    r = requests.post(
        s.url(SS),
        json={"extensions": {"typing": {"enabled": True, "lists": "dms"}}},
        headers=auth(b),
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"


def test_ignored_users_messages_and_invites_are_left_out(server: ServerProcess) -> None:
    s = server
    alice, bob, mallory = users(s, 3)
    a, b, m = alice["access_token"], bob["access_token"], mallory["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"preset": "public_chat"})["room_id"]
    post(s, b, f"{CS}/join/{room}", {})
    post(s, m, f"{CS}/join/{room}", {})
    put(
        s,
        b,
        f"{CS}/user/{bob['user_id']}/account_data/m.ignored_user_list",
        {"ignored_users": {mallory["user_id"]: {}}},
    )
    send(s, a, room, "from alice")
    send(s, m, room, "from mallory")
    spam = post(s, m, f"{CS}/createRoom", {"name": "spam", "invite": [bob["user_id"]]})["room_id"]
    welcome = post(s, a, f"{CS}/createRoom", {"name": "welcome", "invite": [bob["user_id"]]})["room_id"]

    body = {
        "lists": {"all": {"ranges": [[0, 20]], "timeline_limit": 10}},
        "room_subscriptions": {room: {"timeline_limit": 10}},
    }
    first = ss(s, b, body)
    bodies = [ev["content"].get("body") for ev in first["rooms"][room]["timeline"]]
    assert "from alice" in bodies and "from mallory" not in bodies
    # Mallory's member event is room state and stays.
    assert any(
        ev["type"] == "m.room.member" and ev["state_key"] == mallory["user_id"]
        for ev in first["rooms"][room]["timeline"]
    )
    assert spam not in first["rooms"] and welcome in first["rooms"]
    assert first["lists"]["all"]["count"] == 2

    send(s, m, room, "mallory again")
    send(s, a, room, "alice again")
    later = ss(s, b, body, pos=first["pos"])
    assert [ev["content"]["body"] for ev in later["rooms"][room]["timeline"]] == ["alice again"]

    # Un-ignored: Mallory's new messages and invite show again (what was hidden stays hidden).
    put(s, b, f"{CS}/user/{bob['user_id']}/account_data/m.ignored_user_list", {"ignored_users": {}})
    send(s, m, room, "mallory forgiven")
    third = ss(s, b, body, pos=later["pos"])
    assert [ev["content"]["body"] for ev in third["rooms"][room]["timeline"]] == ["mallory forgiven"]
    assert third["lists"]["all"]["count"] == 3 and spam in third["rooms"]


def test_a_pos_from_before_a_restart_is_unknown(start_server: Callable[..., ServerProcess]) -> None:
    """Connection state lives in memory: after a restart the client is told to start again
    (M_UNKNOWN_POS), and a new connection on the same device and conn_id works at once."""
    s = start_server()
    alice, bob = users(s, 2)
    a, b = alice["access_token"], bob["access_token"]
    room = post(s, a, f"{CS}/createRoom", {"preset": "public_chat", "name": "survives"})["room_id"]
    post(s, b, f"{CS}/join/{room}", {})
    send(s, a, room, "before the restart")
    body = {"conn_id": "room-list", "lists": {"all": ALL}}
    before = ss(s, b, body)
    second = ss(s, b, body, pos=before["pos"], timeout=0)

    assert s.stop() == 0
    s = restart_server_process(s)
    try:
        # The new process hands out positions too: an old pos never matches one of them.
        fresh = ss(s, b, body)
        ss(s, b, body, pos=fresh["pos"], timeout=0)
        for old in (before["pos"], second["pos"]):
            r = requests.post(
                s.url(SS), json=body, params={"pos": old, "timeout": 0}, headers=auth(b), timeout=10
            )
            assert r.status_code == 400 and r.json()["errcode"] == "M_UNKNOWN_POS", r.text
        # Starting over gives the whole room again, with what was said before the restart.
        entry = fresh["rooms"][room]
        assert entry["initial"] is True and entry["name"] == "survives"
        assert [ev["content"].get("body") for ev in entry["timeline"]][-1] == "before the restart"
        send(s, a, room, "after the restart")
        live = ss(s, b, body, pos=fresh["pos"], timeout=0)
        assert [ev["content"]["body"] for ev in live["rooms"][room]["timeline"]] == ["after the restart"]
    finally:
        s.stop()
