"""Edits, reactions and replies: bundled aggregations and /relations (spec: Client-Server API,
"Forming relationships between events")."""

from __future__ import annotations

import secrets
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put(server: ServerProcess, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.put(server.url(path), json=body, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def get(server: ServerProcess, token: str, path: str) -> dict[str, Any]:
    r = requests.get(server.url(path), headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def send(server: ServerProcess, token: str, room_id: str, event_type: str, content: dict[str, Any]) -> str:
    txn = secrets.token_hex(6)
    return str(put(server, token, f"{CS}/rooms/{room_id}/send/{event_type}/{txn}", content)["event_id"])


def react(server: ServerProcess, token: str, room_id: str, target: str, key: str) -> str:
    relates = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}
    return send(server, token, room_id, "m.reaction", relates)


def test_reactions_edits_and_relations(any_server: ServerProcess) -> None:
    tag = secrets.token_hex(4)
    alice = any_server.register(f"rel_a_{tag}")
    bob = any_server.register(f"rel_b_{tag}")
    carol = any_server.register(f"rel_c_{tag}")
    a, b, c = alice["access_token"], bob["access_token"], carol["access_token"]
    r = requests.post(
        any_server.url(f"{CS}/createRoom"), json={"preset": "public_chat"}, headers=auth(a), timeout=10
    )
    room_id = r.json()["room_id"]
    for token in (b, c):
        assert requests.post(any_server.url(f"{CS}/join/{room_id}"), headers=auth(token), timeout=10).ok

    message = send(any_server, a, room_id, "m.room.message", {"msgtype": "m.text", "body": "lunch?"})
    thumbs_b = react(any_server, b, room_id, message, "👍")
    react(any_server, c, room_id, message, "👍")
    react(any_server, c, room_id, message, "❤️")
    # Bob takes his thumbs-up back: redacted reactions stop counting.
    put(any_server, b, f"{CS}/rooms/{room_id}/redact/{thumbs_b}/undo", {})
    thumbs_b2 = react(any_server, b, room_id, message, "🎉")

    # Two edits by the sender and one "edit" by someone else: the latest of the sender's wins.
    for text in ("lunch at 12?", "lunch at 1?"):
        send(
            any_server,
            a,
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": f"* {text}",
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": message},
            },
        )
    send(
        any_server,
        b,
        room_id,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* hijacked",
            "m.new_content": {"msgtype": "m.text", "body": "hijacked"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": message},
        },
    )
    reply = send(
        any_server,
        b,
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": "yes", "m.relates_to": {"m.in_reply_to": {"event_id": message}}},
    )

    event = get(any_server, b, f"{CS}/rooms/{room_id}/event/{message}")
    relations = event["unsigned"]["m.relations"]
    assert relations["m.replace"]["content"]["m.new_content"]["body"] == "lunch at 1?"
    assert relations["m.replace"]["sender"] == alice["user_id"]
    counts = {(e["key"], e["count"]) for e in relations["m.annotation"]["chunk"]}
    assert counts == {("👍", 1), ("❤️", 1), ("🎉", 1)}

    # /messages carries the same aggregations.
    chunk = get(any_server, c, f"{CS}/rooms/{room_id}/messages?dir=b&limit=50")["chunk"]
    original = next(e for e in chunk if e["event_id"] == message)
    assert (
        original["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"] == "lunch at 1?"
    )

    # /relations: all children, by type, and paginated.
    base = f"{V1}/rooms/{room_id}/relations/{message}"
    all_children = get(any_server, a, base)["chunk"]
    assert thumbs_b2 in {e["event_id"] for e in all_children}
    assert reply not in {e["event_id"] for e in all_children}  # a reply is not a relation
    annotations = get(any_server, a, f"{base}/m.annotation/m.reaction")["chunk"]
    assert sorted(e["content"]["m.relates_to"]["key"] for e in annotations) == sorted(["👍", "❤️", "🎉"])
    first = get(any_server, a, f"{base}/m.annotation?limit=2")
    assert len(first["chunk"]) == 2 and "next_batch" in first
    rest = get(any_server, a, f"{base}/m.annotation?limit=10&from={first['next_batch']}")
    ids = [e["event_id"] for e in first["chunk"] + rest["chunk"]]
    assert len(ids) == len(set(ids)) == 3  # the redacted reaction no longer relates
    edits = get(any_server, a, f"{base}/m.replace")["chunk"]
    assert len(edits) == 3


def test_relations_need_membership(any_server: ServerProcess) -> None:
    tag = secrets.token_hex(4)
    alice = any_server.register(f"rel_d_{tag}")
    mallory = any_server.register(f"rel_m_{tag}")
    r = requests.post(
        any_server.url(f"{CS}/createRoom"), json={}, headers=auth(alice["access_token"]), timeout=10
    )
    room_id = r.json()["room_id"]
    message = send(
        any_server, alice["access_token"], room_id, "m.room.message", {"msgtype": "m.text", "body": "x"}
    )
    r = requests.get(
        any_server.url(f"{V1}/rooms/{room_id}/relations/{message}"),
        headers=auth(mallory["access_token"]),
        timeout=10,
    )
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
