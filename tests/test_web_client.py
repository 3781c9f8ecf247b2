"""The web client (web/, docs/web-client.md) served by the homeserver at `/`.

- The static files: index.html at `/` and for the client's own routes, the wasm as
  application/wasm, hashed assets cached for good, ETags, 404s that stay Matrix errors
  for the API prefixes and for missing files, and the API still answering.
- In Chromium (tests/browser/web_client.mjs): two people sign up through the page, one
  logs out and in, they chat encrypted both ways, see unread counts and delivered and
  read ticks, reload; nothing fails to decrypt. The server stored only ciphertext for
  their messages.

Not in the fast tier (they start processes); the browser test takes about 30 s.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from browser import built_web_client, run_browser_script
from conftest import ServerProcess

PASSWORD = "correct horse battery"
CLIENT = "/_matrix/client/v3"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
HTML = "text/html,application/xhtml+xml"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A small stand-in for web/dist: the same layout, files of known content."""
    root = tmp_path / "dist"
    (root / "assets" / "pkg").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>client</title>")
    (root / "assets" / "app-ABC123.js").write_text("console.log('app')")
    (root / "assets" / "pkg" / "matrix_sdk_crypto_wasm_bg.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / ".secret").write_text("not served")
    (tmp_path / "outside.txt").write_text("not served either")
    return root


def test_the_server_serves_the_client_at_root_and_keeps_the_api(start_server: Any, dist: Path) -> None:
    server: ServerProcess = start_server({"web_client": {"enabled": True, "path": str(dist)}})

    index = requests.get(server.url("/"), timeout=10)
    assert index.status_code == 200 and index.text == "<!doctype html><title>client</title>"
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert index.headers["Cache-Control"] == "no-cache"

    wasm = requests.get(server.url("/assets/pkg/matrix_sdk_crypto_wasm_bg.wasm"), timeout=10)
    assert wasm.status_code == 200 and wasm.content == b"\0asm\1\0\0\0"
    assert wasm.headers["Content-Type"] == "application/wasm"
    assert wasm.headers["Cache-Control"] == "no-cache"
    again = requests.get(wasm.url, headers={"If-None-Match": wasm.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and again.content == b""

    script = requests.get(server.url("/assets/app-ABC123.js"), timeout=10)
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    head = requests.head(server.url("/assets/app-ABC123.js"), timeout=10)
    assert head.status_code == 200 and head.content == b""

    # A page load of one of the client's own routes gets index.html (room ids have dots).
    for path in ("/login", "/chat/%21abc%3Aexample.org"):
        page = requests.get(server.url(path), headers={"Accept": HTML}, timeout=10)
        assert page.status_code == 200 and page.text == index.text, path
    # A missing script is a 404, never the page; so are dotfiles and escapes from the root.
    for path in (
        "/assets/app-GONE.js",
        "/.secret",
        "/%2e%2e/outside.txt",
        "/assets/%2e%2e/%2e%2e/outside.txt",
    ):
        missing = requests.get(server.url(path), timeout=10)
        assert missing.status_code == 404 and missing.json()["errcode"] == "M_UNRECOGNIZED", path

    # The API keeps precedence and its own 404s and 405s, whatever the Accept header.
    versions = requests.get(server.url("/_matrix/client/versions"), headers={"Accept": HTML}, timeout=10)
    assert versions.status_code == 200 and "versions" in versions.json()
    for path in (
        "/_matrix/client/v3/nothing",
        "/_homeserver/nothing",
        "/api/nothing",
        "/.well-known/nothing",
    ):
        unknown = requests.get(server.url(path), headers={"Accept": HTML}, timeout=10)
        assert unknown.status_code == 404 and unknown.json()["errcode"] == "M_UNRECOGNIZED", path
    post = requests.post(server.url("/login"), json={}, timeout=10)
    assert post.status_code == 404 and post.json()["errcode"] == "M_UNRECOGNIZED"


def test_without_a_build_root_says_how_to_build_and_disabled_serves_nothing(
    start_server: Any, tmp_path: Path
) -> None:
    server: ServerProcess = start_server({"web_client": {"enabled": True, "path": str(tmp_path / "nowhere")}})
    page = requests.get(server.url("/"), timeout=10)
    assert page.status_code == 404 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "make web" in page.text and "make run" in page.text

    off: ServerProcess = start_server({"web_client": {"enabled": False, "path": str(tmp_path / "nowhere")}})
    root = requests.get(off.url("/"), headers={"Accept": HTML}, timeout=10)
    assert root.status_code == 404 and root.json()["errcode"] == "M_UNRECOGNIZED"


def stored_event_types(server: ServerProcess, token: str, room_id: str) -> list[str]:
    r = requests.get(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/messages"),
        params={"dir": "b", "limit": "200"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [e["type"] for e in reversed(r.json()["chunk"])]


def test_two_people_sign_up_and_chat_encrypted_in_the_web_client(start_server: Any, tmp_path: Path) -> None:
    dist = built_web_client()
    server: ServerProcess = start_server(
        {
            "web_client": {"enabled": True, "path": str(dist)},
            "encryption": {"enabled_by_default_for_room_type": "invite"},
        }
    )
    alice, bob = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)

    result = run_browser_script(
        "web_client.mjs", server.base_url, alice, bob, PASSWORD, str(shots), timeout=180
    )

    name = server.server_name
    assert result["signUp"]["alice"]["userId"] == f"@{alice}:{name}"
    assert result["signUp"]["bob"]["userId"] == f"@{bob}:{name}"
    assert result["encryptedShown"] == "End-to-end encrypted"
    assert result["bobInvitePreview"] == "Invitation"
    # Each reads the other's words, decrypted; Alice's message shows read by Bob.
    assert result["alice"]["messages"] == [
        {"body": "Hello Bob, this is encrypted", "mine": True, "failed": False, "tick": "read"},
        {"body": "Hi Alice! Reading you fine", "mine": False, "failed": False, "tick": None},
    ]
    assert [(m["body"], m["mine"], m["failed"]) for m in result["bob"]["messages"]] == [
        ("Hello Bob, this is encrypted", False, False),
        ("Hi Alice! Reading you fine", True, False),
    ]
    # The chat list: name, last message, unread count, gone once read.
    # ...and in the tab's title and the app badge, both cleared once read.
    assert result["aliceList"] == {
        "name": bob,
        "last": "Are you still there?",
        "unread": "1",
        "title": "(1) Chat",
        "badge": 1,
    }
    assert result["aliceUnreadAfterOpening"] is False
    assert result["aliceTitleAfterOpening"] == "Chat"
    assert result["aliceBadgeAfterOpening"] == 0
    # Bob's ticks on that message: delivered to Alice's device while unread, then read.
    last = {"body": "Are you still there?", "mine": True, "failed": False}
    assert result["bobTickBeforeAliceOpens"] == {**last, "tick": "delivered"}
    assert result["bobTickAfterAliceOpened"] == {**last, "tick": "read"}
    # A reload keeps the session, the open chat and every message readable.
    assert result["bobAfterReload"]["path"] == result["roomPath"]
    bodies = [m["body"] for m in result["bobAfterReload"]["messages"]]
    assert bodies == ["Hello Bob, this is encrypted", "Hi Alice! Reading you fine", "Are you still there?"]
    assert not [m for m in result["bobAfterReload"]["messages"] if m["failed"]]
    # Logout lands on login; logging in again reaches the (still empty) chat list.
    assert result["afterLogout"] == {"title": "Log in", "path": "/login"}
    assert result["afterLogin"] == {"path": "/", "list": "No chats yet: start one above."}
    assert result["problems"] == []

    # The server only ever had ciphertext for their messages.
    token = server.login(bob, PASSWORD)["access_token"]
    types = stored_event_types(server, token, result["roomId"])
    assert types[:1] == ["m.room.create"] and "m.room.encryption" in types
    assert types.count("m.room.encrypted") == 3 and "m.room.message" not in types, types
