"""Room authorisation and long-polls, on a clock the test moves: a kick wakes the kicked
user's long-poll at once, and later messages in the room neither wake nor reach them (their
next long-poll lasts its whole timeout and carries nothing of the room)."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, room_path, until

from homeserver.notifier import TIMEOUT_RESOLUTION_S


@pytest_twisted.ensureDeferred
async def test_a_long_poll_wakes_with_the_kick_and_not_after_it(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)
        _, first = await client.sync(bob["access_token"])

        poll = client.sync(bob["access_token"], first["next_batch"], 20_000)
        await until(lambda: hs.notifier.waiting_users() == 1, "bob's long-poll waits")
        kick = {"user_id": bob["user_id"]}
        await client.call("POST", f"{room_path(room_id)}/kick", alice["access_token"], kick)
        await until(lambda: poll.called, "the kick answered the long-poll without the clock moving")
        status, body = await poll
        assert status == 200
        assert room_id in body["rooms"]["leave"], body["rooms"]
        assert body["rooms"]["leave"][room_id]["timeline"]["events"][-1]["content"]["membership"] == "leave"

        # Later messages do not wake or reach them: the next poll lasts its whole timeout.
        quiet = client.sync(bob["access_token"], body["next_batch"], 1000)
        await until(lambda: hs.notifier.waiting_users() == 1, "bob's next long-poll waits")
        send = f"{room_path(room_id)}/send/m.room.message/after"
        await client.call("PUT", send, alice["access_token"], {"msgtype": "m.text", "body": "after the kick"})
        clock.advance(0.99)
        assert not quiet.called, "a message in a room bob left woke him"
        clock.advance(0.01 + TIMEOUT_RESOLUTION_S)
        await until(lambda: quiet.called, "the quiet poll answered at its timeout")
        _, later = await quiet
        assert room_id not in str(later["rooms"])
    finally:
        await hs.stop(None)
