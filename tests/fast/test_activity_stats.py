"""Daily and monthly active users and messages per day (core/activity.py), with a test clock:
the windows move with the clock, and events outside them are not counted."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, room_path

DAY_S = 24 * 3600


@pytest_twisted.ensureDeferred
async def test_windows_follow_the_clock(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        carol = await client.register(hs, "carol")
        room = (await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"}))[
            "room_id"
        ]
        for i in range(3):
            body = {"msgtype": "m.text", "body": str(i)}
            await client.call(
                "PUT", f"{room_path(room)}/send/m.room.message/a{i}", alice["access_token"], body
            )
        # Bob syncs (active without sending); carol does nothing.
        status, _ = await client.sync(bob["access_token"])
        assert status == 200

        await hs.activity.refresh()
        assert (hs.activity.daily_active_users, hs.activity.monthly_active_users) == (2, 2)
        assert hs.activity.messages_last_day == 3

        # A day and more later: alice's messages and bob's sync have left the daily window.
        clock.advance(DAY_S + 60)
        await hs.activity.refresh()
        assert hs.activity.messages_last_day == 0
        body = {"msgtype": "m.text", "body": "later"}
        await client.call("POST", f"/join/{room}", carol["access_token"], {})
        await client.call("PUT", f"{room_path(room)}/send/m.room.message/c1", carol["access_token"], body)
        await hs.activity.refresh()
        assert hs.activity.messages_last_day == 1
        # Daily: carol (sent now). Monthly: bob (synced yesterday) and carol; alice only sent,
        # more than a day ago, which the monthly count does not look back at.
        assert (hs.activity.daily_active_users, hs.activity.monthly_active_users) == (1, 2)

        clock.advance(31 * DAY_S)
        await hs.activity.refresh()
        assert (hs.activity.daily_active_users, hs.activity.monthly_active_users) == (0, 0)
        assert hs.activity.messages_last_day == 0
    finally:
        await hs.stop(None)
