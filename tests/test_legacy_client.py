"""Element Web 1.11's own library against a real server: matrix-js-sdk 26 with libolm.

Element Web 1.11 (2023) is not installable here, but its library is (tests/js-legacy,
`npm ci` from the committed lock file). tests/js-legacy/element_web_1_11.mjs does, through
that library's API, what Element Web 1.11 did and once failed at: log in, chat in an
encrypted room (the other user decrypts), send an image (the r0 media paths: config,
upload, then download and thumbnail without a token, as an <img> loads them), set up
cross-signing (the `unstable` prefix, gated on `org.matrix.e2e_cross_signing`) and secure
backup (secret storage and a key backup version), and restore the room key on a new
device from the backup.

The server runs with the media plugin's `legacy_unauthenticated_download` on, as a server
that still serves such clients must: without it, /_matrix/media/r0/download answers
404 as v3 does (tests/test_compat.py).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from conftest import start_server_process
from js_runner import LEGACY_JS_DIR, node_or_skip, run_script
from test_media import media_plugin

PASSWORD = "legacy-" + secrets.token_urlsafe(8)


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    node = node_or_skip("@matrix-org/olm", LEGACY_JS_DIR)
    server = start_server_process(
        tmp_path_factory.mktemp("legacy-client"), media_plugin(legacy_unauthenticated_download=True)
    )
    try:
        alice, bob = (f"{name}{secrets.token_hex(3)}" for name in ("alice", "bob"))
        for name in (alice, bob):
            server.register(name, PASSWORD)
        return run_script(
            node, "element_web_1_11.mjs", server.url(""), alice, bob, PASSWORD, js_dir=LEGACY_JS_DIR
        )
    finally:
        server.stop()


def test_encrypted_chat_between_two_libolm_clients(legacy_run: dict[str, Any]) -> None:
    assert legacy_run["wire_type"] == "m.room.encrypted"
    assert legacy_run["algorithm"] == "m.megolm.v1.aes-sha2"
    assert legacy_run["bob_read"] and legacy_run["alice_read"]


def test_image_through_the_r0_media_paths(legacy_run: dict[str, Any]) -> None:
    assert legacy_run["upload_size"] == 2 * 1024 * 1024
    assert legacy_run["mxc_ok"]
    assert {"GET /_matrix/media/r0/config", "POST /_matrix/media/r0/upload"} <= set(legacy_run["requests"])
    assert legacy_run["download"] == {"url": "/_matrix/media/r0/download", "status": 200, "same": True}
    thumbnail = legacy_run["thumbnail"]
    assert thumbnail["url"] == "/_matrix/media/r0/thumbnail" and thumbnail["status"] == 200
    assert thumbnail["type"].startswith("image/") and thumbnail["bytes"] > 0


def test_cross_signing_through_the_unstable_prefix(legacy_run: dict[str, Any]) -> None:
    assert legacy_run["cross_signing_advertised"] is True
    assert "POST /_matrix/client/unstable/keys/device_signing/upload" in legacy_run["requests"]
    assert legacy_run["cross_signing_ready"] and legacy_run["bob_sees_master_key"]
    # The first upload needs no user-interactive auth (spec v1.11, MSC3967); replacing the
    # keys (Element's "Reset") asks for the password, and then others see the new master key.
    first, reset = legacy_run["uia"]
    assert first == "none needed"
    assert "m.login.password" in reset.split(" | ")
    assert legacy_run["reset_master_changed"]


def test_secure_backup_restored_on_a_new_device(legacy_run: dict[str, Any]) -> None:
    assert legacy_run["secret_storage_ready"]
    assert legacy_run["backup_version"] and legacy_run["backed_up_sessions"] >= 1
    assert legacy_run["fresh_sees_backup"]
    assert legacy_run["restored"]["imported"] >= 1
    assert legacy_run["fresh_read"]


def test_no_unknown_endpoint_and_no_server_error(legacy_run: dict[str, Any]) -> None:
    """Every request the library made was understood: no 404/405 M_UNRECOGNIZED (an endpoint
    it expects and we lack) and no 5xx. The only errors are the expected 404 M_NOT_FOUND of
    GET /room_keys/version while no backup exists, and the 401 that asks for the password
    before a cross-signing reset."""
    unexpected = [
        answer
        for answer in legacy_run["error_answers"]
        if not ("/room_keys/version -> 404 " in answer and "M_NOT_FOUND" in answer)
        and "/keys/device_signing/upload -> 401 " not in answer
    ]
    assert unexpected == []


def test_start_up_and_settings_calls(legacy_run: dict[str, Any]) -> None:
    startup = legacy_run["startup"]
    assert startup["password_login"] and startup["change_password"]
    assert startup["turn"] == {} and startup["protocols"] == {}  # no TURN, no bridges here
    assert startup["devices"] == 2  # registration's and this login's
    assert {"override", "underride", "content", "room", "sender"} <= set(startup["push_rules"])
    assert startup["pushers"] == [] and startup["threepids"] == []
    assert startup["display_name"] == "Alice (1.11)"
    assert startup["fetched"] == "m.room.encrypted"
