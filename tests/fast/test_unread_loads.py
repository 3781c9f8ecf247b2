"""Unread counts loaded in batches (core/unread.py): after a restart every member's first
read of a room loads its counts from the database; asked for together (a burst of first
messages, a login storm), they are read together, not one read each, and each pair gets
the counts its own read would have given."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path
from twisted.internet.defer import Deferred, gatherResults

from homeserver.storage.events import EventRow, UnreadQuery

MEMBERS = 12


@pytest_twisted.ensureDeferred
async def test_first_loads_asked_together_are_read_together(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        users = [await client.register(hs, f"u{i}") for i in range(MEMBERS)]
        owner = users[0]["access_token"]
        room_id = (await client.call("POST", "/createRoom", owner, {"preset": "public_chat"}))["room_id"]
        for user in users[1:]:
            await client.call("POST", f"/join/{room_id}", user["access_token"], {})
        # Member i sent i messages: each member's count differs (everyone's but their own).
        for i, user in enumerate(users):
            for _ in range(i):
                path = f"{room_path(room_id)}/send/m.room.message/{secrets.token_hex(4)}"
                await client.call("PUT", path, user["access_token"], {"msgtype": "m.text", "body": "hi"})
        total = sum(range(MEMBERS))
        expected = {u["user_id"]: total - i for i, u in enumerate(users)}

        # As after a restart: nothing in memory.
        unread = hs.unread
        unread._counts.clear()
        unread._by_user.clear()
        reads: list[int] = []
        real = hs.storage.events.unread_events_many

        async def counted(queries: list[UnreadQuery], limit: int) -> list[list[EventRow]]:
            reads.append(len(queries))
            return await real(queries, limit)

        hs.storage.events.unread_events_many = counted  # type: ignore[method-assign]
        asked = [Deferred.fromCoroutine(unread.counts(u["user_id"], room_id)) for u in users]
        asked.append(Deferred.fromCoroutine(unread.counts(users[1]["user_id"], room_id)))  # twice
        got = await gatherResults(asked)
        # The first is read at once, alone; all that were asked meanwhile in one more read.
        assert reads == [1, MEMBERS - 1]
        assert {u["user_id"]: c["notification_count"] for u, c in zip(users, got, strict=False)} == expected
        assert got[-1]["notification_count"] == expected[users[1]["user_id"]]
        # Kept: asking again reads nothing.
        assert (await unread.counts(users[5]["user_id"], room_id))["notification_count"] == expected[
            users[5]["user_id"]
        ]
        assert reads == [1, MEMBERS - 1]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_failed_read_fails_its_askers_and_the_next_ask_reads_again(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        room_id = (await client.call("POST", "/createRoom", alice["access_token"], {}))["room_id"]
        hs.unread._counts.clear()
        hs.unread._by_user.clear()
        real = hs.storage.events.unread_events_many
        fails = [True]

        async def flaky(queries: list[UnreadQuery], limit: int) -> Any:
            if fails[0]:
                raise RuntimeError("database gone")
            return await real(queries, limit)

        hs.storage.events.unread_events_many = flaky  # type: ignore[method-assign]
        try:
            await hs.unread.counts(alice["user_id"], room_id)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the failed read was answered")
        fails[0] = False
        assert await hs.unread.counts(alice["user_id"], room_id) == {
            "notification_count": 0,
            "highlight_count": 0,
        }
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_message_sent_while_a_load_waits_for_the_room_is_counted(tmp_path: Path) -> None:
    """A load that waits (here for the room's head) while a message is committed counts it:
    either its read sees the message or the inline pass finds the entry kept."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        room_id = (
            await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"})
        )["room_id"]
        await client.call("POST", f"/join/{room_id}", bob["access_token"], {})
        send = f"{room_path(room_id)}/send/m.room.message"
        await client.call("PUT", f"{send}/t1", alice["access_token"], {"msgtype": "m.text", "body": "one"})
        hs.unread._counts.clear()
        hs.unread._by_user.clear()
        heads = hs.unread.heads
        real_get = heads.get
        held: list[str] = []

        async def sending_meanwhile(room: str) -> Any:
            if not held:  # the load's call: a message is committed while it waits
                held.append(room)
                body = {"msgtype": "m.text", "body": "two"}
                await client.call("PUT", f"{send}/t2", alice["access_token"], body)
            return await real_get(room)

        heads.get = sending_meanwhile  # type: ignore[method-assign]
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 2
        assert held == [room_id]
        # Kept, and kept current: a third message counted without a read.
        await client.call("PUT", f"{send}/t3", alice["access_token"], {"msgtype": "m.text", "body": "3"})
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 3
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_one_bad_pair_fails_only_its_own_askers(tmp_path: Path) -> None:
    """A batch whose read fails because of one pair is read again pair by pair: the others
    asked with it get their counts, only the bad pair's askers get the error."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        users = [await client.register(hs, f"u{i}") for i in range(4)]
        room_id = (
            await client.call("POST", "/createRoom", users[0]["access_token"], {"preset": "public_chat"})
        )["room_id"]
        for user in users[1:]:
            await client.call("POST", f"/join/{room_id}", user["access_token"], {})
        path = f"{room_path(room_id)}/send/m.room.message/t1"
        await client.call("PUT", path, users[0]["access_token"], {"msgtype": "m.text", "body": "hi"})
        hs.unread._counts.clear()
        hs.unread._by_user.clear()
        bad = users[2]["user_id"]
        rules = hs.unread.rules
        real_program = rules.program

        async def program(user_id: str) -> Any:
            if user_id == bad:
                raise RuntimeError("this user's rules cannot be read")
            return await real_program(user_id)

        rules.program = program  # type: ignore[method-assign]
        asked = [Deferred.fromCoroutine(hs.unread.counts(u["user_id"], room_id)) for u in users]
        results: list[Any] = []
        for d in asked:
            try:
                results.append((await d)["notification_count"])
            except RuntimeError:
                results.append("error")
        # u0 sent the message (its own: 0); u1 and u3 were in the failed batch with u2.
        assert results == [0, 1, "error", 1]
    finally:
        await hs.stop(None)
