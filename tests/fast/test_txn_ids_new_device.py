"""A device that a login has just made has sent nothing: its first send reads no transaction
ids from the database (core/txn_ids.py). A device whose id the client chose may have sent
before, so its ids are still read; and a retried transaction id still gets its first event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path


def count_reads(hs: Any) -> list[tuple[str, str]]:
    """Record each read of a device's recent transaction ids (and still do it)."""
    reads: list[tuple[str, str]] = []
    store = hs.events.txn_ids.store
    real = store.recent_txn_ids

    async def recent_txn_ids(user_id: str, device_id: str, since_ms: int) -> dict[str, str]:
        reads.append((user_id, device_id))
        return await real(user_id, device_id, since_ms)

    store.recent_txn_ids = recent_txn_ids
    return reads


@pytest_twisted.ensureDeferred
async def test_a_new_devices_first_send_reads_no_transaction_ids(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        room = (await client.call("POST", "/createRoom", alice["access_token"], {}))["room_id"]
        reads = count_reads(hs)
        path = room_path(room) + "/send/m.room.message/t1"
        body = {"msgtype": "m.text", "body": "hi"}
        first = await client.call("PUT", path, alice["access_token"], body)
        again = await client.call("PUT", path, alice["access_token"], body)
        assert again["event_id"] == first["event_id"]  # the retry: the same event, none new
        assert reads == []

        # A device id the client names may have been used before the server started: read.
        login = await hs.accounts.create_session(alice["user_id"], "OLDPHONE", None, False, None)
        token = login.tokens.access_token
        await client.call("PUT", room_path(room) + "/send/m.room.message/t1", token, body)
        assert reads == [(alice["user_id"], "OLDPHONE")]
    finally:
        await hs.stop(None)
