"""An edit through the simple API (`PUT /api/messages/{chatId}/{messageId}`) is a send like
any other: a suspended account is refused it, and a shadow-banned account's edit reaches no
one. Edits skipped both checks (and the send rate limit), so a suspended user could still
rewrite every message they had sent, and a shadow-banned one could show new text to all."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_a_suspended_or_shadow_banned_account_cannot_change_what_others_see(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice, bob, room = await client.alice_and_bob(hs)
    status, sent = await client.start(
        "POST", "/api/messages/send", bob["access_token"], {"chatId": room, "content": "hello"}
    )
    assert status == 201
    edit_path = f"/api/messages/{room}/{sent['messageId']}"

    async def shown_to_alice() -> object:
        status, page = await client.start("GET", f"/api/messages/{room}", alice["access_token"])
        assert status == 200
        return next(m["content"] for m in page if m["messageId"] == sent["messageId"])

    await hs.admin.set_restriction(bob["user_id"], "suspended", True)
    status, answer = await client.start("PUT", edit_path, bob["access_token"], {"content": "suspended edit"})
    assert (status, answer["errcode"]) == (403, "M_USER_SUSPENDED")
    assert await shown_to_alice() == "hello"

    await hs.admin.set_restriction(bob["user_id"], "suspended", False)
    await hs.admin.set_restriction(bob["user_id"], "shadow_banned", True)
    status, _ = await client.start("PUT", edit_path, bob["access_token"], {"content": "shadow edit"})
    assert status == 200  # it looks done to bob
    assert await shown_to_alice() == "hello"
    await hs.stop(None)
