"""Jump to date (`GET /v1/rooms/{roomId}/timestamp_to_event`) against a real server, on both
engines, with plain HTTP (matrix-nio has no call for it): the nearest event each way, history
visibility (a later joiner, a former member, a banned user, a non-member) and bad input."""

from __future__ import annotations

from typing import Any

import requests
from conftest import ServerProcess
from test_room_authz import Client, joined_pair, new_client

V1 = "/_matrix/client/v1"


def jump(client: Client, room_id: str, **params: Any) -> requests.Response:
    return client.session.get(
        client.server.url(f"{V1}/rooms/{room_id}/timestamp_to_event"), params=params, timeout=20
    )


def event(client: Client, room_id: str, event_id: str) -> dict[str, Any]:
    return dict(client.ok("GET", f"/rooms/{room_id}/event/{event_id}"))


def test_nearest_event_each_way(any_server: ServerProcess) -> None:
    alice, _bob, room_id = joined_pair(any_server)
    ids = [alice.send_ok(room_id, f"m{i}") for i in range(3)]
    events = [event(alice, room_id, e) for e in ids]
    last = events[-1]
    # Backwards from far in the future: the newest event; forwards from 0: the room's first.
    body = jump(alice, room_id, ts=last["origin_server_ts"] + 10**9, dir="b").json()
    assert body == {"event_id": last["event_id"], "origin_server_ts": last["origin_server_ts"]}
    first = jump(alice, room_id, ts=0, dir="f").json()
    assert event(alice, room_id, first["event_id"])["type"] == "m.room.create"
    # At an event's own timestamp, forwards gives an event at or after it, backwards one at or before.
    ts = events[1]["origin_server_ts"]
    assert jump(alice, room_id, ts=ts, dir="f").json()["origin_server_ts"] >= ts
    assert jump(alice, room_id, ts=ts, dir="b").json()["origin_server_ts"] <= ts
    # Nothing after the newest event.
    r = jump(alice, room_id, ts=last["origin_server_ts"] + 10**9, dir="f")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text


def test_history_visibility_is_respected(server: ServerProcess) -> None:
    owner = new_client(server, "owner")
    room_id = owner.create_room(
        preset="public_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    )
    before = owner.send_ok(room_id, "before anyone joined")
    late, left, banned = (new_client(server, n) for n in ("late", "left", "banned"))
    for user in (late, left, banned):
        assert user.join(room_id).status_code == 200
    # A member who joined later never lands on what they may not see: searching from the
    # hidden message's own timestamp finds a visible event on either side of it instead.
    before_ts = event(owner, room_id, before)["origin_server_ts"]
    for direction in ("f", "b"):
        found = jump(late, room_id, ts=before_ts, dir=direction).json()["event_id"]
        assert found != before
        event(late, room_id, found)  # visible to them (else 404)
    r = late.request("GET", f"/rooms/{room_id}/event/{before}")
    assert r.status_code == 404  # the message is indeed hidden from them
    # Former and banned members: backwards from the future lands on their own removal, not later.
    assert left.request("POST", f"/rooms/{room_id}/leave", json={}).status_code == 200
    assert owner.member("ban", room_id, banned.user_id).status_code == 200
    owner.send_ok(room_id, "after they went")
    future = 10**14  # int_param takes up to 15 digits
    for user in (left, banned):
        found = jump(user, room_id, ts=future, dir="b").json()["event_id"]
        removal = event(owner, room_id, found)
        assert removal["type"] == "m.room.member" and removal["state_key"] == user.user_id, removal
        assert jump(user, room_id, ts=future, dir="f").status_code == 404
    # Someone never in the room: 403.
    stranger = new_client(server, "stranger")
    r = jump(stranger, room_id, ts=0, dir="f")
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    r = requests.get(
        server.url(f"{V1}/rooms/{room_id}/timestamp_to_event"), params={"ts": 0, "dir": "f"}, timeout=10
    )
    assert r.status_code == 401, r.text


def test_bad_input(server: ServerProcess) -> None:
    alice, _bob, room_id = joined_pair(server)
    for params, errcode in (
        ({"dir": "f"}, "M_MISSING_PARAM"),
        ({"ts": 0}, "M_MISSING_PARAM"),
        ({"ts": "yesterday", "dir": "f"}, "M_INVALID_PARAM"),
        ({"ts": 0, "dir": "sideways"}, "M_INVALID_PARAM"),
    ):
        r = jump(alice, room_id, **params)
        assert r.status_code == 400 and r.json()["errcode"] == errcode, (params, r.text)
