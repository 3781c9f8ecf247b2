"""/sync delivers the presence of someone who becomes a room-mate after the first sync, even
though their presence did not change since then (the web client's chat list would otherwise
show them with no presence until they next go on- or offline). Both engines, plain HTTP."""

from __future__ import annotations

from typing import Any

from conftest import ServerProcess
from test_history_visibility import Client


def presence_of(client: Client, since: str, user_id: str) -> tuple[str, dict[str, Any] | None]:
    body = client.ok("GET", "/sync", params={"since": since, "timeout": "0"})
    found = [e["content"] for e in body["presence"]["events"] if e["sender"] == user_id]
    return body["next_batch"], found[-1] if found else None


def test_presence_of_a_new_room_mate_arrives_with_their_join(any_server: ServerProcess) -> None:
    alice = Client(any_server, "alice")
    bob = Client(any_server, "bob")
    bob.ok("PUT", f"/presence/{bob.user_id}/status", json={"presence": "online", "status_msg": "here"})
    since = alice.ok("GET", "/sync", params={"timeout": "0"})["next_batch"]
    # No shared room yet: Bob's presence is not Alice's business.
    since, seen = presence_of(alice, since, bob.user_id)
    assert seen is None

    room = alice.create_room("shared", preset="private_chat")
    alice.member("invite", room, bob.user_id)
    bob.join(room)
    since, seen = presence_of(alice, since, bob.user_id)
    assert seen is not None and seen["presence"] == "online" and seen.get("status_msg") == "here"
    # Once delivered, not again while it does not change.
    _, again = presence_of(alice, since, bob.user_id)
    assert again is None


def test_presence_of_members_arrives_when_i_join_their_room(any_server: ServerProcess) -> None:
    alice = Client(any_server, "alice")
    carol = Client(any_server, "carol")
    carol.ok("PUT", f"/presence/{carol.user_id}/status", json={"presence": "unavailable"})
    since = alice.ok("GET", "/sync", params={"timeout": "0"})["next_batch"]
    room = carol.create_room("shared", preset="private_chat")
    carol.member("invite", room, alice.user_id)
    alice.join(room)
    _, seen = presence_of(alice, since, carol.user_id)
    assert seen is not None and seen["presence"] == "unavailable"
