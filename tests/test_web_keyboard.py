"""The newcomer's path (issue 17, "Done when") and point 8: phone size and keyboard.

The server starts from config/homeserver.yaml as it is, the way `make run` starts it (its
defaults: plain sign-up, encryption on for invite-only rooms, the media plugin, real rate
limits and password hashing), only on a free port and with its data in a temporary
directory. In Chromium (tests/browser/web_keyboard.mjs) two people open `/`, sign up and
chat, encrypted; one does it all by keyboard on a 390x844 window. Not in the fast tier.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml
from browser import built_web_client, run_browser_script
from conftest import ROOT, ServerProcess, free_port, start_server_with_config

PASSWORD = "correct horse battery"


def make_run_config(tmp_path: Path) -> dict[str, Any]:
    """config/homeserver.yaml unchanged but for the port and where its data lives."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "config" / "homeserver.yaml").read_text())
    config["listen"]["port"] = free_port()
    config["data_dir"] = str(tmp_path / "data")
    return config


def test_a_newcomer_signs_up_and_chats_encrypted_by_keyboard_on_a_phone(tmp_path: Path) -> None:
    dist = built_web_client()
    config = make_run_config(tmp_path)
    assert Path(ROOT / config["web_client"]["path"]).resolve() == dist.resolve()
    server: ServerProcess = start_server_with_config(tmp_path, config)
    try:
        tag = secrets.token_hex(3)
        result = run_browser_script(
            "web_keyboard.mjs", server.base_url, f"alice{tag}", f"bob{tag}", PASSWORD, timeout=240
        )
        # The server holds only ciphertext for their messages.
        token = server.login(f"bob{tag}", PASSWORD)["access_token"]
        r = requests.get(
            server.url(f"/_matrix/client/v3/rooms/{quote(result['roomId'])}/messages"),
            params={"dir": "b", "limit": "100"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        types = [e["type"] for e in r.json()["chunk"]]
    finally:
        server.stop()

    assert result["problems"] == []
    # Three messages and the call's signalling, all encrypted.
    assert types.count("m.room.encrypted") >= 3 and "m.room.message" not in types, types
    assert result["encrypted"] == "End-to-end encrypted"
    sent = ["Typed and sent with Enter", "Sent with the Send button", "Both arrived, encrypted"]
    assert result["alice"] == sent and result["bob"] == sent
    assert result["sawUnableToDecrypt"] == {"alice": False, "bob": False}
    # Tab goes from the message box to Send; the chat list items are in the Tab order.
    assert result["tabsComposerToSend"] == 1
    assert result["tabsToChatItem"] >= 1 and result["reopenedRoom"] == result["roomId"]
    assert result["callLogClosedByEscape"] is True
    assert result["newGroupEscape"] == "gp-new" and result["renameCancelledByEscape"] is True
    # No main screen scrolls sideways on the phone.
    assert result["sideways"] == {
        "signUp": 0,
        "chatList": 0,
        "chat": 0,
        "call": 0,
        "callLog": 0,
        "settings": 0,
    }
