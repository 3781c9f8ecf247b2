"""Room heads against a real database (both engines): a head rebuilt from the database equals
the one in memory, and a room keeps all its forward extremities, as federation will need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from homeserver.config import parse_config
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.server import HomeServer

ALICE = "@alice:heads.test"
BOB = "@bob:heads.test"


def make_hs(tmp_path: Path, database_url: str) -> HomeServer:
    from twisted.internet import reactor

    raw = {
        "server_name": "heads.test",
        "data_dir": str(tmp_path / "data"),
        "database": {"url": database_url},
        "auth": {"password_hashing": "fast"},
    }
    return HomeServer(parse_config(raw, "test-heads.yaml", env={}), reactor)


def summary(head: RoomHead) -> dict[str, Any]:
    return {
        "version": head.room_version,
        "depth": head.depth,
        "extremities": head.extremities,
        "state": {
            key: (ev.event_id, ev.stream_ordering, ev.pdu, ev.unsigned_extra)
            for key, ev in head.state.items()
        },
    }


@pytest_twisted.ensureDeferred
async def test_a_head_rebuilt_from_the_database_equals_the_one_in_memory(
    tmp_path: Path, database_url: str
) -> None:
    hs = make_hs(tmp_path, database_url)
    await hs.start()
    try:
        room_id = await hs.rooms.create_room(ALICE, {"preset": "public_chat", "name": "heads"})
        await hs.rooms.join(BOB, room_id)
        for n in range(5):
            await hs.events.send(ALICE, room_id, "m.room.message", {"msgtype": "m.text", "body": f"{n}"})
        await hs.rooms.send_state(ALICE, room_id, "m.room.topic", "", {"topic": "heads and tails"})
        await hs.rooms.leave(BOB, room_id)
        in_memory = hs.room_heads.peek(room_id)
        assert in_memory is not None

        rebuilt = await RoomHeads(hs.storage.events).get(room_id)
        assert rebuilt is not None
        assert summary(rebuilt) == summary(in_memory)
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_room_keeps_every_forward_extremity_until_an_event_names_them(
    tmp_path: Path, database_url: str
) -> None:
    hs = make_hs(tmp_path, database_url)
    await hs.start()
    try:
        room_id = await hs.rooms.create_room(ALICE, {"preset": "public_chat"})
        head = hs.room_heads.peek(room_id)
        assert head is not None
        # Two events with the same parent, as two servers would send them at once.
        fork = RoomHead(room_id, head.room_version, dict(head.state), list(head.extremities), head.depth)
        left = hs.events.build(head, ALICE, "m.room.message", {"msgtype": "m.text", "body": "left"})
        right = hs.events.build(fork, ALICE, "m.room.message", {"msgtype": "m.text", "body": "right"})
        assert left.pdu["prev_events"] == right.pdu["prev_events"]
        await hs.events.persist(head, [left])
        await hs.events.persist(fork, [right])

        reloaded = await RoomHeads(hs.storage.events).get(room_id)
        assert reloaded is not None
        assert reloaded.extremities == [left.event_id, right.event_id]

        # The next event names both, and is then the only extremity, in memory and stored.
        joined = hs.events.build(reloaded, ALICE, "m.room.message", {"msgtype": "m.text", "body": "both"})
        assert joined.pdu["prev_events"] == [left.event_id, right.event_id]
        assert reloaded.extremities == [joined.event_id]
        await hs.events.persist(reloaded, [joined])
        again = await RoomHeads(hs.storage.events).get(room_id)
        assert again is not None
        assert again.extremities == [joined.event_id]
        assert again.depth == joined.depth == left.depth + 1
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_head_loaded_while_a_join_commits_still_learns_of_the_join(
    tmp_path: Path, pg_url: str
) -> None:
    """Another process loads the room's head (each statement of the load sees the commits made
    before it) while the room's writer commits a join between the load's two reads: once the
    join reaches that process (apply_committed), its head has the joiner joined, or that
    process would never wake the joiner for the room's events."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import blockingCallFromThread

    hs = make_hs(tmp_path, pg_url)
    await hs.start()
    try:
        room_id = await hs.rooms.create_room(ALICE, {"preset": "public_chat"})
        db = hs.storage.events.db
        original = db.run_interaction

        def join_between_the_reads(fn: Any) -> Any:
            def load(txn: Any, *args: Any) -> Any:
                query, reads = txn.query, []

                def query_then_join(sql: str, params: Any = ()) -> Any:
                    rows = query(sql, params)
                    reads.append(sql)
                    if len(reads) == 1:
                        join = lambda: Deferred.fromCoroutine(hs.rooms.join(BOB, room_id))  # noqa: E731
                        blockingCallFromThread(reactor, join)
                    return rows

                txn.query = query_then_join
                return fn(txn, *args)

            return load

        async def run_interaction(desc: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
            if desc == "load_room":
                fn = join_between_the_reads(fn)
            return await original(desc, fn, *args, **kwargs)

        db.run_interaction = run_interaction  # type: ignore[method-assign]
        reader = RoomHeads(hs.storage.events)
        head = await reader.get(room_id)
        db.run_interaction = original  # type: ignore[method-assign]
        writer_head = hs.room_heads.peek(room_id)
        assert head is not None and writer_head is not None
        join = writer_head.state[("m.room.member", BOB)]
        head.apply_committed(join)
        assert head.membership(BOB) == "join"
        assert summary(head) == summary(writer_head)
    finally:
        await hs.stop(None)
