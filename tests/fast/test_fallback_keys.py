"""A device's fallback key: handed out when its one-time keys run out, and reported unused
in /sync until then, so the client knows when to replace it."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_uploading_a_used_fallback_key_again_does_not_mark_it_unused(
    tmp_path: Path, database_url: str
) -> None:
    hs = await make_server(tmp_path, TestClock(), database={"url": database_url})
    client = Client(hs)
    try:
        alice, bob = await client.register(hs, "alice"), await client.register(hs, "bob")
        token = alice["access_token"]

        async def unused_fallback_types() -> list[str]:
            status, body = await client.sync(token)
            assert status == 200
            types: list[str] = body["device_unused_fallback_key_types"]
            return types

        first = {"fallback_keys": {"signed_curve25519:F1": {"key": "f1"}}}
        await client.call("POST", "/keys/upload", token, first)
        assert await unused_fallback_types() == ["signed_curve25519"]
        # Bob finds no one-time key and gets the fallback key: it is used now.
        claim = {"one_time_keys": {alice["user_id"]: {alice["device_id"]: "signed_curve25519"}}}
        claimed = await client.call("POST", "/keys/claim", bob["access_token"], claim)
        assert claimed["one_time_keys"][alice["user_id"]][alice["device_id"]] == {
            "signed_curve25519:F1": {"key": "f1"}
        }
        assert await unused_fallback_types() == []
        # The same key again is still the used one; only a new key is unused.
        await client.call("POST", "/keys/upload", token, first)
        assert await unused_fallback_types() == []
        second = {"fallback_keys": {"signed_curve25519:F2": {"key": "f2"}}}
        await client.call("POST", "/keys/upload", token, second)
        assert await unused_fallback_types() == ["signed_curve25519"]
    finally:
        await hs.stop(None)
