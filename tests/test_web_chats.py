"""The web client's chats (issue 17 point 2; docs/web-client.md "Chats") in Chromium.

tests/browser/web_chats.mjs: three people create a group, accept, see admin marks,
presence and typing (once in the open chat, in its header; in the chat list), find people
and start a chat (by keyboard, phone-sized), search messages in an encrypted group (the
client's local index) and an unencrypted one (the server's /search), rename, remove,
leave. Here the server's side is checked too: /search finds the unencrypted message and
not the encrypted one (it only holds ciphertext).

Not in the fast tier (it starts the server and Chromium).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import requests
from browser import built_web_client, run_browser_script
from conftest import ServerProcess

PASSWORD = "correct horse battery"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def server_search(server: ServerProcess, token: str, term: str) -> list[str]:
    r = requests.post(
        server.url("/_matrix/client/v3/search"),
        json={"search_categories": {"room_events": {"search_term": term}}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [x["result"]["room_id"] for x in r.json()["search_categories"]["room_events"]["results"]]


def test_chats_in_the_web_client(start_server: Any, tmp_path: Path) -> None:
    dist = built_web_client()
    # The media plugin as in config/homeserver.yaml: inviting into an encrypted group, the
    # SDK uploads the room's key bundle for the invitee (shared history) before the invite.
    server: ServerProcess = start_server(
        {
            "web_client": {"enabled": True, "path": str(dist)},
            "plugins": [{"module": "plugins.media.MediaPlugin", "config": {}}],
        }
    )
    tag = secrets.token_hex(3)
    alice, bob, carol = f"alice{tag}", f"bob{tag}", f"carol{tag}"
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)

    result = run_browser_script(
        "web_chats.mjs", server.base_url, alice, bob, carol, PASSWORD, str(shots), timeout=240
    )
    assert result["problems"] == []
    ids = result["userIds"]
    group, direct, open_group = result["group"], result["direct"], result["open"]

    # The group from the form is encrypted; the one with the box unticked is not.
    assert result["groupE2e"] == "End-to-end encrypted" and result["openE2e"] == "Not encrypted"
    # Admin marks: Alice (the creator) is the admin, in her header and Bob's member list;
    # only she may remove people.
    assert result["myRoleAlice"] == "You: Admin" and result["myRoleBob"] == ""
    assert {m["userId"]: m["role"] for m in result["membersAsBob"]}[ids["alice"]] == "Admin"
    assert not any(m["removable"] for m in result["membersAsBob"])
    assert all(m["removable"] for m in result["membersAsAlice"])
    # A member may invite (private_chat lets anyone) but not rename (power level 50).
    assert result["panelAsCarol"] == ["Invite", "Leave group"]
    # People search by keyboard on the phone: Bob found, a one-to-one chat started.
    assert result["keyboardFocus"] == ids["bob"]
    assert direct not in (group, open_group)
    # Presence in the header and the list, then "last seen" once he went offline.
    assert result["presenceHeader"] == "online" and result["presenceList"] == "online"
    assert result["lastSeen"]["header"].startswith("last seen ")
    assert result["lastSeen"]["list"] == result["lastSeen"]["header"]
    # Typing: once in the open chat (the header, in place of presence), and in both lists.
    typing = f"{bob} is typing…"
    assert result["typing"] == {"header": typing, "inOpenChat": 1, "presenceWhileTyping": ""}
    assert result["typingListAlice"] == typing and result["typingListCarol"] == typing
    assert result["typingAfter"]["header"] == "" and result["typingAfter"]["presence"].startswith("3 members")
    # Search: people; the encrypted message (local index) and the unencrypted one (server).
    assert ids["bob"] in result["searchPeople"]["people"]
    assert result["searchEncrypted"]["messages"] == [{"roomId": group, "body": "Pineapple pizza tonight?"}]
    assert result["searchOpen"]["messages"] == [{"roomId": open_group, "body": "Kayak rental at nine"}]
    assert result["jump"] == {"roomId": group, "found": "Pineapple pizza tonight?"}
    assert result["phoneWidth"] <= 390 and result["phoneChatWidth"] <= 390
    # A moderator is marked so for the others (power level 50).
    assert result["moderatorAsCarol"] == {"userId": ids["bob"], "role": "Moderator", "removable": False}
    # Rename, remove, leave: seen by the others.
    assert result["renamed"] == {"header": "Weekend trip 2026", "list": "Weekend trip 2026"}
    assert result["removedAsCarol"] == f"{alice} removed you from this chat."
    assert result["carolListHasGroup"] == 0
    assert result["invited"] == {"done": f"Invited {ids['carol']}", "error": ""}
    assert result["badInvite"] == '"carol" is not a user id like @alice:example.org'
    assert result["reinvitedAsCarol"] == "Weekend trip 2026"
    assert result["membersAfter"] == []

    # The server finds the unencrypted message itself, and cannot find the encrypted one.
    token = server.login(alice, PASSWORD)["access_token"]
    assert server_search(server, token, "kayak") == [open_group]
    assert server_search(server, token, "pineapple") == []
