"""The admin dashboard's per-day numbers (core/daily_stats.py) with a test clock: each event
counts on its own UTC day, a finished day keeps its numbers when the clock moves on, and the
window is as long as asked."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, room_path

DAY_S = 24 * 3600


@pytest_twisted.ensureDeferred
async def test_days_follow_the_clock(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        room = (await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"}))[
            "room_id"
        ]
        await client.call("POST", f"/join/{room}", bob["access_token"], {})
        for i in range(3):
            body = {"msgtype": "m.text", "body": str(i)}
            await client.call(
                "PUT", f"{room_path(room)}/send/m.room.message/a{i}", alice["access_token"], body
            )
        invite = {"call_id": "c", "lifetime": 1000, "version": "1", "offer": {"type": "offer", "sdp": "x"}}
        await client.call("PUT", f"{room_path(room)}/send/m.call.invite/c1", alice["access_token"], invite)

        first = await hs.daily_stats.stats(7)
        assert len(first.days) == 7 and first.accounts == 2
        day1 = first.days[-1]
        # Both joined (bob's join is an event he sent); three messages; one call offered.
        assert (day1.signups, day1.active_users, day1.messages, day1.calls) == (2, 2, 3, 1)
        assert all((d.signups, d.messages) == (0, 0) for d in first.days[:-1])

        # The next day: one message from bob. Yesterday keeps its numbers.
        clock.advance(DAY_S + 60)  # past the 24-hour window of DAU too
        body = {"msgtype": "m.text", "body": "next day"}
        await client.call("PUT", f"{room_path(room)}/send/m.room.message/b1", bob["access_token"], body)
        second = await hs.daily_stats.stats(7)
        assert second.days[-2] == day1
        assert (second.days[-1].messages, second.days[-1].active_users, second.days[-1].signups) == (1, 1, 0)
        assert second.days[-1].date > day1.date
        # DAU/MAU are core/activity.py's: senders of the last 24 hours and users seen by
        # presence (sync, streams); alice only sent, more than 24 hours ago.
        assert (second.daily_active_users, second.monthly_active_users) == (1, 1)

        # A longer window reaches further back; a week later day 1 has left the 7-day window.
        assert len((await hs.daily_stats.stats(30)).days) == 30
        clock.advance(7 * DAY_S)
        later = await hs.daily_stats.stats(7)
        assert sum(d.messages for d in later.days) == 0
        assert (await hs.daily_stats.stats(30)).days[-9] == day1
    finally:
        await hs.stop(None)
