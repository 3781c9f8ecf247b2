"""Joins across servers with a real Synapse (1.163, over TLS checked against the test CA):
a Synapse user joins a room of ours, and our user joins a room on Synapse (room version
12, Synapse's default); each side's member list shows the other. Invites both ways."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests
from federation_harness import FederatedServer
from synapse import SynapseServer


class Client:
    def __init__(self, base: str, account: dict[str, Any]) -> None:
        self.base = base
        self.user_id: str = account["user_id"]
        self.token: str = account["access_token"]

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        r = requests.request(
            method,
            f"{self.base}/_matrix/client/v3{path}",
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=90,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def memberships(self, room_id: str) -> dict[str, str]:
        chunk = self.ok("GET", f"/rooms/{quote(room_id)}/members")["chunk"]
        return {ev["state_key"]: ev["content"]["membership"] for ev in chunk}


def test_a_synapse_user_joins_our_room(ours: FederatedServer, synapse: SynapseServer) -> None:
    alice = Client(ours.process.url(""), ours.process.register("alice_syn"))
    sam = Client(synapse.url(""), synapse.register("sam"))
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat", "name": "Ours"})["room_id"]
    sam.ok("POST", f"/join/{quote(room_id)}", {}, server_name=ours.server_name)
    assert alice.memberships(room_id) == {alice.user_id: "join", sam.user_id: "join"}
    assert sam.memberships(room_id) == {alice.user_id: "join", sam.user_id: "join"}
    name = sam.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.name")
    assert name == {"name": "Ours"}


def test_our_user_joins_a_v12_room_on_synapse(ours: FederatedServer, synapse: SynapseServer) -> None:
    sue = Client(synapse.url(""), synapse.register("sue"))
    bob = Client(ours.process.url(""), ours.process.register("bob_syn"))
    room_id = sue.ok("POST", "/createRoom", {"preset": "public_chat", "name": "Theirs"})["room_id"]
    assert ":" not in room_id  # a v12 room ID: the create event's hash
    bob.ok("POST", f"/join/{quote(room_id)}", {}, server_name=synapse.server_name)
    assert sue.memberships(room_id) == {sue.user_id: "join", bob.user_id: "join"}
    assert bob.memberships(room_id) == {sue.user_id: "join", bob.user_id: "join"}
    create = bob.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.create")
    assert create["room_version"] == "12"
    assert bob.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.name") == {"name": "Theirs"}


def test_invites_both_ways_with_synapse(ours: FederatedServer, synapse: SynapseServer) -> None:
    sue = Client(synapse.url(""), synapse.register("sue_inv"))
    dan = Client(ours.process.url(""), ours.process.register("dan_inv"))
    # Synapse's invite to our user: countersigned here, shown in his sync, accepted.
    theirs = sue.ok("POST", "/createRoom", {"preset": "private_chat", "name": "Invite only"})["room_id"]
    sue.ok("POST", f"/rooms/{quote(theirs)}/invite", {"user_id": dan.user_id})
    invite = dan.ok("GET", "/sync", timeout="0")["rooms"]["invite"][theirs]["invite_state"]["events"]
    assert any(e["type"] == "m.room.name" and e["content"]["name"] == "Invite only" for e in invite)
    dan.ok("POST", f"/rooms/{quote(theirs)}/join", {})
    assert sue.memberships(theirs) == {sue.user_id: "join", dan.user_id: "join"}
    # Ours to a Synapse user, who accepts through us.
    ours_room = dan.ok("POST", "/createRoom", {"preset": "private_chat", "room_version": "12"})["room_id"]
    dan.ok("POST", f"/rooms/{quote(ours_room)}/invite", {"user_id": sue.user_id})
    sue.ok("POST", f"/rooms/{quote(ours_room)}/join", {})
    assert dan.memberships(ours_room) == {dan.user_id: "join", sue.user_id: "join"}


def test_our_user_pages_back_into_history_held_by_synapse(
    ours: FederatedServer, synapse: SynapseServer
) -> None:
    """Backfill from Synapse: history from before our join comes by /backfill, checked, in
    order (docs/federation.md, "Backfill")."""
    sid = Client(synapse.url(""), synapse.register("sid_bf"))
    bea = Client(ours.process.url(""), ours.process.register("bea_bf"))
    room_id = sid.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    for i in range(8):  # Synapse limits a user to 10 messages at once
        sid.ok(
            "PUT",
            f"/rooms/{quote(room_id)}/send/m.room.message/bf{i}",
            {"msgtype": "m.text", "body": f"s{i}"},
        )
    bea.ok("POST", f"/join/{quote(room_id)}", {}, server_name=synapse.server_name)
    bodies: list[str] = []
    token = None
    for _ in range(20):
        params = {"dir": "b", "limit": "3", **({"from": token} if token else {})}
        page = bea.ok("GET", f"/rooms/{quote(room_id)}/messages", **params)
        bodies += [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
        token = page.get("end")
        if token is None:
            break
    assert bodies == [f"s{i}" for i in reversed(range(8))]
