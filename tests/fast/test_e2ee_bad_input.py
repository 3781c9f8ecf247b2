"""Malformed end-to-end encryption requests get a Matrix error, never a 500."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_a_signature_upload_whose_signatures_are_not_an_object_is_a_failure(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        body = {alice["user_id"]: {alice["device_id"]: {"signatures": 5}}}
        status, result = await client.start(
            "POST", CS + "/keys/signatures/upload", alice["access_token"], body
        )
        assert status == 200, result
        failure = result["failures"][alice["user_id"]][alice["device_id"]]
        assert failure["errcode"] == "M_INVALID_SIGNATURE"
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_one_time_key_with_an_absurdly_long_id_is_refused(tmp_path: Path, database_url: str) -> None:
    # On PostgreSQL such an id overflowed the primary key's index entry: a 500.
    hs = await make_server(tmp_path, TestClock(), database={"url": database_url})
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        long_id = secrets.token_urlsafe(3000)
        for field, full_id in (
            ("one_time_keys", f"signed_curve25519:{long_id}"),
            ("one_time_keys", f"{long_id}:AAAAAQ"),
            ("fallback_keys", f"{long_id}:AAAAAQ"),
        ):
            body = {field: {full_id: {"key": "x"}}}
            status, result = await client.start("POST", CS + "/keys/upload", token, body)
            assert (status, result["errcode"]) == (400, "M_INVALID_PARAM"), (field, status, result)
        # Ordinary ids still go in, and nothing of the refused uploads was kept.
        body = {"one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "x"}}}
        counts = await client.call("POST", "/keys/upload", token, body)
        assert counts["one_time_key_counts"] == {"signed_curve25519": 1}
    finally:
        await hs.stop(None)
