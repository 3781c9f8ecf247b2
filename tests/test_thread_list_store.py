"""The thread list (sql/104, homeserver/storage/events.py) on both engines, in-process: kept by
the writer in the events' transaction, it pages as the aggregate over every reply did (order,
`from`, a former member's `upto`, participation), follows redactions, retention purges and
erasure, and the migration fills it from a server's existing relations. Sync's thread-root
cache (core/threads.py) stays bounded and asks the list only about events it does not know."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest_twisted
from test_event_storage import ALICE, BOB, CAROL, RoomBuilder

# The thread list as it was computed before sql/104 (a GROUP BY over every reply): the reference.
from bench.threads_micro import aggregate as aggregate_roots
from homeserver.core.threads import ThreadRootCache
from homeserver.core.unread import thread_of
from homeserver.storage import Storage
from homeserver.storage.database import Database, Txn, _CollectingCursor
from homeserver.storage.events import EventStore, StoredEvent, persist_events_txn
from homeserver.storage.migrations import CORE_SCHEMA_DIR, migrate, schema_files
from homeserver.storage.retention import purge_events_txn

ROOM = "!threads:example.org"
DAVE = "@dave:example.org"
USERS = (ALICE, BOB, CAROL, DAVE)


async def pages(
    fetch: Any, room_id: str, upto: int, participant: str | None, limit: int = 3
) -> list[list[tuple[str, int]]]:
    """Every page, each next one from the last row's position (as `next_batch` is)."""
    out, before = [], None
    while True:
        rows = await fetch(room_id, upto, before, limit + 1, participant)
        out.append(rows[:limit])
        if len(rows) <= limit:
            return out
        before = rows[limit - 1][1]


def reply(room: RoomBuilder, sender: str, root: str) -> StoredEvent:
    content = {"body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    return room.event(sender, "m.room.message", content)


def redaction(room: RoomBuilder, sender: str, target: str) -> StoredEvent:
    return room.event(sender, "m.room.redaction", {}, redacts=target)


async def thread_rows(db: Database) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in await db.query("t", "SELECT root_id, latest FROM threads")}


async def participants(db: Database, root: str) -> set[str]:
    rows = await db.query("t", "SELECT user_id FROM thread_participants WHERE root_id = ?", root)
    return {r[0] for r in rows}


async def build_history(store: EventStore, room: RoomBuilder, seed: int) -> int:
    """A room with 12 threads, 150 replies, some redacted (one of them in its reply's own
    batch, every reply of one thread), in batches; Dave sends nothing in the second half (a
    former member). Returns the last position."""
    rng = random.Random(seed)
    await store.persist_events(room.items(room.create(), new_room=True))
    roots = []
    for i in range(12):
        root = room.event(USERS[i % 4], "m.room.message", {"body": f"root {i}"})
        roots.append(root.event_id)
        await store.persist_events(room.items([root]))
    replies: list[str] = []
    pending: list[StoredEvent] = []
    for n in range(150):
        ev = reply(room, rng.choice(USERS if n < 75 else USERS[:-1]), rng.choice(roots[:-1]))
        replies.append(ev.event_id)
        pending.append(ev)
        if n == 40:  # a reply and its redaction in one commit
            pending.append(redaction(room, ALICE, ev.event_id))
        elif rng.random() < 0.15:
            pending.append(redaction(room, ALICE, rng.choice(replies)))
        if rng.random() < 0.3:
            await store.persist_events(room.items(pending))
            pending = []
    last = reply(room, CAROL, roots[-1])  # a thread whose only reply goes
    pending += [last, room.event(BOB, "m.room.message", {"body": "not in a thread"})]
    await store.persist_events(room.items(pending))
    gone = redaction(room, CAROL, last.event_id)
    await store.persist_events(room.items([gone]))
    return gone.stream_ordering


@pytest_twisted.ensureDeferred
async def test_the_list_pages_as_the_aggregate_did(storage: Storage) -> None:
    store, db = storage.events, storage.db
    room = RoomBuilder(ROOM, [1])
    end = await build_history(store, room, seed=7)
    listed = await thread_rows(db)
    assert 1 < len(listed) < 12  # the thread whose only reply was redacted is not kept
    middle = end // 2
    for upto in (end, middle, middle + 7):  # now, and two former members' views
        # A former member sent nothing after leaving: only such users see the list at `upto`.
        later = {
            r[0] for r in await db.query("t", "SELECT sender FROM events WHERE stream_ordering > ?", upto)
        }
        for participant in (None, *(u for u in USERS if upto == end or u not in later)):
            got = await pages(store.thread_roots, ROOM, upto, participant)
            want = await pages(lambda *a: aggregate_roots(db, *a), ROOM, upto, participant)
            assert got == want, (upto, participant)
    assert [root for root, _ in await store.thread_roots(ROOM, end, None, 100, None)] == sorted(
        listed, key=listed.__getitem__, reverse=True
    )


@pytest_twisted.ensureDeferred
async def test_redactions_move_a_thread_and_its_participants(storage: Storage) -> None:
    store, db = storage.events, storage.db
    room = RoomBuilder(ROOM, [1])
    await store.persist_events(room.items(room.create(), new_room=True))
    root = room.event(ALICE, "m.room.message", {"body": "root"})
    other = room.event(BOB, "m.room.message", {"body": "other root"})
    await store.persist_events(room.items([root, other]))
    by_bob = reply(room, BOB, root.event_id)
    in_other = reply(room, BOB, other.event_id)
    by_carol = reply(room, CAROL, root.event_id)
    await store.persist_events(room.items([by_bob, in_other, by_carol]))
    assert await store.thread_roots(ROOM, 100, None, 10, None) == [
        (root.event_id, by_carol.stream_ordering),
        (other.event_id, in_other.stream_ordering),
    ]
    assert await participants(db, root.event_id) == {ALICE, BOB, CAROL}

    # Carol's reply goes: the thread falls back to Bob's reply, and Carol no longer took part.
    await store.persist_events(room.items([redaction(room, CAROL, by_carol.event_id)]))
    assert await store.thread_roots(ROOM, 100, None, 10, None) == [
        (other.event_id, in_other.stream_ordering),
        (root.event_id, by_bob.stream_ordering),
    ]
    assert await participants(db, root.event_id) == {ALICE, BOB}
    assert await store.thread_roots(ROOM, 100, None, 10, CAROL) == []
    assert [r for r, _ in await store.thread_roots(ROOM, 100, None, 10, ALICE)] == [root.event_id]

    # Its last reply goes: the thread leaves the list; the other thread is untouched.
    await store.persist_events(room.items([redaction(room, ALICE, by_bob.event_id)]))
    assert await store.thread_roots(ROOM, 100, None, 10, None) == [(other.event_id, in_other.stream_ordering)]
    assert await thread_rows(db) == {other.event_id: in_other.stream_ordering}
    assert await participants(db, root.event_id) == set()

    # A new reply brings it back.
    again = reply(room, DAVE, root.event_id)
    await store.persist_events(room.items([again]))
    assert (await store.thread_roots(ROOM, 100, None, 10, DAVE)) == [(root.event_id, again.stream_ordering)]
    assert await participants(db, root.event_id) == {ALICE, DAVE}


@pytest_twisted.ensureDeferred
async def test_purged_and_erased_replies_leave_the_list(storage: Storage) -> None:
    store, db = storage.events, storage.db
    room = RoomBuilder(ROOM, [1])
    await store.persist_events(room.items(room.create(), new_room=True))
    root = room.event(ALICE, "m.room.message", {"body": "root"})
    await store.persist_events(room.items([root]))
    old = reply(room, BOB, root.event_id)
    await store.persist_events(room.items([old]))
    newer = reply(room, CAROL, root.event_id)
    await store.persist_events(room.items([newer, room.event(ALICE, "m.room.message", {"body": "x"})]))

    # Erasure prunes Carol's reply: it no longer relates, so the thread's newest is Bob's.
    pruned = {"type": "m.room.message", "room_id": ROOM, "sender": CAROL, "content": {}}
    await storage.gdpr.prune_events([(newer.event_id, pruned, {})])
    assert await store.thread_roots(ROOM, 100, None, 10, None) == [(root.event_id, old.stream_ordering)]
    assert await participants(db, root.event_id) == {ALICE, BOB}

    # Retention purges Bob's (older) reply too: nothing is left of the thread.
    def purge_txn(txn: Txn) -> list[str]:
        return purge_events_txn(txn, db.dialect, ROOM, old.stream_ordering, 100)

    purged = await db.run_interaction("purge", purge_txn)
    assert old.event_id in purged and root.event_id in purged
    assert await store.thread_roots(ROOM, 100, None, 10, None) == []
    assert await thread_rows(db) == {}


def write_old_rows(txn: Txn, room: RoomBuilder, events: list[StoredEvent]) -> None:
    """Rows as a server before sql/104 wrote them: events, relations, redactions."""
    for ev in events:
        txn.execute(
            "INSERT INTO events (event_id, room_id, stream_ordering, depth, type, state_key, sender,"
            " origin_server_ts, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{}')",
            (ev.event_id, ev.room_id, ev.stream_ordering, ev.depth, ev.type, ev.state_key, ev.sender, 0),
        )
        if ev.type == "m.room.redaction":
            txn.execute(
                "INSERT INTO redactions (event_id, redacts, room_id) VALUES (?, ?, ?)",
                (ev.event_id, ev.pdu["redacts"], ev.room_id),
            )
        root = thread_of(ev)
        if root is not None:
            txn.execute(
                "INSERT INTO event_relations (event_id, relates_to, rel_type, room_id, type, sender,"
                " stream_ordering) VALUES (?, ?, 'm.thread', ?, ?, ?, ?)",
                (ev.event_id, root, ev.room_id, ev.type, ev.sender, ev.stream_ordering),
            )


@pytest_twisted.ensureDeferred
async def test_the_migration_fills_the_list_from_existing_relations(
    database_url: str, tmp_path: Path
) -> None:
    before_104 = tmp_path / "sql"
    before_104.mkdir()
    for schema in schema_files(
        CORE_SCHEMA_DIR, "sqlite" if database_url.startswith("sqlite") else "postgres"
    ):
        if schema.version < 104:
            shutil.copy(schema.path, before_104 / schema.path.name)
    storage = Storage.from_url(database_url)
    try:
        db = storage.db
        await migrate(db, before_104)
        room = RoomBuilder(ROOM, [1])
        rng = random.Random(3)
        roots = [room.event(USERS[i % 4], "m.room.message", {"body": f"root {i}"}) for i in range(6)]
        events = list(roots)
        for _ in range(60):
            events.append(reply(room, rng.choice(USERS), rng.choice(roots[:-1]).event_id))
            if rng.random() < 0.2:
                events.append(redaction(room, ALICE, events[-1].event_id))
        only = reply(room, BOB, roots[-1].event_id)
        events += [only, redaction(room, BOB, only.event_id)]

        def old_txn(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, '10', ?, 0)",
                (ROOM, ALICE),
            )
            write_old_rows(txn, room, events)

        await db.run_interaction("old", old_txn)
        end = room.positions[0]
        want = {p: await pages(lambda *a: aggregate_roots(db, *a), ROOM, end, p) for p in (None, *USERS)}
        assert 104 in await migrate(db)
        for participant in (None, *USERS):
            assert await pages(storage.events.thread_roots, ROOM, end, participant) == want[participant]
        assert roots[-1].event_id not in await thread_rows(db)
        assert len(await thread_rows(db)) == len({r for page in want[None] for r, _ in page})
    finally:
        storage.close()


@pytest_twisted.ensureDeferred
async def test_the_sync_root_cache_is_bounded_and_asks_only_about_unknown_events(storage: Storage) -> None:
    store = storage.events
    room = RoomBuilder(ROOM, [1])
    await store.persist_events(room.items(room.create(), new_room=True))
    old_root = room.event(ALICE, "m.room.message", {"body": "an old root"})
    plain = room.event(ALICE, "m.room.message", {"body": "no thread"})
    await store.persist_events(room.items([old_root, plain, reply(room, BOB, old_root.event_id)]))

    asked: list[list[str]] = []
    real = store.thread_roots_among

    async def counting(event_ids: Any) -> set[str]:
        asked.append(list(event_ids))
        return await real(event_ids)

    store.thread_roots_among = counting  # type: ignore[method-assign]
    cache = ThreadRootCache(store, size=4)
    # After a restart nothing is known: one query for the events of a response.
    assert [ev.event_id for ev in await cache.roots_among([old_root, plain])] == [old_root.event_id]
    assert asked == [[old_root.event_id, plain.event_id]]

    # New commits say what they are: no query for them.
    root = room.event(BOB, "m.room.message", {"body": "new root"})
    answer = reply(room, CAROL, root.event_id)
    cache.on_committed([root, answer], thread_of)
    assert await cache.roots_among([root, answer]) == [root]
    assert len(asked) == 1
    more = [room.event(BOB, "m.room.message", {"body": str(i)}) for i in range(5)]
    for ev in more:
        cache.on_committed([ev], thread_of)
    assert len(cache) <= 4  # the oldest were forgotten...
    assert await cache.roots_among([old_root]) == [old_root]  # ...and are asked about again
    assert asked[1:] == [[old_root.event_id]]


@pytest_twisted.ensureDeferred
async def test_a_message_outside_threads_commits_exactly_as_before(pg_url: str) -> None:
    """On PostgreSQL a commit is one string ending in COMMIT: a plain message's names no thread
    table, a thread reply's writes the list in that same string (no second round trip)."""
    storage = Storage.from_url(pg_url)
    try:
        await migrate(storage.db)
        store = storage.events
        room = RoomBuilder(ROOM, [1])
        await store.persist_events(room.items(room.create(), new_room=True))
        root = room.event(ALICE, "m.room.message", {"body": "root"})
        await store.persist_events(room.items([root, reply(room, BOB, root.event_id)]))  # shapes known

        def composed(ev: StoredEvent) -> str:
            cursor = _CollectingCursor()
            persist_events_txn(Txn(cursor, storage.db.engine), room.items([ev]))
            assert cursor.statement is not None
            return " ".join([cursor.statement[0], *(sql for _, sql in cursor.prepares)])

        plain = composed(room.event(BOB, "m.room.message", {"body": "plain"}))
        assert "thread" not in plain
        in_thread = composed(reply(room, CAROL, root.event_id))
        assert "INSERT INTO threads" in in_thread
    finally:
        storage.close()
