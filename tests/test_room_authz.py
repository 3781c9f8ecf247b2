"""Who may read and change a room: non-members, kicked and banned members, power levels,
join rules and redaction rights, against a real server."""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import pytest
import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
_txn = itertools.count()


class Client:
    def __init__(self, server: ServerProcess, registered: dict[str, Any]) -> None:
        self.server = server
        self.user_id: str = registered["user_id"]
        self.token: str = registered["access_token"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 20)
        return self.session.request(method, self.server.url(CS + path), **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def create_room(self, **body: Any) -> str:
        return str(self.ok("POST", "/createRoom", json=body)["room_id"])

    def send(
        self, room_id: str, body: str = "hello", event_type: str = "m.room.message"
    ) -> requests.Response:
        return self.request(
            "PUT",
            f"/rooms/{room_id}/send/{event_type}/t{next(_txn)}",
            json={"msgtype": "m.text", "body": body},
        )

    def send_ok(self, room_id: str, body: str = "hello") -> str:
        r = self.send(room_id, body)
        assert r.status_code == 200, r.text
        return str(r.json()["event_id"])

    def state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> requests.Response:
        return self.request("PUT", f"/rooms/{room_id}/state/{event_type}/{state_key}", json=content)

    def member(self, action: str, room_id: str, user_id: str) -> requests.Response:
        return self.request("POST", f"/rooms/{room_id}/{action}", json={"user_id": user_id})

    def join(self, room_id: str) -> requests.Response:
        return self.request("POST", f"/join/{room_id}", json={})

    def sync(self, since: str | None = None, **params: Any) -> dict[str, Any]:
        if since:
            params["since"] = since
        params.setdefault("timeout", "0")
        return dict(self.ok("GET", "/sync", params=params))


def new_client(server: ServerProcess, prefix: str) -> Client:
    return Client(server, server.register(f"{prefix}_{secrets.token_hex(4)}"))


def assert_forbidden(r: requests.Response, what: str = "") -> None:
    assert r.status_code == 403, f"{what}: {r.status_code} {r.text}"
    assert r.json()["errcode"] == "M_FORBIDDEN", f"{what}: {r.text}"


def assert_hidden(r: requests.Response, what: str = "") -> None:
    """403 or 404: either way, nothing of the event."""
    assert r.status_code in (403, 404), f"{what}: {r.status_code} {r.text}"
    assert r.json()["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND"), f"{what}: {r.text}"


def joined_pair(server: ServerProcess, **room: Any) -> tuple[Client, Client, str]:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    room_id = alice.create_room(**room)
    assert alice.member("invite", room_id, bob.user_id).status_code == 200
    assert bob.join(room_id).status_code == 200
    return alice, bob, room_id


def event_ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


# Non-members -----------------------------------------------------------------------


def test_non_member_can_read_nothing(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    eve = new_client(server, "eve")
    room_id = alice.create_room(name="Private", topic="secret topic")
    event_id = alice.send_ok(room_id, "secret")
    token = alice.sync()["next_batch"]

    reads = {
        "event": f"/rooms/{room_id}/event/{event_id}",
        "context": f"/rooms/{room_id}/context/{event_id}",
        "messages": f"/rooms/{room_id}/messages",
        "paginate back": f"/rooms/{room_id}/messages?dir=b&from={token}",
        "paginate forward": f"/rooms/{room_id}/messages?dir=f&from=p0",
        "state": f"/rooms/{room_id}/state",
        "state event": f"/rooms/{room_id}/state/m.room.name",
        "state event with key": f"/rooms/{room_id}/state/m.room.member/{alice.user_id}",
        "members": f"/rooms/{room_id}/members",
        "joined members": f"/rooms/{room_id}/joined_members",
        "aliases": f"/rooms/{room_id}/aliases",
    }
    for what, path in reads.items():
        r = eve.request("GET", path)
        assert_forbidden(r, what)
        assert "secret" not in r.text, what
    relations = requests.get(
        server.url(f"/_matrix/client/v1/rooms/{room_id}/relations/{event_id}"),
        headers={"Authorization": f"Bearer {eve.token}"},
        timeout=10,
    )
    assert_forbidden(relations, "relations")

    assert_forbidden(eve.send(room_id, "intrusion"), "send")
    assert_forbidden(eve.state(room_id, "m.room.topic", {"topic": "hijacked"}), "state")
    assert_forbidden(eve.request("POST", f"/rooms/{room_id}/receipt/m.read/{event_id}", json={}), "receipt")
    assert_forbidden(eve.request("PUT", f"/rooms/{room_id}/redact/{event_id}/r1", json={}), "redact")
    assert_forbidden(eve.member("invite", room_id, eve.user_id), "invite self")
    # And the room is nowhere in their sync.
    sync = eve.sync()
    assert room_id not in str(sync)

    # A room that does not exist answers the same: no way to probe for rooms.
    ghost = f"!nothere:{server.server_name}"
    for path in (f"/rooms/{ghost}/messages", f"/rooms/{ghost}/state", f"/rooms/{ghost}/event/{event_id}"):
        assert_forbidden(eve.request("GET", path), path)

    # Alice's room is unchanged.
    assert "hijacked" not in str(alice.ok("GET", f"/rooms/{room_id}/state"))


# Kicked and banned members -----------------------------------------------------------


@pytest.mark.parametrize("action", ["kick", "ban"])
def test_removed_member_receives_nothing_after_removal(server: ServerProcess, action: str) -> None:
    alice, bob, room_id = joined_pair(server, name="Before")
    carol = new_client(server, "carol")
    assert alice.member("invite", room_id, carol.user_id).status_code == 200
    assert carol.join(room_id).status_code == 200
    carol.send_ok(room_id, "carol before")
    before = alice.send_ok(room_id, "before removal")
    since = bob.sync()["next_batch"]

    r = alice.member(action, room_id, bob.user_id)
    assert r.status_code == 200, r.text
    after = alice.send_ok(room_id, "after removal: secret")
    assert alice.state(room_id, "m.room.name", {"name": "Renamed after"}).status_code == 200
    assert alice.state(room_id, "m.room.topic", {"topic": "topic after"}).status_code == 200
    r = alice.request(
        "POST", f"/rooms/{room_id}/ban", json={"user_id": carol.user_id, "reason": "reason after"}
    )
    assert r.status_code == 200, r.text
    later_state = alice.ok("GET", f"/rooms/{room_id}/state/m.room.topic")
    assert later_state == {"topic": "topic after"}

    # /sync: the room moves to "leave", ending with the removal.
    sync = bob.sync(since)
    assert room_id not in sync["rooms"]["join"]
    left = sync["rooms"]["leave"][room_id]
    timeline = left["timeline"]["events"]
    last = timeline[-1]
    assert last["type"] == "m.room.member" and last["state_key"] == bob.user_id
    assert last["content"]["membership"] == ("leave" if action == "kick" else "ban")
    assert last["sender"] == alice.user_id
    assert after not in event_ids(timeline)
    for leak in ("secret", "Renamed after", "topic after", "reason after"):
        assert leak not in str(sync), leak
    # The next sync has nothing about the room at all.
    sync = bob.sync(sync["next_batch"])
    assert room_id not in str(sync["rooms"])
    # A fresh full sync (with left rooms) shows history only up to the removal.
    full = bob.sync(filter='{"room": {"include_leave": true, "timeline": {"limit": 100}}}')
    assert room_id not in full["rooms"]["join"]
    if room_id in full["rooms"]["leave"]:
        assert after not in str(full) and "Renamed after" not in str(full)

    # /messages: history up to the removal, nothing after it.
    for direction in ("b", "f"):
        r = bob.request("GET", f"/rooms/{room_id}/messages", params={"dir": direction, "limit": "100"})
        if r.status_code == 200:
            chunk = event_ids(r.json()["chunk"])
            assert after not in chunk
            assert "secret" not in r.text and "Renamed after" not in r.text
            assert before in chunk
        else:
            assert_forbidden(r, "messages")
    # Lazy-loaded members come as they were then, too.
    r = bob.request(
        "GET", f"/rooms/{room_id}/messages", params={"limit": "100", "filter": '{"lazy_load_members": true}'}
    )
    if r.status_code == 200:
        members = {e["state_key"]: e["content"]["membership"] for e in r.json()["state"]}
        assert members.get(carol.user_id) == "join", members
        assert "reason after" not in r.text
    # /event and /context of a later event: hidden.
    assert_hidden(bob.request("GET", f"/rooms/{room_id}/event/{after}"), "event")
    assert_hidden(bob.request("GET", f"/rooms/{room_id}/context/{after}"), "context")
    # /context of an earlier event: nothing after the removal either, not even in its state.
    r = bob.request("GET", f"/rooms/{room_id}/context/{before}", params={"limit": "20"})
    if r.status_code == 200:
        body = r.json()
        assert after not in event_ids(body["events_after"])
        assert "secret" not in r.text
        assert "Renamed after" not in r.text and "topic after" not in r.text, body["state"]
        assert "reason after" not in r.text
    else:
        assert_hidden(r, "context before")
    # State and members: not for a former member (or only as it was when they left).
    for path in (
        f"/rooms/{room_id}/state",
        f"/rooms/{room_id}/state/m.room.name",
        f"/rooms/{room_id}/members",
    ):
        r = bob.request("GET", path)
        if r.status_code == 200:
            assert "Renamed after" not in r.text and "topic after" not in r.text, path
        else:
            assert_forbidden(r, path)

    # They cannot send or change anything.
    assert_forbidden(bob.send(room_id, "still here?"), "send")
    assert_forbidden(bob.state(room_id, "m.room.topic", {"topic": "x"}), "state")
    assert_forbidden(bob.request("POST", f"/rooms/{room_id}/receipt/m.read/{before}", json={}), "receipt")

    if action == "ban":
        # A banned user cannot rejoin, nor be invited back.
        assert_forbidden(bob.join(room_id), "rejoin")
        assert_forbidden(bob.request("POST", f"/rooms/{room_id}/join", json={}), "rejoin by id")
        assert_forbidden(alice.member("invite", room_id, bob.user_id), "invite banned")
        # After an unban and an invite, they can.
        assert alice.member("unban", room_id, bob.user_id).status_code == 200
        assert alice.member("invite", room_id, bob.user_id).status_code == 200
        assert bob.join(room_id).status_code == 200
    else:
        # A kicked user of an invite-only room needs a new invite.
        assert_forbidden(bob.join(room_id), "rejoin without invite")
        assert alice.member("invite", room_id, bob.user_id).status_code == 200
        assert bob.join(room_id).status_code == 200
    assert bob.send(room_id, "back").status_code == 200


def test_kicked_member_in_a_public_room_can_rejoin_and_sees_new_events_only_from_then(
    server: ServerProcess,
) -> None:
    alice, bob, room_id = joined_pair(server, preset="public_chat")
    assert alice.member("kick", room_id, bob.user_id).status_code == 200
    gap = alice.send_ok(room_id, "while bob was out")
    assert bob.join(room_id).status_code == 200
    back = alice.send_ok(room_id, "bob is back")
    r = bob.ok("GET", f"/rooms/{room_id}/messages", params={"limit": "50"})
    chunk = event_ids(r["chunk"])
    assert back in chunk
    # history_visibility "shared": visible because bob joined again after it.
    assert gap in chunk


# Power levels --------------------------------------------------------------------------


def test_power_levels_gate_state_changes_and_kicks(server: ServerProcess) -> None:
    alice, bob, room_id = joined_pair(server)
    carol = new_client(server, "carol")
    assert alice.member("invite", room_id, carol.user_id).status_code == 200
    assert carol.join(room_id).status_code == 200

    assert_forbidden(bob.state(room_id, "m.room.name", {"name": "Bob's room"}), "name")
    assert_forbidden(bob.state(room_id, "m.room.topic", {"topic": "Bob's topic"}), "topic")
    assert_forbidden(bob.member("kick", room_id, carol.user_id), "kick")
    assert_forbidden(bob.member("ban", room_id, carol.user_id), "ban")
    assert_forbidden(bob.state(room_id, "m.room.power_levels", {"users": {bob.user_id: 100}}), "power levels")
    assert alice.ok("GET", f"/rooms/{room_id}/state/m.room.power_levels")["users"] == {alice.user_id: 100}
    assert carol.user_id in alice.ok("GET", f"/rooms/{room_id}/joined_members")["joined"]

    power = alice.ok("GET", f"/rooms/{room_id}/state/m.room.power_levels")
    power["users"][bob.user_id] = 50
    assert alice.state(room_id, "m.room.power_levels", power).status_code == 200

    r = bob.state(room_id, "m.room.name", {"name": "Bob's room"})
    assert r.status_code == 200, r.text
    assert alice.ok("GET", f"/rooms/{room_id}/state/m.room.name") == {"name": "Bob's room"}
    r = bob.member("kick", room_id, carol.user_id)
    assert r.status_code == 200, r.text
    assert carol.user_id not in alice.ok("GET", f"/rooms/{room_id}/joined_members")["joined"]
    # Still not above their own level: no power-levels change, no kicking the admin.
    assert_forbidden(
        bob.state(room_id, "m.room.power_levels", {**power, "users": {**power["users"], bob.user_id: 100}}),
        "raise own level",
    )
    assert_forbidden(bob.member("kick", room_id, alice.user_id), "kick admin")

    # Taking the power back takes the right back.
    power["users"].pop(bob.user_id)
    assert alice.state(room_id, "m.room.power_levels", power).status_code == 200
    assert_forbidden(bob.state(room_id, "m.room.name", {"name": "again"}), "name after demotion")


def test_invite_only_join_needs_an_invite(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    eve = new_client(server, "eve")
    room_id = alice.create_room(preset="private_chat")
    assert_forbidden(eve.join(room_id), "join")
    assert_forbidden(eve.request("POST", f"/rooms/{room_id}/join", json={}), "join by id")
    assert eve.user_id not in alice.ok("GET", f"/rooms/{room_id}/joined_members")["joined"]
    assert alice.member("invite", room_id, eve.user_id).status_code == 200
    assert eve.join(room_id).status_code == 200
    assert eve.user_id in alice.ok("GET", f"/rooms/{room_id}/joined_members")["joined"]

    public = alice.create_room(preset="public_chat")
    assert eve.join(public).status_code == 200


def test_redaction_rights(server: ServerProcess) -> None:
    alice, bob, room_id = joined_pair(server)
    alices = alice.send_ok(room_id, "alice's words")
    bobs = bob.send_ok(room_id, "bob's words")

    r = bob.request("PUT", f"/rooms/{room_id}/redact/{alices}/x1", json={"reason": "nope"})
    assert_forbidden(r, "redact another's event")
    assert alice.ok("GET", f"/rooms/{room_id}/event/{alices}")["content"]["body"] == "alice's words"

    r = bob.request("PUT", f"/rooms/{room_id}/redact/{bobs}/x2", json={})
    assert r.status_code == 200, r.text
    assert alice.ok("GET", f"/rooms/{room_id}/event/{bobs}")["content"] == {}
    assert bob.ok("GET", f"/rooms/{room_id}/event/{bobs}")["content"] == {}

    # The admin has the redact level.
    bobs2 = bob.send_ok(room_id, "more of bob's words")
    r = alice.request("PUT", f"/rooms/{room_id}/redact/{bobs2}/x3", json={})
    assert r.status_code == 200, r.text
    assert bob.ok("GET", f"/rooms/{room_id}/event/{bobs2}")["content"] == {}
    # Nothing to redact in another room's events through this room.
    other = alice.create_room()
    foreign = alice.send_ok(other, "elsewhere")
    assert_hidden(bob.request("PUT", f"/rooms/{room_id}/redact/{foreign}/x4", json={}), "foreign event")


def test_redact_level_granted_by_power_levels(server: ServerProcess) -> None:
    alice, bob, room_id = joined_pair(server)
    alices = alice.send_ok(room_id, "alice's words")
    power = alice.ok("GET", f"/rooms/{room_id}/state/m.room.power_levels")
    power["redact"] = 10
    power["users"][bob.user_id] = 10
    assert alice.state(room_id, "m.room.power_levels", power).status_code == 200
    r = bob.request("PUT", f"/rooms/{room_id}/redact/{alices}/g1", json={})
    assert r.status_code == 200, r.text
    assert alice.ok("GET", f"/rooms/{room_id}/event/{alices}")["content"] == {}
