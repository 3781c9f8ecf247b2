"""The web client's messages (issue 17 point 3; docs/web-client.md) in Chromium.

tests/browser/web_messages.mjs: three people in an encrypted group see each other's
typing, who read a message, replies, edits, reactions, deletes and threads; messages
written offline are queued and sent once the connection returns; a send whose answer was
lost is resent with the same transaction id; a reload scrolls back through history. Here
the server's copy of the room is checked too: each of Carol's messages is stored once,
and as ciphertext.

Not in the fast tier (it starts the server and Chromium).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from browser import built_web_client, run_browser_script
from conftest import ServerProcess

PASSWORD = "correct horse battery"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def room_events(server: ServerProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    r = requests.get(
        server.url(f"/_matrix/client/v3/rooms/{quote(room_id)}/messages"),
        params={"dir": "b", "limit": "500"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["chunk"]))


def test_group_messages_in_the_web_client(start_server: Any, tmp_path: Path) -> None:
    dist = built_web_client()
    server: ServerProcess = start_server({"web_client": {"enabled": True, "path": str(dist)}})
    tag = secrets.token_hex(3)
    alice, bob, carol = f"alice{tag}", f"bob{tag}", f"carol{tag}"
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)

    result = run_browser_script(
        "web_messages.mjs", server.base_url, alice, bob, carol, PASSWORD, str(shots), timeout=240
    )
    assert result["problems"] == []

    # Typing: Alice sees both of the others typing, and nobody once they stop.
    assert result["typing"] == f"{bob} and {carol} are typing…"
    assert result["typingAfter"] == ""
    # Read per member: by Bob first, then by everyone (the tick turns to read).
    assert result["readByBob"]["readBy"] == f"Read by {bob}"
    assert result["readByBob"]["tick"] != "read"
    assert result["readByAll"]["readBy"] == f"Read by {bob}, {carol}"
    assert result["readByAll"]["tick"] == "read"
    # Reply: quoted with the original's sender and text, for both others.
    assert result["replyBanner"] == f"Replying to {alice}: Lunch at noon?"
    for seen in (result["replyAsAlice"], result["replyAsCarol"]):
        assert seen["sender"] == bob
        assert seen["quote"] == {"sender": alice, "body": "Lunch at noon?"}
    # Edit: the new text, marked edited; the old one is gone.
    assert result["editAsBob"]["edited"] is True and result["bobStillSeesOld"] == 0
    # Reactions: counted; Bob's own is marked and taken back.
    assert result["reactionsAsAlice"]["reactions"] == [{"text": "👍 2", "mine": False}]
    assert result["reactionsAsBob"]["reactions"] == [{"text": "👍 2", "mine": True}]
    assert result["reactionsAfterToggle"]["reactions"] == [{"text": "👍 1", "mine": False}]
    # Delete: shown as deleted, the text gone, for Alice and Bob.
    assert result["deleteAsAlice"]["before"] == "Oops, wrong chat"
    assert result["deleteAsAlice"]["after"]["body"] == "Message deleted"
    assert result["deleteAsAlice"]["after"]["deleted"] is True
    assert result["bobSeesOops"] == 0
    # Thread: the count on the root, the replies in the pane both ways, not in the chat.
    assert result["threadRootAsAlice"]["thread"] == "1 reply"
    assert result["threadAsAlice"]["sender"] == bob
    assert result["threadPaneAsBob"] == ["Lunch at 1pm?", "I may be late", "No problem"]
    assert result["threadClosedByEscape"] is True
    assert "I may be late" not in result["mainAsAlice"] and "No problem" not in result["mainAsAlice"]
    # Offline: queued on Carol's screen, nothing reached Alice, then both in order.
    assert [m["tick"] for m in result["offlineAsCarol"]] == ["queued", "queued"]
    assert result["offlineAsAlice"] == {"before": [], "after": ["Written offline 1", "Written offline 2"]}
    # The lost answer: the same PUT (same transaction id) twice, one event, shown once.
    puts = result["lostAnswer"]["puts"]
    assert len(puts) == 2 and puts[0]["path"] == puts[1]["path"], puts
    assert puts[0]["eventId"] == puts[1]["eventId"] and result["lostAnswerAsAlice"] == 1
    # After a reload, a reply to a message that did not load quotes it all the same.
    assert result["quoteAfterReload"]["originalLoaded"] == 0
    assert result["quoteAfterReload"]["reply"]["quote"] == {"sender": alice, "body": "history 1"}
    # History: older messages loaded on scrolling up, back to the first; the message at
    # the top stayed in view while they loaded.
    history = result["history"]
    assert history["before"]["text"] != "history 1"
    assert [b for b in history["all"] if b.startswith("history ")] == [f"history {i}" for i in range(1, 21)]
    assert 0 <= history["kept"]["top"] < history["kept"]["height"] and history["kept"]["scrollTop"] > 0

    # The server holds each of Carol's messages once (the deleted one, two written offline,
    # the one resent), all ciphertext; her reactions and deletes are not messages.
    token = server.login(alice, PASSWORD)["access_token"]
    events = room_events(server, token, result["roomId"])
    carols = [e for e in events if e["sender"] == result["userIds"]["carol"]]
    assert [e["type"] for e in carols if e["type"] == "m.room.encrypted"] == ["m.room.encrypted"] * 4
    assert "m.room.message" not in {e["type"] for e in events}
    assert puts[0]["eventId"] in {e["event_id"] for e in carols}
