"""Malformed end-to-end encryption requests get a Matrix error, never a 500."""

from __future__ import annotations

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
