"""Server-side key backup: keys written for a backup version that was deleted meanwhile (a
client resetting its backup while another device uploads) are not stored under it, where
nothing would ever read or delete them."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
KEY = {"first_message_index": 0, "forwarded_count": 0, "is_verified": False, "session_data": {"x": 1}}


@pytest_twisted.ensureDeferred
async def test_keys_for_a_version_deleted_meanwhile_are_not_stored(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token, user_id = alice["access_token"], alice["user_id"]
        created = await client.call(
            "POST", "/room_keys/version", token, {"algorithm": ALGORITHM, "auth_data": {}}
        )
        version = int(created["version"])
        store = hs.storage.e2ee
        # The upload checked the version, then the other device's delete commits first.
        assert await store.delete_backup_version(user_id, version)
        assert not await store.put_room_keys(user_id, version, [("!r:fast.test", "s1", KEY)])
        rows = await hs.storage.db.query(
            "count", "SELECT COUNT(*) FROM room_key_backups WHERE user_id = ?", user_id
        )
        assert rows[0][0] == 0

        # Through the API: no current version any more, 404.
        status, answer = await client.start(
            "PUT", f"{CS}/room_keys/keys/!r:fast.test/s1", token, KEY, version=str(version)
        )
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    finally:
        await hs.stop(None)
