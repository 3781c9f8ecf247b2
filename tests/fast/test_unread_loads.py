"""Unread counts loaded in batches (core/unread.py): after a restart every member's first
read of a room loads its counts from the database; asked for together (a burst of first
messages, a login storm), they are read together, not one read each, and each pair gets
the counts its own read would have given."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server, room_path
from twisted.internet.defer import Deferred, gatherResults

from homeserver.core.unread import MAX_LOAD_READS
from homeserver.storage.events import UnreadQuery, UnreadRows

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

        async def counted(queries: list[UnreadQuery], limit: int, upto: int) -> list[UnreadRows]:
            reads.append(len(queries))
            return await real(queries, limit, upto)

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

        async def flaky(queries: list[UnreadQuery], limit: int, upto: int) -> Any:
            if fails[0]:
                raise RuntimeError("database gone")
            return await real(queries, limit, upto)

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
        alice, bob, room_id = await client.alice_and_bob(hs)
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
        real_programs = rules.programs

        async def programs(user_ids: Iterable[str]) -> Any:
            wanted = list(user_ids)
            if bad in wanted:
                raise RuntimeError("this user's rules cannot be read")
            return await real_programs(wanted)

        rules.programs = programs  # type: ignore[method-assign]
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


# While a load's read is in flight ---------------------------------------------------------


class HeldRead:
    """Holds the first unread read, before or after the real one runs, until `release`."""

    def __init__(self, hs: Any, when: str = "after") -> None:
        self.real = hs.storage.events.unread_events_many
        self.when = when
        self.reads = 0
        self.reached: Deferred[None] = Deferred()
        self.gate: Deferred[None] = Deferred()
        hs.storage.events.unread_events_many = self.read

    async def read(self, queries: list[UnreadQuery], limit: int, upto: int) -> list[UnreadRows]:
        self.reads += 1
        if self.reads > 1:
            return await self.real(queries, limit, upto)
        if self.when == "before":
            self.reached.callback(None)
            await self.gate
        rows = await self.real(queries, limit, upto)
        if self.when == "after":
            self.reached.callback(None)
            await self.gate
        return rows

    def release(self) -> None:
        self.gate.callback(None)


async def two_in_a_room(hs: Any, client: Client, messages: int) -> tuple[dict[str, str], dict[str, str], str]:
    """Alice and Bob in a room, Alice's `messages` sent, nothing kept in memory (a restart)."""
    alice = await client.register(hs, "alice")
    bob = await client.register(hs, "bob")
    owner = alice["access_token"]
    room_id = (await client.call("POST", "/createRoom", owner, {"preset": "public_chat"}))["room_id"]
    await client.call("POST", f"/join/{room_id}", bob["access_token"], {})
    for i in range(messages):
        await say(client, alice, room_id, f"m{i}")
    hs.unread._counts.clear()
    hs.unread._by_user.clear()
    return alice, bob, room_id


async def say(client: Client, user: dict[str, str], room_id: str, body: str) -> str:
    path = f"{room_path(room_id)}/send/m.room.message/{secrets.token_hex(4)}"
    sent = await client.call("PUT", path, user["access_token"], {"msgtype": "m.text", "body": body})
    return str(sent["event_id"])


@pytest_twisted.ensureDeferred
async def test_a_receipt_during_a_load_is_counted_from(tmp_path: Path) -> None:
    """A read receipt stored while Bob's count is being read (after the read saw the old
    receipt) leaves him nothing unread: the load is read again, not kept with the old count."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room_id = await two_in_a_room(hs, client, 0)
        last = ""
        for i in range(3):
            last = await say(client, alice, room_id, f"m{i}")
        held = HeldRead(hs)
        asked = Deferred.fromCoroutine(hs.unread.counts(bob["user_id"], room_id))
        await held.reached
        await client.call("POST", f"{room_path(room_id)}/receipt/m.read/{last}", bob["access_token"], {})
        held.release()
        assert (await asked)["notification_count"] == 0
        assert held.reads == 2
        # Kept and current from there.
        await say(client, alice, room_id, "after")
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 1
        assert held.reads == 2
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_rule_change_during_a_load_counts_with_the_new_rules(tmp_path: Path) -> None:
    """Bob mutes the room (a room rule with no actions) while his count is being read with
    his old rules: he is answered, and kept, with the muted room's count."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room_id = await two_in_a_room(hs, client, 3)
        held = HeldRead(hs)
        asked = Deferred.fromCoroutine(hs.unread.counts(bob["user_id"], room_id))
        await held.reached
        mute = f"/pushrules/global/room/{quote(room_id)}"
        await client.call("PUT", mute, bob["access_token"], {"actions": []})
        held.release()
        assert (await asked)["notification_count"] == 0
        await say(client, alice, room_id, "still muted")
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 0
    finally:
        await hs.stop(None)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest_twisted.ensureDeferred
async def test_a_message_committed_during_a_read_is_counted_once(
    tmp_path: Path, database_url: str, when: str
) -> None:
    """A message committed while the read is held, before it ran (its snapshot may see the
    message) or after (it did not): counted once either way, on each engine, and the count
    is kept current after."""
    hs = await make_server(tmp_path, TestClock(), database={"url": database_url})
    client = Client(hs)
    try:
        alice, bob, room_id = await two_in_a_room(hs, client, 2)
        held = HeldRead(hs, when)
        asked = Deferred.fromCoroutine(hs.unread.counts(bob["user_id"], room_id))
        await held.reached
        await say(client, alice, room_id, "meanwhile")
        held.release()
        assert (await asked)["notification_count"] == 3
        await say(client, alice, room_id, "after")
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 4
        assert held.reads == 1
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_rule_change_while_the_old_rules_are_read_keeps_the_new_ones(tmp_path: Path) -> None:
    """Bob's stored rules are being read for a load when he mutes the room: the rules read
    before the edit are not kept over the edit's, so the load, read again, counts 0."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room_id = await two_in_a_room(hs, client, 3)
        keyword = "/pushrules/global/content/lunch"
        await client.call("PUT", keyword, bob["access_token"], {"pattern": "lunch", "actions": ["notify"]})
        hs.push_rules.cached_programs.clear()  # as after a restart: his rules are read again
        account_data = hs.push_rules.account_data
        real = account_data.get_global_many
        reached: Deferred[None] = Deferred()
        gate: Deferred[None] = Deferred()

        async def held(user_ids: list[str], data_type: str) -> Any:
            rows = await real(user_ids, data_type)
            if not reached.called:
                reached.callback(None)
                await gate
            return rows

        account_data.get_global_many = held
        asked = Deferred.fromCoroutine(hs.unread.counts(bob["user_id"], room_id))
        await reached
        await client.call(
            "PUT", f"/pushrules/global/room/{quote(room_id)}", bob["access_token"], {"actions": []}
        )
        gate.callback(None)
        assert (await asked)["notification_count"] == 0
        await say(client, alice, room_id, "still muted")
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 0
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_batch_reads_its_users_stored_rules_in_one_query(tmp_path: Path) -> None:
    """Members who edited their rules (their own rules are not in memory after a restart) have
    them read together for a batch of loads, and each is counted with their own."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        users = [await client.register(hs, f"u{i}") for i in range(5)]
        owner = users[0]["access_token"]
        room_id = (await client.call("POST", "/createRoom", owner, {"preset": "public_chat"}))["room_id"]
        for user in users[1:]:
            await client.call("POST", f"/join/{room_id}", user["access_token"], {})
            # Each mutes something else; u4 mutes this room.
            muted = room_id if user is users[4] else "!elsewhere:fast.test"
            await client.call(
                "PUT", f"/pushrules/global/room/{quote(muted)}", user["access_token"], {"actions": []}
            )
        await say(client, users[0], room_id, "hello")
        hs.unread._counts.clear()
        hs.unread._by_user.clear()
        hs.push_rules.cached_programs.clear()
        account_data = hs.push_rules.account_data
        real = account_data.get_global_many
        asked_for: list[list[str]] = []

        async def counted(user_ids: list[str], data_type: str) -> Any:
            asked_for.append(list(user_ids))
            return await real(user_ids, data_type)

        account_data.get_global_many = counted
        asked = [Deferred.fromCoroutine(hs.unread.counts(u["user_id"], room_id)) for u in users[1:]]
        got = [c["notification_count"] for c in await gatherResults(asked)]
        assert got == [1, 1, 1, 0]
        # The first load alone, the three asked meanwhile in one query.
        assert [len(ids) for ids in asked_for] == [1, 3]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_load_overtaken_by_receipt_after_receipt_answers_after_a_few_reads(tmp_path: Path) -> None:
    """Alice writes and Bob reads each message as it comes, one receipt during every read of
    his count: the load is read again only so many times, then his sync is answered with what
    the last read counted (not kept), and the next read counts from his newest receipt."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room_id = await two_in_a_room(hs, client, 2)
        real = hs.storage.events.unread_events_many
        reads = 0
        churning = 10  # reads that meet a receipt: far more than a load may take

        async def read(queries: list[UnreadQuery], limit: int, upto: int) -> list[UnreadRows]:
            nonlocal reads
            reads += 1
            rows = await real(queries, limit, upto)
            if reads <= churning:
                sent = await say(client, alice, room_id, f"r{reads}")
                receipt = f"{room_path(room_id)}/receipt/m.read/{quote(sent)}"
                await client.call("POST", receipt, bob["access_token"], {})
            return rows

        hs.storage.events.unread_events_many = read  # type: ignore[method-assign]
        counted = await hs.unread.counts(bob["user_id"], room_id)
        assert reads == MAX_LOAD_READS
        # The last read saw his receipt for the message before; its own message, published
        # while it ran, is counted (his receipt for it came after the read).
        assert counted["notification_count"] == 1
        churning = 0
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 0
        assert reads == MAX_LOAD_READS + 1  # not kept: read afresh
        await say(client, alice, room_id, "unread")
        assert (await hs.unread.counts(bob["user_id"], room_id))["notification_count"] == 1
        assert reads == MAX_LOAD_READS + 1  # kept, and current from there
    finally:
        await hs.stop(None)
