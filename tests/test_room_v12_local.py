"""Local rooms of version 12 against a real server: room IDs from the create event,
creators above every power level, the upgrade to v12, /capabilities. (The event-layer rules
themselves are tested in tests/fast/test_room_v12.py.)"""

from __future__ import annotations

from typing import Any

from conftest import ServerProcess
from test_room_authz import assert_forbidden, joined_pair, new_client


def state(client: Any, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
    return dict(client.ok("GET", f"/rooms/{room_id}/state/{event_type}/{state_key}"))


def test_v12_room_id_power_and_messages(any_server: ServerProcess) -> None:
    alice, bob, room = joined_pair(any_server, room_version="12", preset="public_chat", name="v12")
    # The room ID is the create event's ID with '!' for '$': no server name in it.
    assert ":" not in room
    create_events = [e for e in alice.ok("GET", f"/rooms/{room}/state") if e["type"] == "m.room.create"]
    assert create_events[0]["event_id"] == "$" + room[1:]
    assert create_events[0]["content"]["room_version"] == "12"
    # The creator holds no listed level: creators are above every level.
    pl = state(alice, room, "m.room.power_levels")
    assert alice.user_id not in pl["users"]
    # Messages both ways, a state change and a kick by the creator, seen in /sync.
    alice.send_ok(room, "from alice")
    bob.send_ok(room, "from bob")
    assert alice.state(room, "m.room.topic", {"topic": "t"}).status_code == 200
    assert_forbidden(bob.state(room, "m.room.topic", {"topic": "bob's"}), "a member below state_default")
    assert_forbidden(
        alice.state(room, "m.room.power_levels", {**pl, "users": {alice.user_id: 100}}),
        "naming a creator in the power levels",
    )
    timeline = bob.sync()["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"].get("body") for e in timeline if e["type"] == "m.room.message"][-2:] == [
        "from alice",
        "from bob",
    ]
    assert alice.member("kick", room, bob.user_id).status_code == 200
    # Redactions name their target in content (as in v11).
    event_id = alice.send_ok(room, "oops")
    r = alice.request("PUT", f"/rooms/{room}/redact/{event_id}/r1", json={})
    assert r.status_code == 200, r.text
    assert alice.ok("GET", f"/rooms/{room}/event/{event_id}")["content"] == {}


def test_additional_creators_and_trusted_chats(server: ServerProcess) -> None:
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    room = alice.create_room(room_version="12", preset="trusted_private_chat", invite=[bob.user_id])
    create = state(alice, room, "m.room.create")
    assert create["additional_creators"] == [bob.user_id]
    assert bob.join(room).status_code == 200
    # Bob, an additional creator, may change anything, and nobody can kick him.
    assert bob.state(room, "m.room.name", {"name": "bob's"}).status_code == 200
    assert_forbidden(alice.member("kick", room, bob.user_id), "a creator kicking a creator")
    for bad in ("@x:y", ["not-a-user"], [5]):
        r = alice.request(
            "POST",
            "/createRoom",
            json={"room_version": "12", "creation_content": {"additional_creators": bad}},
        )
        assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", r.text
    r = alice.request(
        "POST",
        "/createRoom",
        json={"room_version": "11", "creation_content": {"additional_creators": [bob.user_id]}},
    )
    assert r.status_code == 400, r.text


def test_capabilities_and_upgrade_to_v12(server: ServerProcess) -> None:
    alice, bob, old = joined_pair(server, name="old", visibility="public")
    versions = alice.ok("GET", "/capabilities")["capabilities"]["m.room_versions"]
    assert versions["available"]["12"] == "stable" and versions["default"] == "10"
    r = alice.request("POST", f"/rooms/{old}/upgrade", json={"new_version": "12"})
    assert r.status_code == 200, r.text
    new = r.json()["replacement_room"]
    assert ":" not in new
    assert state(alice, new, "m.room.create")["predecessor"]["room_id"] == old
    assert alice.user_id not in state(alice, new, "m.room.power_levels")["users"]
    assert state(alice, new, "m.room.name") == {"name": "old"}
    assert bob.join(new).status_code == 200
    bob.send_ok(new, "in the new room")
    # The old room keeps its creator's level (the upgrade edits only the new room's copy).
    assert state(alice, old, "m.room.power_levels")["users"][alice.user_id] == 100
    # And back from v12: the creator's unlimited power becomes the highest level needed.
    r = alice.request("POST", f"/rooms/{new}/upgrade", json={"new_version": "11"})
    assert r.status_code == 200, r.text
    newest = r.json()["replacement_room"]
    assert state(alice, newest, "m.room.power_levels")["users"][alice.user_id] == 100


def test_rooms_created_at_once_get_distinct_ids(server: ServerProcess) -> None:
    # The ID is the create event's hash: one user's rooms created in the same millisecond
    # must still differ (they collided, and createRoom failed with 500, before).
    from concurrent.futures import ThreadPoolExecutor

    alice = new_client(server, "alice")
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: alice.request("POST", "/createRoom", json={"room_version": "12"}), range(16))
        )
    assert [r.status_code for r in responses] == [200] * 16, [
        r.text for r in responses if r.status_code != 200
    ]
    assert len({r.json()["room_id"] for r in responses}) == 16
