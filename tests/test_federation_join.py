"""Joining, leaving and knocking across two of our servers over TLS (make_join / send_join
v2, make_leave / send_leave, make_knock / send_knock), room versions 10 and 12, and
handshake events that must be refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from federation_harness import (
    FederatedServer,
    TestCA,
    User,
    federated_pair,
    signed_request,
    signing_key,
)
from signedjson.key import generate_signing_key

from homeserver.events.hashing import compute_event_id
from homeserver.events.signing import sign_event


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer]]:
    admin = {"plugins": [{"module": "plugins.admin.AdminPlugin", "config": {}}]}
    yield from federated_pair(tmp_path_factory, ca, admin)


@pytest.mark.parametrize("version", ["10", "12"])
def test_a_remote_user_joins_and_leaves_our_room(
    servers: tuple[FederatedServer, FederatedServer], version: str
) -> None:
    a, b = servers
    alice = User(a, f"alice_j{version}")
    bob = User(b, f"bob_j{version}")
    room_id = alice.create_room(version, preset="public_chat", name="Over the wire")
    alice.ok("PUT", f"/rooms/{quote(room_id)}/state/m.room.topic", {"topic": "federation"})

    # Bob's server has never heard of the room: it joins through Alice's.
    joined = bob.ok("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)
    assert joined["room_id"] == room_id

    # Each side's member list shows the other.
    assert alice.memberships(room_id) == {alice.user_id: "join", bob.user_id: "join"}
    assert bob.memberships(room_id) == {alice.user_id: "join", bob.user_id: "join"}
    # Bob's server built the room from send_join's state: the name and topic are there.
    state = {(e["type"], e["state_key"]): e for e in bob.ok("GET", f"/rooms/{quote(room_id)}/state")}
    assert state[("m.room.name", "")]["content"]["name"] == "Over the wire"
    assert state[("m.room.topic", "")]["content"]["topic"] == "federation"
    assert state[("m.room.create", "")]["content"]["room_version"] == version
    assert room_id in bob.sync()["rooms"]["join"]
    # And Bob's later sends build on it.
    bob.ok("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"})
    # Alice's side: the join came with our countersignature and shows in her sync.
    timeline = alice.sync()["rooms"]["join"][room_id]["timeline"]["events"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in timeline)

    # A message of Alice's, handed to Bob's server in a transaction as Alice's server's
    # sender will: it builds on the room Bob's server made from send_join.
    sent = alice.ok(
        "PUT", f"/rooms/{quote(room_id)}/send/m.room.message/a1", {"msgtype": "m.text", "body": "yo"}
    )
    pdu = signed_request("GET", b, a, f"/_matrix/federation/v1/event/{sent['event_id']}").json()["pdus"][0]
    txn = {"origin": a.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": [pdu]}
    r = signed_request("PUT", a, b, f"/_matrix/federation/v1/send/join{version}", txn)
    assert r.status_code == 200, r.text
    assert r.json()["pdus"] == {sent["event_id"]: {}}
    timeline = bob.sync()["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["content"].get("body") for e in timeline if e["type"] == "m.room.message"][-1] == "yo"

    # Bob leaves; his server is not the room's last one, so it leaves through Alice's.
    bob.ok("POST", f"/rooms/{quote(room_id)}/leave", {})
    assert alice.memberships(room_id)[bob.user_id] == "leave"
    assert room_id not in bob.ok("GET", "/joined_rooms")["joined_rooms"]

    # While he is away the topic changes; when he joins again his server takes the room's
    # state afresh from send_join.
    alice.ok("PUT", f"/rooms/{quote(room_id)}/state/m.room.topic", {"topic": "moved on"})
    bob.ok("POST", f"/join/{quote(room_id)}", {}, via=a.server_name)
    assert alice.memberships(room_id)[bob.user_id] == "join"
    topic = bob.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.topic")
    assert topic == {"topic": "moved on"}


def test_knocking_on_a_room_of_another_server(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    alice = User(a, "alice_knock")
    bob = User(b, "bob_knock")
    room_id = alice.create_room("12", preset="private_chat")
    alice.ok("PUT", f"/rooms/{quote(room_id)}/state/m.room.join_rules", {"join_rule": "knock"})
    # Not public: a join is refused by Alice's server (403 passed on).
    r = bob.call("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)
    assert r.status_code == 403, r.text
    bob.ok("POST", f"/knock/{quote(room_id)}", {"reason": "let me in"}, via=a.server_name)
    assert alice.memberships(room_id)[bob.user_id] == "knock"
    knock = next(
        e
        for e in alice.sync()["rooms"]["join"][room_id]["timeline"]["events"]
        if e["type"] == "m.room.member" and e["state_key"] == bob.user_id
    )
    assert knock["content"]["reason"] == "let me in"
    # Bob's sync shows his knock pending, with the room's stripped state.
    knock_state = bob.sync()["rooms"]["knock"][room_id]["knock_state"]["events"]
    assert ("m.room.join_rules", "knock") in {(e["type"], e["content"].get("join_rule")) for e in knock_state}
    # Alice accepts with an invite (sent to Bob's server), and Bob joins.
    alice.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": bob.user_id})
    assert room_id in bob.sync()["rooms"]["invite"]
    bob.ok("POST", f"/join/{quote(room_id)}", {})
    assert alice.memberships(room_id)[bob.user_id] == "join"
    assert bob.memberships(room_id)[alice.user_id] == "join"


@pytest.mark.parametrize("version", ["10", "12"])
def test_invites_both_ways_accepted_and_rejected(
    servers: tuple[FederatedServer, FederatedServer], version: str
) -> None:
    a, b = servers
    alice = User(a, f"alice_inv{version}")
    bob = User(b, f"bob_inv{version}")
    carol = User(b, f"carol_inv{version}")
    room_id = alice.create_room(version, preset="private_chat", name="Invited")

    # Alice invites Bob: his server countersigns, his sync shows the invite and the room's name.
    alice.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": bob.user_id})
    assert alice.memberships(room_id)[bob.user_id] == "invite"
    invite = bob.sync()["rooms"]["invite"][room_id]["invite_state"]["events"]
    assert {"type": "m.room.name", "content": {"name": "Invited"}}.items() <= next(
        e for e in invite if e["type"] == "m.room.name"
    ).items()
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in invite)
    # Alice invites Carol, who rejects: her server is not in the room, so the leave goes
    # to Alice's by make_leave/send_leave.
    alice.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": carol.user_id})
    assert room_id in carol.sync()["rooms"]["invite"]
    carol.ok("POST", f"/rooms/{quote(room_id)}/leave", {})
    assert alice.memberships(room_id)[carol.user_id] == "leave"
    assert room_id not in carol.sync()["rooms"]["invite"]

    # Bob accepts: the join goes through Alice's server (the inviter's), no server_name needed.
    bob.ok("POST", f"/rooms/{quote(room_id)}/join", {})
    assert alice.memberships(room_id)[bob.user_id] == "join"
    assert bob.memberships(room_id)[alice.user_id] == "join"

    # The other way: Carol (B) invites Dave (A) into her room, and he joins.
    dave = User(a, f"dave_inv{version}")
    theirs = carol.create_room(version, preset="private_chat")
    carol.ok("POST", f"/rooms/{quote(theirs)}/invite", {"user_id": dave.user_id})
    assert theirs in dave.sync()["rooms"]["invite"]
    dave.ok("POST", f"/rooms/{quote(theirs)}/join", {})
    assert carol.memberships(theirs)[dave.user_id] == "join"

    # A user the other server does not have: its 404 is passed on.
    r = alice.call("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": f"@nobody:{b.server_name}"})
    assert r.status_code == 404, r.text
    assert r.json()["errcode"] == "M_NOT_FOUND"


def _template(a: FederatedServer, b: FederatedServer, room_id: str, user_id: str) -> dict[str, Any]:
    r = signed_request(
        "GET", b, a, f"/_matrix/federation/v1/make_join/{quote(room_id)}/{quote(user_id)}?ver=10&ver=12"
    )
    assert r.status_code == 200, r.text
    event: dict[str, Any] = r.json()["event"]
    return event


def _send_join(
    a: FederatedServer, b: FederatedServer, pdu: dict[str, Any], room_id: str
) -> requests.Response:
    event_id = compute_event_id(pdu, "10")
    return signed_request("PUT", b, a, f"/_matrix/federation/v2/send_join/{quote(room_id)}/{event_id}", pdu)


def test_bad_join_events_are_refused(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    alice = User(a, "alice_bad")
    room_id = alice.create_room("10", preset="public_chat")
    other_room = alice.create_room("10", preset="public_chat")
    user = f"@mallory:{b.server_name}"
    key = signing_key(b)

    def refused(r: requests.Response, status: int, errcode: str) -> None:
        assert r.status_code == status, r.text
        assert r.json()["errcode"] == errcode, r.text

    # make_join: for another server's user; without a version we speak; unknown room.
    r = signed_request("GET", b, a, f"/_matrix/federation/v1/make_join/{quote(room_id)}/@x:elsewhere?ver=10")
    refused(r, 403, "M_FORBIDDEN")
    r = signed_request("GET", b, a, f"/_matrix/federation/v1/make_join/{quote(room_id)}/{quote(user)}?ver=11")
    refused(r, 400, "M_INCOMPATIBLE_ROOM_VERSION")
    r = signed_request(
        "GET", b, a, f"/_matrix/federation/v1/make_join/!nope:{a.server_name}/{quote(user)}?ver=10"
    )
    refused(r, 404, "M_NOT_FOUND")

    template = _template(a, b, room_id, user)
    template["origin_server_ts"] = int(time.time() * 1000)

    # Signed by a key B never published.
    forged = sign_event(template, b.server_name, generate_signing_key("forged"), "10")
    refused(_send_join(a, b, forged, room_id), 403, "M_FORBIDDEN")
    # A sender of another server than the request's origin.
    elsewhere = {**template, "sender": "@m:elsewhere", "state_key": "@m:elsewhere"}
    refused(_send_join(a, b, sign_event(elsewhere, b.server_name, key, "10"), room_id), 403, "M_FORBIDDEN")
    # The event of another room than the path's.
    good = sign_event(template, b.server_name, key, "10")
    refused(_send_join(a, b, good, other_room), 400, "M_BAD_JSON")
    # The path names another event ID.
    r = signed_request("PUT", b, a, f"/_matrix/federation/v2/send_join/{quote(room_id)}/$other", good)
    refused(r, 400, "M_BAD_JSON")
    # Naming a user of ours as the authoriser of a join we would not vouch for.
    vouched = {
        **template,
        "content": {"membership": "join", "join_authorised_via_users_server": alice.user_id},
    }
    refused(_send_join(a, b, sign_event(vouched, b.server_name, key, "10"), room_id), 403, "M_FORBIDDEN")
    # Not a join.
    leave = {**template, "content": {"membership": "leave"}}
    refused(_send_join(a, b, sign_event(leave, b.server_name, key, "10"), room_id), 400, "M_BAD_JSON")
    # Refused by the auth rules against the current state: the room became invite-only.
    alice.ok("PUT", f"/rooms/{quote(room_id)}/state/m.room.join_rules", {"join_rule": "invite"})
    refused(_send_join(a, b, good, room_id), 403, "M_FORBIDDEN")
    # Garbage bodies: a clear 400, never a 500.
    r = signed_request("PUT", b, a, f"/_matrix/federation/v2/send_join/{quote(room_id)}/$x", [1])
    refused(r, 400, "M_BAD_JSON")
    assert user not in alice.memberships(room_id)

    # A join sent twice (a retry) is answered twice and stored once.
    retry = f"@retry:{b.server_name}"
    event = _template(a, b, other_room, retry)
    event["origin_server_ts"] = int(time.time() * 1000)
    event = sign_event(event, b.server_name, key, "10")
    with ThreadPoolExecutor(3) as pool:  # at once, and once more after
        first, second = pool.map(lambda _: _send_join(a, b, event, other_room), range(2))
    third = _send_join(a, b, event, other_room)
    assert first.status_code == second.status_code == third.status_code == 200, second.text
    assert first.json()["event"] == second.json()["event"] == third.json()["event"]
    assert len(first.json()["state"]) == len(third.json()["state"])
    assert alice.memberships(other_room)[retry] == "join"
    joins = [
        e
        for e in alice.sync()["rooms"]["join"][other_room]["timeline"]["events"]
        if e.get("state_key") == retry
    ]
    assert len(joins) == 1
    # So is a leave sent twice.
    path = f"/_matrix/federation/v1/make_leave/{quote(other_room)}/{quote(retry)}"
    leave_event = signed_request("GET", b, a, path).json()["event"]
    leave_event = sign_event(leave_event, b.server_name, key, "10")
    leave_path = (
        f"/_matrix/federation/v2/send_leave/{quote(other_room)}/{compute_event_id(leave_event, '10')}"
    )
    for _ in range(2):
        r = signed_request("PUT", b, a, leave_path, leave_event)
        assert r.status_code == 200, r.text
        assert r.json() == {}
    assert alice.memberships(other_room)[retry] == "leave"


def test_bad_invites_are_refused(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    alice = User(a, "alice_badinv")
    room = f"!fake:{b.server_name}"
    key = signing_key(b)
    pdu = {
        "room_id": room,
        "sender": f"@m:{b.server_name}",
        "type": "m.room.member",
        "state_key": alice.user_id,
        "content": {"membership": "invite"},
        "origin_server_ts": int(time.time() * 1000),
        "depth": 3,
        "prev_events": [],
        "auth_events": [],
    }

    def invite(event: dict[str, Any], room_id: str = room, version: Any = "10") -> requests.Response:
        event_id = compute_event_id(event, "10")
        path = f"/_matrix/federation/v2/invite/{quote(room_id)}/{event_id}"
        return signed_request("PUT", b, a, path, {"event": event, "room_version": version})

    def refused(r: requests.Response, status: int, errcode: str) -> None:
        assert r.status_code == status, r.text
        assert r.json()["errcode"] == errcode, r.text

    refused(invite(sign_event(pdu, b.server_name, generate_signing_key("x"), "10")), 403, "M_FORBIDDEN")
    other = {**pdu, "sender": "@m:elsewhere"}
    refused(invite(sign_event(other, b.server_name, key, "10")), 403, "M_FORBIDDEN")
    refused(invite(sign_event(pdu, b.server_name, key, "10"), f"!other:{b.server_name}"), 400, "M_BAD_JSON")
    nobody = {**pdu, "state_key": f"@nobody:{a.server_name}"}
    refused(invite(sign_event(nobody, b.server_name, key, "10")), 404, "M_NOT_FOUND")
    refused(
        invite(sign_event(pdu, b.server_name, key, "10"), version="1"), 400, "M_INCOMPATIBLE_ROOM_VERSION"
    )
    assert alice.sync()["rooms"]["invite"] == {}
    # The genuine one is countersigned and shows.
    r = invite(sign_event(pdu, b.server_name, key, "10"))
    assert r.status_code == 200, r.text
    assert a.server_name in r.json()["event"]["signatures"]
    assert room in alice.sync()["rooms"]["invite"]


def test_two_of_our_users_join_a_remote_room_at_once(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    a, b = servers
    alice = User(a, "alice_twice")
    bobs = [User(b, "bob_twice1"), User(b, "bob_twice2")]
    room_id = alice.create_room("12", preset="public_chat")
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda u: u.call("POST", f"/join/{quote(room_id)}", {}, via=a.server_name), bobs)
        )
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    # The first join to reach Bob's server fetched the room; the other went through Alice's
    # server too (at once) or, once Bob's server was in the room, was built there (it reaches
    # Alice's server with the federation sender, not part of these tests). Either way Bob's
    # server stored the room once and holds both joins.
    members = bobs[1].memberships(room_id)
    assert members == {alice.user_id: "join", bobs[0].user_id: "join", bobs[1].user_id: "join"}
    assert "join" in {alice.memberships(room_id).get(u.user_id) for u in bobs}


def test_a_blocked_room_takes_no_remote_joins(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    a, b = servers
    made = subprocess.run(
        [str(Path(sys.executable).parent / "homeserver"), "admin", "create-user"]
        + ["-c", str(a.process.config_path), "--username", "root_join", "--password", "pw pw pw pw 42"]
        + ["--email", "root_join@example.org", "--admin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    root_token = a.process.login("root_join", "pw pw pw pw 42")["access_token"]
    alice = User(a, "alice_blocked")
    bob = User(b, "bob_blocked")
    room_id = alice.create_room("10", preset="public_chat")
    r = requests.put(
        a.process.url(f"/_synapse/admin/v1/rooms/{quote(room_id, safe='')}/block"),
        json={"block": True},
        headers={"Authorization": f"Bearer {root_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    r = bob.call("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)
    assert r.status_code == 403, r.text
    assert r.json()["errcode"] == "M_FORBIDDEN"
    assert bob.user_id not in alice.memberships(room_id)


@pytest.mark.parametrize("version", ["10", "12"])
def test_a_restricted_join_vouched_for_by_our_server(
    servers: tuple[FederatedServer, FederatedServer], version: str
) -> None:
    a, b = servers
    alice = User(a, f"alice_restr{version}")
    bob = User(b, f"bob_restr{version}")
    carol = User(b, f"carol_restr{version}")
    space = alice.create_room(version, preset="public_chat")
    bob.ok("POST", f"/join/{quote(space)}", {}, via=a.server_name)
    rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
    room_id = alice.create_room(
        version,
        preset="private_chat",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": rule}],
    )
    # Bob is in the allowed room: Alice's server names her as the authorising user and signs.
    bob.ok("POST", f"/join/{quote(room_id)}", {}, via=a.server_name)
    state = alice.ok("GET", f"/rooms/{quote(room_id)}/state")
    join = next(e for e in state if e["type"] == "m.room.member" and e["state_key"] == bob.user_id)
    assert join["content"]["membership"] == "join"
    assert join["content"]["join_authorised_via_users_server"] == alice.user_id
    # Carol is not: refused.
    r = carol.call("POST", f"/join/{quote(room_id)}", {}, via=a.server_name)
    assert r.status_code == 403, r.text
    assert carol.user_id not in alice.memberships(room_id)
