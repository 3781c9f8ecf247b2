"""Paging to the start of history hands out no cursor: Matrix /messages (`end`),
/relations (`next_batch`) and the simple API's message list (`before`)."""

from __future__ import annotations

import secrets
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"


def new_user(server: ServerProcess) -> dict[str, Any]:
    return server.register(f"pager{secrets.token_hex(4)}")


def call(server: ServerProcess, user: dict[str, Any], method: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {user['access_token']}"}
    r = requests.request(method, server.url(path), headers=headers, timeout=10, **kw)
    assert r.status_code in (200, 201), r.text
    return r.json()


def page_through(fetch: Any, cursor_key: str, param: str) -> list[dict[str, Any]]:
    """Every page, following the cursor until it is absent (at most 100 pages)."""
    pages = [fetch({})]
    while cursor_key in pages[-1]:
        assert len(pages) < 100, "the cursor never ran out"
        pages.append(fetch({param: pages[-1][cursor_key]}))
    return pages


def test_messages_end_is_absent_once_the_oldest_event_was_returned(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    room = call(any_server, alice, "POST", f"{CS}/createRoom", json={"name": "paging"})["room_id"]
    for i in range(3):
        call(any_server, alice, "PUT", f"{CS}/rooms/{room}/send/m.room.message/t{i}", json={"body": str(i)})
    everything = call(
        any_server, alice, "GET", f"{CS}/rooms/{room}/messages", params={"dir": "b", "limit": 100}
    )
    assert "end" not in everything
    assert everything["chunk"][-1]["type"] == "m.room.create"

    for limit in (1, 2, len(everything["chunk"])):

        def fetch(extra: dict[str, Any], limit: int = limit) -> Any:
            params = {"dir": "b", "limit": limit, **extra}
            return call(any_server, alice, "GET", f"{CS}/rooms/{room}/messages", params=params)

        pages = page_through(fetch, "end", "from")
        # No empty page at the end: the last page holds the room's creation, and no cursor.
        assert pages[-1]["chunk"] and pages[-1]["chunk"][-1]["type"] == "m.room.create", limit
        ids = [e["event_id"] for p in pages for e in p["chunk"]]
        assert ids == [e["event_id"] for e in everything["chunk"]], limit


def test_relations_next_batch_is_absent_on_the_last_page(server: ServerProcess) -> None:
    alice = new_user(server)
    room = call(server, alice, "POST", f"{CS}/createRoom", json={})["room_id"]
    parent = call(server, alice, "PUT", f"{CS}/rooms/{room}/send/m.room.message/p", json={"body": "vote"})
    for i, key in enumerate(("a", "b")):
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": parent["event_id"], "key": key}}
        call(server, alice, "PUT", f"{CS}/rooms/{room}/send/m.reaction/r{i}", json=content)
    base = f"{V1}/rooms/{room}/relations/{parent['event_id']}"

    pages = page_through(
        lambda extra: call(server, alice, "GET", base, params={"limit": 1, **extra}), "next_batch", "from"
    )
    assert [len(p["chunk"]) for p in pages] == [1, 1]


def test_simple_api_before_is_absent_at_the_start_of_the_chat(any_server: ServerProcess) -> None:
    alice, bob = new_user(any_server), new_user(any_server)

    def send(text: str, **to: str) -> Any:
        return call(any_server, alice, "POST", "/api/messages/send", json={"content": text, **to})

    chat = send("one", receiverId=bob["user_id"])["chatId"]
    send("two", chatId=chat)
    send("three", chatId=chat)

    for limit in (1, 2, 3):
        # The first spec's bare array; the next page is the `Link` header's rel="next".
        pages: list[list[dict[str, Any]]] = []
        url: str | None = any_server.url(f"/api/messages/{chat}?limit={limit}")
        while url is not None and len(pages) < 5:
            r = requests.get(url, headers={"Authorization": f"Bearer {alice['access_token']}"}, timeout=10)
            assert r.status_code == 200, r.text
            pages.append(r.json())
            url = r.links.get("next", {}).get("url")
        assert url is None and all(pages), (limit, pages)
        assert [m["content"] for p in pages for m in p] == ["three", "two", "one"], limit
    # A single message and a page larger than the chat: no link either.
    lone = send("alone", receiverId=new_user(any_server)["user_id"])["chatId"]
    r = requests.get(
        any_server.url(f"/api/messages/{lone}"),
        params={"limit": 1},
        headers={"Authorization": f"Bearer {alice['access_token']}"},
        timeout=10,
    )
    assert [m["content"] for m in r.json()] == ["alone"] and "Link" not in r.headers
