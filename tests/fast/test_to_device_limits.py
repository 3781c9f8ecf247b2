"""sendToDevice from one ordinary account: `*` (every device of a user) must not multiply a
bounded body into an unbounded write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import CS, Client, TestClock, make_server

from homeserver.core.e2ee import MAX_TO_DEVICE_QUEUED_BYTES


async def _to_device(client: Client, token: str, since: str | None = None) -> tuple[list[Any], str]:
    status, body = await client.sync(token, since)
    assert status == 200
    return body.get("to_device", {}).get("events", []), body["next_batch"]


@pytest_twisted.ensureDeferred
async def test_a_star_send_is_bounded_after_expansion(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        mallory = await client.register(hs, "mallory")
        bob = await client.register(hs, "bob")
        carol = await client.register(hs, "carol")
        # Bob has many devices (a bot that logs in at every start, say).
        for _ in range(69):
            await hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        _, since = await _to_device(client, bob["access_token"])
        _, carol_since = await _to_device(client, carol["access_token"])

        async def send(txn: str, messages: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            path = f"{CS}/sendToDevice/m.test/{txn}"
            return await client.start("PUT", path, mallory["access_token"], {"messages": messages})

        # 60 KB to every one of 70 devices: a 60 KB request that would queue 4 MB.
        big = {"blob": "x" * 60_000}
        assert 70 * 60_000 > MAX_TO_DEVICE_QUEUED_BYTES
        status, body = await send("t1", {bob["user_id"]: {"*": big}})
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        # Nothing of it was queued, not even for the users named before.
        status, body = await send("t2", {carol["user_id"]: {"*": {"n": 1}}, bob["user_id"]: {"*": big}})
        assert status == 413
        events, _ = await _to_device(client, bob["access_token"], since)
        assert events == []
        events, _ = await _to_device(client, carol["access_token"], carol_since)
        assert events == []

        # What clients send with `*`: a small message, to each device of a few users.
        assert (await send("t3", {bob["user_id"]: {"*": {"n": 2}}, carol["user_id"]: {"*": {"n": 3}}}))[
            0
        ] == 200
        events, _ = await _to_device(client, bob["access_token"], since)
        assert [e["content"] for e in events] == [{"n": 2}]
        events, _ = await _to_device(client, carol["access_token"], carol_since)
        assert [e["content"] for e in events] == [{"n": 3}]
        queued = await hs.storage.db.query(
            "count", "SELECT COUNT(*) FROM to_device_messages WHERE user_id = ?", bob["user_id"]
        )
        assert queued[0][0] == 70  # one for each of his devices
    finally:
        await hs.stop(None)
