"""Server ACLs enforced on the room-scoped federation routes: once a room's
`m.room.server_acl` bans a server (here by a deny in upper case, with the port ignored),
its requests for the room's events are refused with 403 and the PDUs it sends are not
accepted, while before the ACL both worked."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests
from federation_harness import FederatedServer, TestCA
from test_federation_events import FakeRemote, Room, bodies, fed_get, send_txn


@pytest.fixture(scope="module")
def remote(ca: TestCA) -> Iterator[FakeRemote]:
    r = FakeRemote(ca)
    yield r
    r.stop()


def test_a_banned_server_is_refused_on_the_rooms_routes(ours: FederatedServer, remote: FakeRemote) -> None:
    room = Room(ours, "alice_acl")
    user, join_id, join = room.join(remote, "x")
    assert send_txn(ours, remote, "acl-join", [join]).json() == {"pdus": {join_id: {}}}
    m1_id, m1 = room.message(remote, user, "allowed", [join_id])
    assert send_txn(ours, remote, "acl-m1", [m1]).json() == {"pdus": {m1_id: {}}}
    state_path = f"/_matrix/federation/v1/state_ids/{quote(room.room_id)}?event_id={quote(m1_id)}"
    assert fed_get(ours, remote, state_path).status_code == 200

    # The room's admin bans the remote's host name: case and port do not matter.
    r = requests.put(
        ours.process.url(f"/_matrix/client/v3/rooms/{quote(room.room_id)}/state/m.room.server_acl/"),
        json={"allow": ["*"], "deny": ["LOCALHOST"], "allow_ip_literals": False},
        headers=room.headers,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    acl_id = r.json()["event_id"]

    for path, method, body in [
        (state_path, "GET", None),
        (f"/_matrix/federation/v1/state/{quote(room.room_id)}?event_id={quote(m1_id)}", "GET", None),
        (f"/_matrix/federation/v1/event/{quote(m1_id)}", "GET", None),
        (f"/_matrix/federation/v1/event_auth/{quote(room.room_id)}/{quote(m1_id)}", "GET", None),
        (f"/_matrix/federation/v1/backfill/{quote(room.room_id)}?v={quote(m1_id)}&limit=3", "GET", None),
        (
            f"/_matrix/federation/v1/get_missing_events/{quote(room.room_id)}",
            "POST",
            {"earliest_events": [join_id], "latest_events": [acl_id], "limit": 10},
        ),
    ]:
        r = fed_get(ours, remote, path, method, body)
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", (path, r.text)

    # It cannot (re)join through us either.
    r = fed_get(ours, remote, f"/_matrix/federation/v1/make_join/{quote(room.room_id)}/{quote(user)}?ver=10")
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text

    # Its events are refused, one by one, and never reach the room.
    m2_id, m2 = room.message(remote, user, "banned", [acl_id])
    r = send_txn(ours, remote, "acl-m2", [m2])
    assert r.status_code == 200, r.text
    assert "error" in r.json()["pdus"][m2_id]
    assert bodies(room.timeline()) == ["allowed"]
