"""Reporting users: a user of another server (the spam an admin most needs to hear of)
can be reported although this server cannot look them up; an unknown user of this
server is 404."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_a_user_of_another_server_can_be_reported(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        path = f"{CS}/users/@spammer:elsewhere.example/report"
        status, answer = await client.start("POST", path, token, {"reason": "spam in DMs"})
        assert (status, answer) == (200, {})
        [report] = await hs.storage.reports.recent(10)
        assert (report.kind, report.target_user_id, report.reason) == (
            "user",
            "@spammer:elsewhere.example",
            "spam in DMs",
        )
        status, answer = await client.start(
            "POST", f"{CS}/users/@nobody:fast.test/report", token, {"reason": "x"}
        )
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    finally:
        await hs.stop(None)
