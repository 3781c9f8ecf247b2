"""The web client's end-to-end encryption set-up (docs/web-client.md, "Encryption"), in
Chromium (tests/browser/web_e2ee.mjs):

- sign-up sets up cross-signing, secret storage and a key backup, and shows a recovery key
  once (copy, download, confirm before going on);
- a new device with the recovery key becomes verified and reads earlier messages from
  the key backup;
- a new device verified by emoji against another one (the same seven emoji on both, both
  confirm) becomes verified and reads earlier messages too;
- "they don't match" stops a verification on both sides, and a retry works;
- two people verify each other by emoji from the chat's member list and see a verified mark;
- both verifications go on after a garbage collection in the page that asked, while it
  waits for the other side (a page that kept no hold of its request stalled there, no
  emoji ever shown); a failed step prints each page's verification log;
- an account made before (no cross-signing) gets the set-up and a recovery key at login;
- no page ever shows "Unable to decrypt"; no console errors.

Not in the fast tier (it starts a server and a browser); it takes about 40 s.
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


def test_recovery_key_and_emoji_verification_bring_history_to_new_devices(
    start_server: Any, tmp_path: Path
) -> None:
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

    # An account made before, without cross-signing: it gets the set-up at its next login.
    carol = f"carol{secrets.token_hex(3)}"
    server.register(carol, PASSWORD)

    result = run_browser_script(
        "web_e2ee.mjs", server.base_url, alice, bob, PASSWORD, str(shots), carol, timeout=200
    )

    # Sign-up showed each a recovery key of their own (12 groups of 4), to save first.
    assert result["signUp"] == {
        "aliceKeyGroups": 12,
        "differentKeys": True,
        "continueDisabledUntilSaved": True,
        "copied": True,
        "downloaded": {"name": "recovery-key.txt", "holdsKey": True},
    }
    assert result["backedUp"] == 2
    history = ["Before the new devices", "Bob's reply, also encrypted"]

    # The recovery key: a wrong one is refused, the right one verifies and restores.
    assert result["newDeviceTitle"] == "Confirm it's you"
    assert result["badKeyError"] == "That is not a recovery key: check it and try again."
    assert result["recoveryKeyDone"] == "This device is verified ✓ 2 message keys restored."
    assert result["secondDevice"] == history

    # Emoji against the first device: "they don't match" stops it on both sides...
    cancelled = "The verification was cancelled or the emoji did not match."
    assert result["mismatch"] == {
        "newDevice": cancelled,
        "firstDevice": cancelled,
        "canRetry": True,
        "closedByEscape": True,
    }
    # ...the second try: the same seven on both; verified; history readable.
    assert result["incomingTitle"] == "Verify your new device"
    assert result["deviceEmoji"] == {"count": 7, "same": True}
    assert result["emojiDone"] == "This device is verified ✓ 2 message keys restored."
    assert result["firstDeviceSays"] == "Verified ✓"
    assert result["thirdDevice"] == history

    # Alice and Bob verify each other from the member list.
    assert result["bobIsAsked"].endswith("wants to verify you by comparing emoji.")
    assert result["userEmoji"] == {"count": 7, "same": True}
    assert result["marks"] == {"aliceSeesBob": "✓ Verified", "bobSeesAlice": "✓ Verified"}
    assert result["aliceAfter"] == [*history, "Verified both ways"]

    assert result["carolKeyGroups"] == 12
    assert result["undecryptable"] == {"alice": 0, "bob": 0, "alice-2": 0, "alice-3": 0}
    assert result["problems"] == []

    # What the server holds: Alice's three browser devices signed by her self-signing key,
    # and Bob's master key signed by Alice's user-signing key (and the other way round).
    name = server.server_name
    alice_id, bob_id = f"@{alice}:{name}", f"@{bob}:{name}"
    for me, other in ((alice_id, bob_id), (bob_id, alice_id)):
        token = server.login(me.split(":")[0][1:], PASSWORD)["access_token"]
        r = requests.post(
            server.url("/_matrix/client/v3/keys/query"),
            json={"device_keys": {alice_id: [], bob_id: []}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        keys = r.json()
        my_usk = next(iter(keys["user_signing_keys"][me]["keys"]))
        assert my_usk in keys["master_keys"][other]["signatures"][me], keys["master_keys"][other]
        if me == alice_id:
            ssk = next(iter(keys["self_signing_keys"][alice_id]["keys"]))
            signed = [
                d
                for d in keys["device_keys"][alice_id].values()
                if ssk in d.get("signatures", {}).get(alice_id, {})
            ]
            assert len(signed) == 3, keys["device_keys"][alice_id]
