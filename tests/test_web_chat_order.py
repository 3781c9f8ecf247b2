"""The chat list holds its order while the user aims at it (docs/web-client.md, "Chat list").

A chat with news used to jump to the top at once, shifting the rows under a resting pointer,
so a click opened the chat that had just moved there (tests/browser/web_chats.mjs clicked a
renamed group's old place and opened another chat). In Chromium
(tests/browser/web_chat_order.mjs): Alice's pointer rests on a row while Bob writes into
another chat; that chat's row shows the message and its unread count in place, the rows
stay, and a click opens the chat under the pointer; once the pointer leaves, the list
re-sorts. The same for a row focused by keyboard, until Enter opens it.

Not in the fast tier (it starts the server and Chromium).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import requests
from browser import built_web_client, run_browser_script
from conftest import ServerProcess

PASSWORD = "correct horse battery"
NAMES = ["Allotment", "Book club", "Climbing", "Darts"]


def call(server: ServerProcess, token: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.request(
        method, server.url(path), json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_the_chat_list_keeps_its_order_under_the_pointer(start_server: Any) -> None:
    dist = built_web_client()
    server: ServerProcess = start_server({"web_client": {"enabled": True, "path": str(dist)}})
    tag = secrets.token_hex(3)
    alice_name = f"alice{tag}"
    alice = server.register(alice_name, PASSWORD)
    bob = server.register(f"bob{tag}", PASSWORD)

    # Four unencrypted groups Bob made and Alice joined, each with one message from Bob,
    # written in this order: Alice's list starts "Darts", "Climbing", "Book club", "Allotment".
    rooms: dict[str, str] = {}
    for n, name in enumerate(NAMES):
        room_id = call(
            server,
            bob["access_token"],
            "POST",
            "/_matrix/client/v3/createRoom",
            {"name": name, "preset": "private_chat", "invite": [alice["user_id"]]},
        )["room_id"]
        call(server, alice["access_token"], "POST", f"/_matrix/client/v3/join/{room_id}", {})
        call(
            server,
            bob["access_token"],
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/setup{n}",
            {"msgtype": "m.text", "body": f"Welcome to {name}"},
        )
        rooms[name] = room_id
    allotment, book_club, climbing, darts = (rooms[name] for name in NAMES)

    result = run_browser_script(
        "web_chat_order.mjs", server.base_url, alice_name, PASSWORD, bob["access_token"], json.dumps(rooms)
    )
    assert result["problems"] == []
    assert result["before"] == [darts, climbing, book_club, allotment]
    # The pointer rests on "Climbing". Bob writes into "Allotment": its row shows the
    # message and 2 unread where it is; the rows stay; the click opens "Climbing".
    assert result["pointerOver"] == climbing
    assert result["held"] == {"order": [darts, climbing, book_club, allotment], "rowUnderPointer": climbing}
    assert result["clicked"] == {"roomId": climbing, "title": "Climbing"}
    # The pointer leaves the list: "Allotment" goes to the top.
    assert result["afterLeave"] == [allotment, darts, climbing, book_club]
    # Keyboard focus on "Darts" holds the rows too while Bob writes into "Book club"; Enter
    # opens "Darts"; focus leaves the list for the message box and it re-sorts.
    assert result["keyboardFocus"] == darts
    assert result["heldByKeyboard"] == {"order": [allotment, darts, climbing, book_club], "focused": darts}
    assert result["entered"] == {"roomId": darts, "title": "Darts"}
    assert result["afterEnter"] == [book_club, allotment, darts, climbing]
