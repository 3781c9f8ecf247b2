"""Unread and highlight counts in /sync: messages from others after the read receipt, and
those that mention the user (m.mentions, else the user's localpart in the body)."""

from __future__ import annotations

import secrets
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def counts(server: ServerProcess, token: str, room_id: str) -> dict[str, int]:
    r = requests.get(server.url(f"{CS}/sync"), params={"timeout": "0"}, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    notif: dict[str, int] = r.json()["rooms"]["join"][room_id]["unread_notifications"]
    return notif


def send(server: ServerProcess, token: str, room_id: str, content: dict[str, Any]) -> str:
    r = requests.put(
        server.url(f"{CS}/rooms/{room_id}/send/m.room.message/{secrets.token_hex(6)}"),
        json={"msgtype": "m.text", **content},
        headers=auth(token),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def test_counts_follow_messages_mentions_and_receipts(any_server: ServerProcess) -> None:
    suffix = secrets.token_hex(4)
    alice = any_server.register("alice" + suffix)
    bob = any_server.register("Bob" + suffix.upper())
    carol = any_server.register("carol" + suffix)
    a, b, c = alice["access_token"], bob["access_token"], carol["access_token"]
    r = requests.post(
        any_server.url(f"{CS}/createRoom"), json={"preset": "public_chat"}, headers=auth(a), timeout=10
    )
    room_id = r.json()["room_id"]
    for token in (b, c):
        r = requests.post(any_server.url(f"{CS}/join/{room_id}"), json={}, headers=auth(token), timeout=10)
        assert r.status_code == 200, r.text
    # Load the counts into the server's memory first, so the updates on commit are what is tested.
    assert counts(any_server, b, room_id) == {"notification_count": 0, "highlight_count": 0}
    assert counts(any_server, c, room_id) == {"notification_count": 0, "highlight_count": 0}

    send(any_server, a, room_id, {"body": "hello all"})
    send(any_server, a, room_id, {"body": f"hey BOB{suffix}, look"})  # localpart, any case
    send(any_server, a, room_id, {"body": "explicit", "m.mentions": {"user_ids": [carol["user_id"]]}})
    # m.mentions present: the body's words no longer count.
    send(any_server, a, room_id, {"body": f"bob{suffix} again", "m.mentions": {}})
    last = send(any_server, a, room_id, {"body": "everyone", "m.mentions": {"room": True}})
    send(any_server, b, room_id, {"body": "bob's own message does not count for bob"})

    assert counts(any_server, b, room_id) == {"notification_count": 5, "highlight_count": 2}
    assert counts(any_server, c, room_id) == {"notification_count": 6, "highlight_count": 2}
    # Loaded from the database this time (alice never synced): the same rules.
    assert counts(any_server, a, room_id) == {"notification_count": 1, "highlight_count": 0}

    # A read receipt at the last message from alice leaves only what came after it.
    r = requests.post(
        any_server.url(f"{CS}/rooms/{room_id}/receipt/m.read/{last}"), json={}, headers=auth(c), timeout=10
    )
    assert r.status_code == 200, r.text
    assert counts(any_server, c, room_id) == {"notification_count": 1, "highlight_count": 0}
