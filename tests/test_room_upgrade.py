"""Room upgrades (`POST /rooms/{roomId}/upgrade`) against a real server, with plain HTTP
(matrix-nio's `room_upgrade` does the upgrade client-side and never calls this endpoint)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from conftest import ServerProcess
from test_room_authz import Client, assert_forbidden, joined_pair, new_client


def upgrade(client: Client, room_id: str, version: Any = "11") -> Any:
    return client.request("POST", f"/rooms/{room_id}/upgrade", json={"new_version": version})


def state(client: Client, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
    return dict(client.ok("GET", f"/rooms/{room_id}/state/{event_type}/{state_key}"))


def test_upgrade_replaces_the_room(any_server: ServerProcess) -> None:
    owner, member, old = joined_pair(any_server, name="old name", topic="the topic", visibility="public")
    alias_name = f"up{secrets.token_hex(4)}"
    alias = f"#{alias_name}:{any_server.server_name}"
    owner.ok("PUT", f"/directory/room/{quote(alias)}", json={"room_id": old})
    assert owner.state(old, "m.room.canonical_alias", {"alias": alias}).status_code == 200
    spammer = new_client(any_server, "spammer")
    assert owner.member("ban", old, spammer.user_id).status_code == 200
    owner.ok("PUT", f"/user/{owner.user_id}/rooms/{old}/tags/m.favourite", json={"order": 0.1})
    member.ok("PUT", f"/user/{member.user_id}/rooms/{old}/tags/u.mine", json={})

    pl_before = state(owner, old, "m.room.power_levels")
    r = upgrade(owner, old)
    assert r.status_code == 200, r.text
    new = r.json()["replacement_room"]
    assert new != old

    # The new room: version 11, predecessor, copied state, the alias, the ban.
    create = state(owner, new, "m.room.create")
    assert create["room_version"] == "11"
    assert create["predecessor"]["room_id"] == old and create["predecessor"]["event_id"].startswith("$")
    assert state(owner, new, "m.room.name") == {"name": "old name"}
    assert state(owner, new, "m.room.topic") == {"topic": "the topic"}
    assert state(owner, new, "m.room.join_rules")["join_rule"] == "public"
    assert state(owner, new, "m.room.power_levels") == pl_before
    assert state(owner, new, "m.room.canonical_alias") == {"alias": alias}
    assert owner.ok("GET", f"/directory/room/{quote(alias)}")["room_id"] == new
    assert state(owner, new, "m.room.member", spammer.user_id)["membership"] == "ban"
    assert_forbidden(spammer.join(new), "a user banned in the old room joining the new one")
    # The directory listing moved.
    assert owner.ok("GET", f"/directory/list/room/{new}") == {"visibility": "public"}
    assert owner.ok("GET", f"/directory/list/room/{old}") == {"visibility": "private"}
    # Members are not moved (spec): the member follows the tombstone and joins.
    members = owner.ok("GET", f"/rooms/{new}/joined_members")["joined"]
    assert set(members) == {owner.user_id}

    # The old room: the tombstone, and locked for non-moderators.
    tombstone = state(member, old, "m.room.tombstone")
    assert tombstone["replacement_room"] == new
    old_pl = state(owner, old, "m.room.power_levels")
    assert old_pl["events_default"] >= 50 and old_pl["invite"] >= 50
    assert_forbidden(member.send(old), "a plain member talking in the replaced room")
    assert owner.send(old).status_code == 200  # moderators still can
    assert "m.room.canonical_alias" not in {
        e["type"] for e in owner.ok("GET", f"/rooms/{old}/state") if e["content"]
    }

    # Tags follow: the upgrader's at once, a member's when they join the new room.
    assert owner.ok("GET", f"/user/{owner.user_id}/rooms/{new}/tags") == {
        "tags": {"m.favourite": {"order": 0.1}}
    }
    assert member.join(new).status_code == 200
    assert member.ok("GET", f"/user/{member.user_id}/rooms/{new}/tags") == {"tags": {"u.mine": {}}}
    assert member.send(new).status_code == 200


def test_upgrade_keeps_an_upgrader_below_100_in_charge(server: ServerProcess) -> None:
    owner, moderator, old = joined_pair(server, name="mods")
    pl = state(owner, old, "m.room.power_levels")
    pl["users"][moderator.user_id] = 60
    pl["events"]["m.room.tombstone"] = 60
    assert owner.state(old, "m.room.power_levels", pl).status_code == 200
    r = upgrade(moderator, old)
    assert r.status_code == 200, r.text
    new = r.json()["replacement_room"]
    # The copied power levels are the old ones: the moderator is back at 60, the owner at 100.
    new_pl = state(moderator, new, "m.room.power_levels")
    assert new_pl["users"] == {owner.user_id: 100, moderator.user_id: 60}
    assert state(moderator, new, "m.room.name") == {"name": "mods"}


def test_who_may_upgrade(server: ServerProcess) -> None:
    owner, member, room_id = joined_pair(server)
    # A member without the tombstone level, a non-member, a former member, a banned user.
    assert_forbidden(upgrade(member, room_id), "a plain member upgrading")
    stranger = new_client(server, "stranger")
    assert_forbidden(upgrade(stranger, room_id), "a non-member upgrading")
    left, banned = new_client(server, "left"), new_client(server, "banned")
    for user in (left, banned):
        assert owner.member("invite", room_id, user.user_id).status_code == 200
        assert user.join(room_id).status_code == 200
    assert left.request("POST", f"/rooms/{room_id}/leave", json={}).status_code == 200
    assert owner.member("ban", room_id, banned.user_id).status_code == 200
    assert_forbidden(upgrade(left, room_id), "a former member upgrading")
    assert_forbidden(upgrade(banned, room_id), "a banned user upgrading")
    # Bad input: unknown version, wrong type, missing field.
    r = upgrade(owner, room_id, "99")
    assert r.status_code == 400 and r.json()["errcode"] == "M_UNSUPPORTED_ROOM_VERSION", r.text
    r = upgrade(owner, room_id, 11)
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", r.text
    r = owner.request("POST", f"/rooms/{room_id}/upgrade", json={})
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM", r.text
    # Nothing was upgraded by any of these.
    r = owner.request("GET", f"/rooms/{room_id}/state/m.room.tombstone/")
    assert r.status_code == 404, r.text


def test_upgrading_a_space_keeps_its_type_and_children(server: ServerProcess) -> None:
    owner = new_client(server, "owner")
    space = owner.create_room(name="space", creation_content={"type": "m.space"})
    child = owner.create_room(name="child")
    assert owner.state(space, "m.space.child", {"via": [server.server_name]}, child).status_code == 200
    new = upgrade(owner, space).json()["replacement_room"]
    assert state(owner, new, "m.room.create")["type"] == "m.space"
    assert state(owner, new, "m.space.child", child) == {"via": [server.server_name]}


def test_upgrade_invites_nobody_and_copies_bans(server: ServerProcess) -> None:
    """The spec (v1.16-v1.19, Room Upgrades, "Server behaviour" 3): membership events are not
    transferred, so neither the old room's members nor its pending invitees are invited to
    the new room (Synapse likewise copies bans only); the upgrading client invites whom it
    wants. Bans are copied with their reason, so a banned user stays out."""
    owner, member, old = joined_pair(server, preset="private_chat")
    invitee, banned = new_client(server, "invitee"), new_client(server, "banned")
    assert owner.member("invite", old, invitee.user_id).status_code == 200
    r = owner.request("POST", f"/rooms/{old}/ban", json={"user_id": banned.user_id, "reason": "spam links"})
    assert r.status_code == 200, r.text
    r = upgrade(owner, old)
    assert r.status_code == 200, r.text
    new = r.json()["replacement_room"]

    members = {
        e["state_key"]: e["content"]["membership"] for e in owner.ok("GET", f"/rooms/{new}/members")["chunk"]
    }
    assert members == {owner.user_id: "join", banned.user_id: "ban"}
    assert state(owner, new, "m.room.member", banned.user_id) == {"membership": "ban", "reason": "spam links"}
    # Neither the pending invitee nor the member got an invite in their sync.
    for user in (invitee, member):
        assert new not in user.sync().get("rooms", {}).get("invite", {})
    # The old invite still stands; the new room is invite-only, so the invitee needs a new one.
    assert_forbidden(invitee.join(new), "a user invited to the old room joining the new one uninvited")
    assert owner.member("invite", new, invitee.user_id).status_code == 200
    assert invitee.join(new).status_code == 200
    assert_forbidden(banned.join(new), "a user banned in the old room joining the new one")
