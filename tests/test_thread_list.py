"""Threads: GET /v1/rooms/{roomId}/threads (include, paging, newest activity first, history
visibility, non-members refused) and the `m.thread` bundled aggregation on thread roots
(count, latest_event, current_user_participated) in /event, /context and /messages; its
roots agree with /sync's unread_thread_notifications."""

from __future__ import annotations

import json
import secrets
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(method: str, server: ServerProcess, token: str, path: str, **kwargs: Any) -> dict[str, Any]:
    r = requests.request(method, server.url(path), headers=auth(token), timeout=10, **kwargs)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def send(server: ServerProcess, token: str, room_id: str, body: str, thread: str | None = None) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if thread is not None:
        content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread, "is_falling_back": True}
    path = f"{CS}/rooms/{room_id}/send/m.room.message/{secrets.token_hex(6)}"
    return str(call("PUT", server, token, path, json=content)["event_id"])


def threads(server: ServerProcess, token: str, room_id: str, **params: Any) -> dict[str, Any]:
    return call("GET", server, token, f"{V1}/rooms/{room_id}/threads", params=params)


def test_thread_list_paging_participation_and_bundles(any_server: ServerProcess) -> None:
    s = any_server
    tag = secrets.token_hex(4)
    alice, bob, carol = (s.register(f"th{n}_{tag}") for n in ("a", "b", "c"))
    a, b, c = alice["access_token"], bob["access_token"], carol["access_token"]
    room = call("POST", s, a, f"{CS}/createRoom", json={"preset": "public_chat"})["room_id"]
    call("POST", s, b, f"{CS}/join/{room}", json={})

    root1 = send(s, a, room, "root 1")
    root2 = send(s, a, room, "root 2")
    root3 = send(s, b, room, "root 3 by bob")
    send(s, b, room, "main timeline, no thread")
    send(s, a, room, "reply in 2", thread=root2)
    reply1 = send(s, b, room, "bob in 1", thread=root1)
    send(s, b, room, "bob in 3", thread=root3)
    # A redacted reply no longer counts.
    gone = send(s, b, room, "oops", thread=root3)
    call("PUT", s, b, f"{CS}/rooms/{room}/redact/{gone}/x{tag}", json={})

    # Newest activity first, two per page.
    page = threads(s, b, room, limit=2)
    assert [ev["event_id"] for ev in page["chunk"]] == [root3, root1]
    rest = threads(s, b, room, limit=2, **{"from": page["next_batch"]})
    assert [ev["event_id"] for ev in rest["chunk"]] == [root2] and "next_batch" not in rest

    bundle = page["chunk"][1]["unsigned"]["m.relations"]["m.thread"]
    assert bundle["count"] == 1
    assert bundle["latest_event"]["event_id"] == reply1
    assert bundle["latest_event"]["content"]["body"] == "bob in 1"
    assert bundle["current_user_participated"] is True
    assert page["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"] == 1  # the redacted one is gone

    # Participation is the reader's: Alice neither started nor replied in thread 3.
    assert [ev["event_id"] for ev in threads(s, a, room, include="participated")["chunk"]] == [root1, root2]
    assert [ev["event_id"] for ev in threads(s, b, room, include="participated")["chunk"]] == [root3, root1]
    for_alice = {ev["event_id"]: ev for ev in threads(s, a, room)["chunk"]}
    assert for_alice[root3]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"] is False

    # The same bundle wherever the root is served.
    event = call("GET", s, a, f"{CS}/rooms/{room}/event/{root1}")
    assert event["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"] == reply1
    context = call("GET", s, a, f"{CS}/rooms/{room}/context/{root1}", params={"limit": 2})
    assert context["event"]["unsigned"]["m.relations"]["m.thread"]["count"] == 1
    messages = call("GET", s, a, f"{CS}/rooms/{room}/messages", params={"dir": "b", "limit": 50})
    by_id = {ev["event_id"]: ev for ev in messages["chunk"]}
    assert by_id[root2]["unsigned"]["m.relations"]["m.thread"]["count"] == 1
    assert "m.thread" not in by_id[reply1].get("unsigned", {}).get("m.relations", {})

    # /sync and sliding sync timelines too, as each reader sees it.
    synced_timeline = call("GET", s, b, f"{CS}/sync")["rooms"]["join"][room]["timeline"]["events"]
    in_sync = {ev["event_id"]: ev for ev in synced_timeline}
    assert in_sync[root3]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"] is True
    sliding = call(
        "POST",
        s,
        a,
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
        json={"room_subscriptions": {room: {"timeline_limit": 20}}},
    )
    in_sliding = {ev["event_id"]: ev for ev in sliding["rooms"][room]["timeline"]}
    assert in_sliding[root1]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"] == reply1
    assert in_sliding[root3]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"] is False

    # Carol was never in the room: refused.
    r = requests.get(s.url(f"{V1}/rooms/{room}/threads"), headers=auth(c), timeout=10)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
    for params in ({"include": "mine"}, {"from": "nonsense"}, {"limit": "ten"}):
        r = requests.get(s.url(f"{V1}/rooms/{room}/threads"), params=params, headers=auth(a), timeout=10)
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", (params, r.text)
    r = requests.get(s.url(f"{V1}/rooms/{room}/threads"), timeout=10)
    assert r.status_code == 401

    # /sync's per-thread counts are keyed by the same roots: Alice's reply notifies Bob in thread 2.
    sync_filter = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})
    synced = call("GET", s, b, f"{CS}/sync", params={"filter": sync_filter})
    counts = synced["rooms"]["join"][room]["unread_thread_notifications"]
    assert set(counts) == {root2}
    assert set(counts) <= {ev["event_id"] for ev in threads(s, b, room)["chunk"]}


def test_a_former_member_sees_threads_as_they_were_when_they_left(server: ServerProcess) -> None:
    s = server
    tag = secrets.token_hex(4)
    alice, dave = s.register(f"tha_{tag}"), s.register(f"thd_{tag}")
    a, d = alice["access_token"], dave["access_token"]
    room = call("POST", s, a, f"{CS}/createRoom", json={"preset": "public_chat"})["room_id"]
    put_path = f"{CS}/rooms/{room}/state/m.room.history_visibility/"
    call("PUT", s, a, put_path, json={"history_visibility": "joined"})
    call("POST", s, d, f"{CS}/join/{room}", json={})
    root = send(s, a, room, "root")
    seen_reply = send(s, a, room, "while dave is here", thread=root)
    call("POST", s, d, f"{CS}/rooms/{room}/leave", json={})
    send(s, a, room, "after dave left", thread=root)
    later_root = send(s, a, room, "a thread dave never saw")
    send(s, a, room, "reply", thread=later_root)

    chunk = threads(s, d, room)["chunk"]
    assert [ev["event_id"] for ev in chunk] == [root]
    bundle = chunk[0]["unsigned"]["m.relations"]["m.thread"]
    assert bundle["count"] == 1 and bundle["latest_event"]["event_id"] == seen_reply
    assert bundle["current_user_participated"] is False
    assert threads(s, a, room)["chunk"][1]["unsigned"]["m.relations"]["m.thread"]["count"] == 2
