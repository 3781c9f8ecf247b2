"""EventStore (homeserver/storage/events.py) on both engines, in-process with pytest-twisted:
one transaction per batch, room snapshots, membership, stream ranges, txn ids."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from homeserver.storage import Storage
from homeserver.storage.database import Database, Txn
from homeserver.storage.events import (
    PersistItem,
    StoredEvent,
    UnreadQuery,
    UnreadRows,
    _few_superseded_delete,
    _superseded_delete,
    _unread_one,
)

NOW = 1_700_000_000_000
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"

TABLES = (
    "rooms",
    "events",
    "event_edges",
    "event_auth",
    "current_state_events",
    "room_memberships",
    "event_txn_ids",
    "redactions",
    "event_relations",
)


async def count(db: Database, sql: str, *args: Any) -> int:
    rows = await db.query("count", sql, *args)
    return int(rows[0][0])


async def table_counts(db: Database) -> dict[str, int]:
    return {t: await count(db, f"SELECT COUNT(*) FROM {t}") for t in TABLES}


class RoomBuilder:
    """Builds a chain of StoredEvents for one room (the store does not check PDUs)."""

    def __init__(self, room_id: str, positions: list[int], version: str = "10") -> None:
        self.room_id = room_id
        self.version = version
        self.positions = positions  # shared counter across rooms: [next stream ordering]
        self.depth = 0
        self.last: str | None = None
        self.state: dict[tuple[str, str], str] = {}
        self.n = 0

    def event(
        self,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        redacts: str | None = None,
        event_id: str | None = None,
    ) -> StoredEvent:
        self.n += 1
        self.depth += 1
        stream = self.positions[0]
        self.positions[0] += 1
        pdu: dict[str, Any] = {
            "room_id": self.room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": NOW + stream,
            "depth": self.depth,
            "prev_events": [self.last] if self.last else [],
            "auth_events": sorted(
                v for k, v in self.state.items() if k[0] in ("m.room.create", "m.room.power_levels")
            ),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            pdu["redacts"] = redacts
        eid = event_id or f"${self.room_id[1:5]}_{self.n}_{stream}"
        unsigned: dict[str, Any] = {}
        if state_key is not None and (event_type, state_key) in self.state:
            unsigned = {"replaces_state": self.state[(event_type, state_key)]}
        ev = StoredEvent(eid, self.room_id, stream, pdu, unsigned)
        self.last = eid
        if state_key is not None:
            self.state[(event_type, state_key)] = eid
        return ev

    def create(self, creator: str = ALICE) -> list[StoredEvent]:
        return [
            self.event(creator, "m.room.create", {"room_version": self.version, "creator": creator}, ""),
            self.event(creator, "m.room.member", {"membership": "join"}, creator),
            self.event(creator, "m.room.power_levels", {"users": {creator: 100}}, ""),
        ]

    def items(
        self,
        events: list[StoredEvent],
        *,
        new_room: bool = False,
        txns: dict[str, tuple[str, str, str]] | None = None,
    ) -> list[PersistItem]:
        txns = txns or {}
        return [
            PersistItem(
                ev,
                self.version,
                is_create=new_room and ev.type == "m.room.create",
                txn=txns.get(ev.event_id),
                now_ms=NOW,
            )
            for ev in events
        ]


def ids(events: list[StoredEvent]) -> list[str]:
    return [e.event_id for e in events]


# Persisting a batch ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_persist_batch_writes_every_row(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    room = RoomBuilder("!room1:example.org", positions)
    events = room.create()
    invite = room.event(ALICE, "m.room.member", {"membership": "invite"}, BOB)
    join = room.event(BOB, "m.room.member", {"membership": "join"}, BOB)
    name = room.event(ALICE, "m.room.name", {"name": "First"}, "")
    message = room.event(BOB, "m.room.message", {"msgtype": "m.text", "body": "hi"})
    edit = room.event(
        BOB,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* hello",
            "m.new_content": {"msgtype": "m.text", "body": "hello"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": message.event_id},
        },
    )
    reaction = room.event(
        ALICE,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message.event_id, "key": "+1"}},
    )
    doomed = room.event(BOB, "m.room.message", {"msgtype": "m.text", "body": "oops"})
    redaction = room.event(BOB, "m.room.redaction", {}, redacts=doomed.event_id)
    name2 = room.event(ALICE, "m.room.name", {"name": "Second"}, "")
    events += [invite, join, name, message, edit, reaction, doomed, redaction, name2]
    txns = {message.event_id: (BOB, "DEV1", "txn1"), redaction.event_id: (BOB, "DEV1", "redact:r1")}

    await store.persist_events(room.items(events, new_room=True, txns=txns))

    db = storage.db
    counts = await table_counts(db)
    assert counts["rooms"] == 1
    assert counts["events"] == len(events)
    # Every prev reference written; the auth references stay in the PDUs alone.
    assert counts["event_edges"] == sum(len(e.pdu["prev_events"]) for e in events)
    assert counts["event_auth"] == 0
    # create, power_levels, name, alice's and bob's member events: the name replaced once.
    assert counts["current_state_events"] == 5
    assert counts["room_memberships"] == 3
    assert counts["event_txn_ids"] == 2
    assert counts["redactions"] == 1
    assert counts["event_relations"] == 2

    room_row = await db.query("r", "SELECT room_id, room_version, creator, created_ts FROM rooms")
    assert [tuple(r) for r in room_row] == [("!room1:example.org", "10", ALICE, events[0].origin_server_ts)]
    current = await db.query(
        "c", "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?", room.room_id
    )
    assert {(r[0], r[1]): r[2] for r in current} == {
        ("m.room.create", ""): events[0].event_id,
        ("m.room.member", ALICE): events[1].event_id,
        ("m.room.power_levels", ""): events[2].event_id,
        ("m.room.member", BOB): join.event_id,
        ("m.room.name", ""): name2.event_id,
    }
    memberships = await db.query(
        "m",
        "SELECT event_id, user_id, sender, membership, stream_ordering FROM room_memberships"
        " ORDER BY stream_ordering",
    )
    assert [tuple(r) for r in memberships] == [
        (events[1].event_id, ALICE, ALICE, "join", events[1].stream_ordering),
        (invite.event_id, BOB, ALICE, "invite", invite.stream_ordering),
        (join.event_id, BOB, BOB, "join", join.stream_ordering),
    ]
    redactions = await db.query("x", "SELECT event_id, redacts, room_id FROM redactions")
    assert [tuple(r) for r in redactions] == [(redaction.event_id, doomed.event_id, room.room_id)]
    relations = await db.query(
        "x",
        "SELECT event_id, relates_to, rel_type, type, sender, aggregation_key, stream_ordering"
        " FROM event_relations ORDER BY stream_ordering",
    )
    assert [tuple(r) for r in relations] == [
        (edit.event_id, message.event_id, "m.replace", "m.room.message", BOB, None, edit.stream_ordering),
        (
            reaction.event_id,
            message.event_id,
            "m.annotation",
            "m.reaction",
            ALICE,
            "+1",
            reaction.stream_ordering,
        ),
    ]
    edges = await db.query("e", "SELECT prev_event_id FROM event_edges WHERE event_id = ?", join.event_id)
    assert [r[0] for r in edges] == [invite.event_id]

    # Read back: the PDU, unsigned extras and redaction round-trip.
    got = await store.get_events([name2.event_id, doomed.event_id, message.event_id, "$missing"])
    assert set(got) == {name2.event_id, doomed.event_id, message.event_id}
    assert got[name2.event_id].pdu == name2.pdu
    assert got[name2.event_id].unsigned_extra == {"replaces_state": name.event_id}
    assert got[doomed.event_id].redacted_by == redaction.event_id
    assert got[message.event_id].redacted_by is None
    assert got[message.event_id].stream_ordering == message.stream_ordering
    assert await store.max_stream_ordering() == name2.stream_ordering
    edits = await store.edits([message.event_id])
    assert {k: ids(v) for k, v in edits.items()} == {message.event_id: [edit.event_id]}
    assert await store.annotations([message.event_id]) == [
        (message.event_id, "m.reaction", "+1", reaction.stream_ordering)
    ]
    assert ids(await store.state_history(room.room_id, "m.room.name")) == [name.event_id, name2.event_id]
    assert await store.state_history(room.room_id, "m.room.history_visibility") == []


@pytest_twisted.ensureDeferred
async def test_room_version_11_redaction_reads_redacts_from_content(storage: Storage) -> None:
    positions = [1]
    room = RoomBuilder("!v11:example.org", positions, version="11")
    events = room.create()
    msg = room.event(ALICE, "m.room.message", {"body": "x"})
    red = room.event(ALICE, "m.room.redaction", {"redacts": msg.event_id})
    await storage.events.persist_events(room.items([*events, msg, red], new_room=True))
    rows = await storage.db.query("r", "SELECT event_id, redacts FROM redactions")
    assert [tuple(r) for r in rows] == [(red.event_id, msg.event_id)]
    assert await storage.events.room_version(room.room_id) == "11"


@pytest_twisted.ensureDeferred
async def test_batch_with_duplicate_event_id_fails_entirely(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    room = RoomBuilder("!dup:example.org", positions)
    events = room.create()
    msg = room.event(ALICE, "m.room.message", {"body": "one"})
    dup = room.event(ALICE, "m.room.message", {"body": "two"}, event_id=msg.event_id)
    items = room.items([*events, msg, dup], new_room=True, txns={msg.event_id: (ALICE, "D", "t")})
    with pytest.raises(Exception) as info:
        await store.persist_events(items)
    assert storage.db.is_unique_violation(info.value), info.value
    # Nothing of the batch is left: not even the room row or the first events.
    assert await table_counts(storage.db) == dict.fromkeys(TABLES, 0)
    assert await store.load_room(room.room_id) is None
    assert await store.max_stream_ordering() == 0

    # A later batch that repeats an already stored event id fails whole too.
    positions[0] = 1
    room = RoomBuilder("!dup2:example.org", positions)
    first = room.create()
    await store.persist_events(room.items(first, new_room=True))
    before = await table_counts(storage.db)
    fresh = room.event(ALICE, "m.room.name", {"name": "n"}, "")
    join = room.event(BOB, "m.room.member", {"membership": "join"}, BOB)
    again = room.event(ALICE, "m.room.message", {"body": "x"}, event_id=first[1].event_id)
    with pytest.raises(Exception):  # noqa: B017 - either engine's integrity error
        await store.persist_events(
            room.items([fresh, join, again], txns={fresh.event_id: (ALICE, "D", "t2")})
        )
    assert await table_counts(storage.db) == before
    snapshot = await store.load_room(room.room_id)
    assert snapshot is not None and ("m.room.name", "") not in snapshot.state
    assert await store.rooms_for_user(BOB) == {}
    assert await store.get_txn_event(ALICE, "D", "t2") is None


# Reading back ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_load_room_returns_current_state_and_extremity(storage: Storage) -> None:
    store = storage.events
    assert await store.load_room("!nope:example.org") is None
    positions = [1]
    room = RoomBuilder("!load:example.org", positions)
    events = room.create()
    topic = room.event(ALICE, "m.room.topic", {"topic": "old"}, "")
    await store.persist_events(room.items([*events, topic], new_room=True))
    # A second batch changes state and adds a message (the last event is the extremity).
    topic2 = room.event(ALICE, "m.room.topic", {"topic": "new"}, "")
    invite = room.event(ALICE, "m.room.member", {"membership": "invite"}, BOB)
    msg = room.event(ALICE, "m.room.message", {"body": "last"})
    redaction = room.event(ALICE, "m.room.redaction", {}, redacts=topic2.event_id)
    tail = room.event(ALICE, "m.room.message", {"body": "tail"})
    await store.persist_events(room.items([topic2, invite, msg, redaction, tail]))

    snapshot = await store.load_room(room.room_id)
    assert snapshot is not None
    assert snapshot.room_version == "10"
    assert {k: v.event_id for k, v in snapshot.state.items()} == {
        ("m.room.create", ""): events[0].event_id,
        ("m.room.member", ALICE): events[1].event_id,
        ("m.room.power_levels", ""): events[2].event_id,
        ("m.room.topic", ""): topic2.event_id,
        ("m.room.member", BOB): invite.event_id,
    }
    assert snapshot.state[("m.room.topic", "")].content == {"topic": "new"}
    assert snapshot.state[("m.room.topic", "")].redacted_by == redaction.event_id
    assert snapshot.state[("m.room.topic", "")].unsigned_extra == {"replaces_state": topic.event_id}
    assert snapshot.extremities == [tail.event_id]
    assert snapshot.depth == tail.depth


@pytest_twisted.ensureDeferred
async def test_batch_of_several_rooms_moves_each_extremity_through_the_primary_key(
    storage: Storage,
) -> None:
    store = storage.events
    positions = [1]
    rooms = [RoomBuilder(f"!x{i}:example.org", positions) for i in range(3)]
    for room in rooms:
        await store.persist_events(room.items(room.create(), new_room=True))
    # One batch with two messages in room 0 and one in room 1; room 2 keeps its extremity.
    first = rooms[0].event(ALICE, "m.room.message", {"body": "a"})
    second = rooms[0].event(ALICE, "m.room.message", {"body": "b"})
    other = rooms[1].event(ALICE, "m.room.message", {"body": "c"})
    await store.persist_events([*rooms[0].items([first, second]), *rooms[1].items([other])])

    heads = [await store.load_room(room.room_id) for room in rooms]
    assert [h.extremities if h else None for h in heads] == [
        [second.event_id],
        [other.event_id],
        [rooms[2].last],
    ]
    # The DELETE is a lookup in (room_id, event_id), not a scan of every room's rows (and
    # of the dead rows of every earlier commit): at 500 messages/s it runs once a message.
    sql, args = _superseded_delete([(rooms[0].room_id, "$a"), (rooms[1].room_id, "$b")])
    if storage.db.engine.name == "postgres":
        plan = " ".join(r[0] for r in await storage.db.query("plan", "EXPLAIN " + sql, *args))
        assert "event_forward_extremities_pkey" in plan and "Seq Scan" not in plan, plan
        # A commit of a few messages deletes by pairs in a prepared statement: the plan it
        # keeps (generic, for any values) looks up both columns of each pair.
        sql, args = _few_superseded_delete([(rooms[0].room_id, "$a"), (rooms[1].room_id, "$b")])

        def generic_plan(txn: Txn) -> list[tuple[Any, ...]]:
            txn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            txn.execute("PREPARE superseded AS " + storage.db.engine.part(sql, ())[0])
            try:
                return txn.query("EXPLAIN EXECUTE superseded(?, ?, ?, ?)", args)
            finally:
                txn.execute("DEALLOCATE superseded")

        plan = " ".join(r[0] for r in await storage.db.run_interaction("plan", generic_plan))
        assert "event_forward_extremities_pkey" in plan and "Seq Scan" not in plan, plan
        assert "(room_id = $3) AND (event_id = $4)" in plan, plan
    else:
        plan = " ".join(str(r[3]) for r in await storage.db.query("plan", "EXPLAIN QUERY PLAN " + sql, *args))
        assert plan.startswith("SEARCH event_forward_extremities USING INDEX"), plan


@pytest_twisted.ensureDeferred
async def test_rooms_for_user_and_membership_history(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    r1 = RoomBuilder("!one:example.org", positions)
    r2 = RoomBuilder("!two:example.org", positions)
    r3 = RoomBuilder("!three:example.org", positions)
    await store.persist_events(r1.items(r1.create(), new_room=True) + r2.items(r2.create(), new_room=True))
    await store.persist_events(r3.items(r3.create(CAROL), new_room=True))
    assert await store.rooms_for_user(BOB) == {}
    assert await store.membership_history(BOB, r1.room_id) == []

    b1 = [
        r1.event(ALICE, "m.room.member", {"membership": "invite"}, BOB),
        r1.event(BOB, "m.room.member", {"membership": "join"}, BOB),
        r1.event(BOB, "m.room.member", {"membership": "leave"}, BOB),
    ]
    b2 = [
        r2.event(BOB, "m.room.member", {"membership": "join"}, BOB),
        r2.event(ALICE, "m.room.member", {"membership": "ban"}, BOB),
    ]
    await store.persist_events(r1.items(b1) + r2.items(b2))
    rejoin = r1.event(BOB, "m.room.member", {"membership": "join"}, BOB)
    await store.persist_events(r1.items([rejoin]))

    assert await store.rooms_for_user(BOB) == {
        r1.room_id: ("join", rejoin.stream_ordering),
        r2.room_id: ("ban", b2[1].stream_ordering),
    }
    assert await store.rooms_for_user(ALICE) == {
        r1.room_id: ("join", 2),
        r2.room_id: ("join", 5),
    }
    assert await store.rooms_for_user(CAROL) == {r3.room_id: ("join", 8)}
    assert await store.membership_history(BOB, r1.room_id) == [
        (b1[0].stream_ordering, "invite"),
        (b1[1].stream_ordering, "join"),
        (b1[2].stream_ordering, "leave"),
        (rejoin.stream_ordering, "join"),
    ]
    assert await store.membership_history(BOB, r2.room_id) == [
        (b2[0].stream_ordering, "join"),
        (b2[1].stream_ordering, "ban"),
    ]
    assert await store.membership_history(BOB, r3.room_id) == []

    # Forgetting is per user and per room, and a new join/invite clears it.
    await store.forget_room(BOB, r2.room_id)
    await store.forget_room(BOB, r2.room_id)
    assert await store.forgotten_rooms(BOB) == {r2.room_id}
    unban = r2.event(ALICE, "m.room.member", {"membership": "leave"}, BOB)
    reinvite = r2.event(ALICE, "m.room.member", {"membership": "invite"}, BOB)
    await store.persist_events(r2.items([unban]))
    assert await store.forgotten_rooms(BOB) == {r2.room_id}
    await store.persist_events(r2.items([reinvite]))
    assert await store.forgotten_rooms(BOB) == set()


@pytest_twisted.ensureDeferred
async def test_room_events_between_both_directions(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    room = RoomBuilder("!range:example.org", positions)
    other = RoomBuilder("!other:example.org", positions)
    batch = room.items(room.create(), new_room=True) + other.items(other.create(), new_room=True)
    await store.persist_events(batch)
    # Interleave the two rooms' messages in the stream.
    mine: list[StoredEvent] = []
    items: list[PersistItem] = []
    for i in range(6):
        ev = room.event(ALICE, "m.room.message", {"body": f"m{i}"})
        mine.append(ev)
        items += room.items([ev])
        items += other.items([other.event(ALICE, "m.room.message", {"body": f"o{i}"})])
    await store.persist_events(items)
    creates = ids(await store.room_events_between(room.room_id, 0, 3, 10, newest_first=False))
    assert len(creates) == 3
    upto = await store.max_stream_ordering()

    newest = await store.room_events_between(room.room_id, 0, upto, 4)
    assert ids(newest) == ids(mine[::-1][:4])
    oldest = await store.room_events_between(room.room_id, 0, upto, 4, newest_first=False)
    assert ids(oldest) == creates + ids(mine[:1])
    # after is exclusive, upto inclusive.
    lo, hi = mine[1].stream_ordering, mine[4].stream_ordering
    assert ids(await store.room_events_between(room.room_id, lo, hi, 10, newest_first=False)) == ids(
        mine[2:5]
    )
    assert ids(await store.room_events_between(room.room_id, lo, hi, 10)) == ids(mine[2:5])[::-1]
    assert ids(await store.room_events_between(room.room_id, lo, hi, 2, newest_first=False)) == ids(mine[2:4])
    assert await store.room_events_between(room.room_id, hi, hi, 10) == []
    assert await store.room_events_between(room.room_id, upto, upto + 100, 10) == []
    assert await store.room_events_between("!unknown:example.org", 0, upto, 10) == []
    # Paging backwards with the last position as the next upper bound sees every event once.
    seen: list[str] = []
    bound = upto
    while True:
        page = await store.room_events_between(room.room_id, 0, bound, 4)
        if not page:
            break
        seen += ids(page)
        bound = page[-1].stream_ordering - 1
    assert seen == (creates + ids(mine))[::-1]

    # A redaction shows on the redacted event in ranges.
    red = room.event(ALICE, "m.room.redaction", {}, redacts=mine[0].event_id)
    await store.persist_events(room.items([red]))
    got = await store.room_events_between(room.room_id, 0, mine[0].stream_ordering, 1)
    assert got[0].event_id == mine[0].event_id and got[0].redacted_by == red.event_id


@pytest_twisted.ensureDeferred
async def test_recent_events_for_rooms(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    rooms = [RoomBuilder(f"!recent{i}:example.org", positions) for i in range(3)]
    items: list[PersistItem] = []
    for r in rooms:
        items += r.items(r.create(), new_room=True)
    for i in range(5):
        for r in rooms[:2]:
            items += r.items([r.event(ALICE, "m.room.message", {"body": f"{r.room_id} {i}"})])
    await store.persist_events(items)
    upto = await store.max_stream_ordering()
    all_events = {
        r.room_id: await store.room_events_between(r.room_id, 0, upto, 100, newest_first=False) for r in rooms
    }

    recent = await store.recent_events_for_rooms([r.room_id for r in rooms] + ["!empty:example.org"], upto, 2)
    assert set(recent) == {r.room_id for r in rooms} | {"!empty:example.org"}
    for r in rooms:
        # The newest `limit` events of each room, oldest first.
        assert ids(recent[r.room_id]) == ids(all_events[r.room_id][-2:]), r.room_id
    assert recent["!empty:example.org"] == []

    # upto cuts the newer events.
    cut = all_events[rooms[0].room_id][4].stream_ordering
    recent = await store.recent_events_for_rooms([rooms[0].room_id], cut, 3)
    assert ids(recent[rooms[0].room_id]) == ids(all_events[rooms[0].room_id][2:5])
    assert await store.recent_events_for_rooms([], upto, 5) == {}

    # More rooms than one query chunk (200).
    many = [RoomBuilder(f"!many{i:03}:example.org", positions) for i in range(205)]
    items = []
    for r in many:
        items += r.items([r.event(ALICE, "m.room.create", {"room_version": "10"}, "")], new_room=True)
        items += r.items([r.event(ALICE, "m.room.message", {"body": "only"})])
    await store.persist_events(items)
    upto = await store.max_stream_ordering()
    recent = await store.recent_events_for_rooms([r.room_id for r in many], upto, 1)
    assert len(recent) == 205
    assert all([e.type for e in recent[r.room_id]] == ["m.room.message"] for r in many)
    recent = await store.recent_events_for_rooms([r.room_id for r in many], upto, 5)
    assert all(len(recent[r.room_id]) == 2 for r in many)


@pytest_twisted.ensureDeferred
async def test_get_txn_event(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    room = RoomBuilder("!txn:example.org", positions)
    events = room.create()
    msg = room.event(ALICE, "m.room.message", {"body": "once"})
    other = room.event(BOB, "m.room.message", {"body": "bob's"})
    txns = {msg.event_id: (ALICE, "PHONE", "t1"), other.event_id: (BOB, "PHONE", "t1")}
    await store.persist_events(room.items([*events, msg, other], new_room=True, txns=txns))

    assert await store.get_txn_event(ALICE, "PHONE", "t1") == msg.event_id
    assert await store.get_txn_event(BOB, "PHONE", "t1") == other.event_id
    assert await store.get_txn_event(ALICE, "LAPTOP", "t1") is None
    assert await store.get_txn_event(ALICE, "PHONE", "t2") is None
    assert await store.get_txn_event(CAROL, "PHONE", "t1") is None
    assert await store.txn_ids_for_events([msg.event_id, events[0].event_id]) == {
        msg.event_id: ("PHONE", "t1")
    }

    # The same (user, device, txn) cannot be stored twice: the second batch fails whole.
    again = room.event(ALICE, "m.room.message", {"body": "twice"})
    with pytest.raises(Exception) as info:
        await store.persist_events(room.items([again], txns={again.event_id: (ALICE, "PHONE", "t1")}))
    assert storage.db.is_unique_violation(info.value)
    assert await store.get_events([again.event_id]) == {}
    assert await store.get_txn_event(ALICE, "PHONE", "t1") == msg.event_id


@pytest_twisted.ensureDeferred
async def test_state_event_at(storage: Storage) -> None:
    store = storage.events
    positions = [1]
    room = RoomBuilder("!stateat:example.org", positions)
    other = RoomBuilder("!elsewhere:example.org", positions)
    events = room.create()
    t1 = room.event(ALICE, "m.room.topic", {"topic": "one"}, "")
    msg = room.event(ALICE, "m.room.message", {"body": "between"})
    elsewhere = other.create()
    t2 = room.event(ALICE, "m.room.topic", {"topic": "two"}, "")
    bob = room.event(BOB, "m.room.member", {"membership": "join"}, BOB)
    await store.persist_events(
        room.items([*events, t1, msg], new_room=True)
        + other.items(elsewhere, new_room=True)
        + room.items([t2, bob])
    )
    at = store.state_event_at
    assert await at(room.room_id, "m.room.topic", "", t1.stream_ordering - 1) is None
    assert (await at(room.room_id, "m.room.topic", "", t1.stream_ordering)).event_id == t1.event_id  # type: ignore[union-attr]
    assert (await at(room.room_id, "m.room.topic", "", t2.stream_ordering - 1)).event_id == t1.event_id  # type: ignore[union-attr]
    assert (await at(room.room_id, "m.room.topic", "", 10_000)).event_id == t2.event_id  # type: ignore[union-attr]
    assert await at(room.room_id, "m.room.member", BOB, t2.stream_ordering) is None
    assert (await at(room.room_id, "m.room.member", BOB, bob.stream_ordering)).event_id == bob.event_id  # type: ignore[union-attr]
    assert (await at(room.room_id, "m.room.member", ALICE, 10_000)).event_id == events[1].event_id  # type: ignore[union-attr]
    # Messages are not state, and other rooms do not count.
    assert await at(room.room_id, "m.room.message", "", 10_000) is None
    assert (await at(other.room_id, "m.room.create", "", 10_000)).event_id == elsewhere[0].event_id  # type: ignore[union-attr]


# Unread events, many pairs at once ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unread_events_many_reads_each_pair_as_alone(storage: Storage) -> None:
    """A batch of (user, room) reads (a burst of first unread-count loads: core/unread.py)
    answers each pair as its own read would: after that user's read receipt, without their
    own events, the skipped types (unless the state key is theirs) and ignored senders,
    newest first, at most `limit`; in the order asked, a pair asked twice included."""
    store = storage.events
    positions = [1]
    rooms = [RoomBuilder(f"!unread{n}:example.org", positions) for n in range(2)]
    for room in rooms:
        events = room.create()
        events += [room.event(u, "m.room.member", {"membership": "join"}, u) for u in (BOB, CAROL)]
        for i in range(6):
            events.append(room.event((ALICE, BOB, CAROL)[i % 3], "m.room.message", {"body": f"m{i}"}))
        events.append(room.event(ALICE, "m.room.member", {"membership": "invite"}, "@dan:example.org"))
        await store.persist_events(room.items(events, new_room=True))
    read = rooms[0].last
    read_at = (await store.get_events([read]))[read].stream_ordering  # type: ignore[index]
    await storage.user_data.put_receipt(rooms[0].room_id, "m.read", BOB, "main", read, read_at - 3, 1, NOW)
    await storage.user_data.put_receipt(rooms[1].room_id, "m.read.private", CAROL, "main", read, 12, 2, NOW)
    member = ["m.room.member"]

    def read_one(txn: Txn, q: UnreadQuery, limit: int, upto: int) -> UnreadRows:
        return _unread_one(txn, q, q.skip_types, q.skip_senders, limit, upto)  # one pair's own statements

    queries = [
        UnreadQuery(BOB, rooms[0].room_id),
        UnreadQuery(CAROL, rooms[0].room_id, member),
        UnreadQuery("@dan:example.org", rooms[0].room_id, member),
        UnreadQuery(CAROL, rooms[1].room_id, [], [ALICE]),
        UnreadQuery(BOB, rooms[1].room_id, member, [CAROL]),
        UnreadQuery(BOB, rooms[0].room_id),
    ]
    top = positions[0]
    for limit, upto in ((1000, top), (2, top), (1000, read_at - 1)):
        many = await store.unread_events_many(queries, limit, upto)
        alone = [await storage.db.run_interaction("read_one", read_one, q, limit, upto) for q in queries]
        assert many == alone
        assert all(r.stream_ordering <= upto for _, rows in many for r in rows)
    # Bounded below the first room's last event (Dan's invite): it and the whole second room,
    # written after, are left out (what a reader's position had not reached yet).
    assert [len(rows) for _, rows in many] == [1, 6, 8, 0, 0, 1]
    many = await store.unread_events_many(queries, 1000, top)
    assert [len(rows) for _, rows in many] == [2, 6, 9, 3, 4, 2]
    # Each with where its receipt is, those without events too (Carol's private one: 12).
    assert [at for at, _ in many] == [read_at - 3, 0, 0, 12, 0, read_at - 3]
    # Dan's invite is a member event with his state key: kept though member events are skipped.
    assert any(json.loads(r.json)["type"] == "m.room.member" for r in many[2].events)
    assert not any(json.loads(r.json)["sender"] == ALICE for r in many[3].events)


# One statement a commit (PostgreSQL) -------------------------------------------------------


async def _history(storage: Storage) -> None:
    """Batches of every kind a commit writes: a new room, messages with transaction ids, a
    redaction, a reaction, a rejoin after a forget, few and many extremities superseded."""
    store = storage.events
    positions = [1]
    rooms = [RoomBuilder(f"!r{i}:example.org", positions) for i in range(10)]
    await store.persist_events(rooms[0].items(rooms[0].create(), new_room=True))
    for room in rooms[1:]:
        await store.persist_events(room.items(room.create(), new_room=True))
    room = rooms[0]
    message = room.event(ALICE, "m.room.message", {"body": "hi"})
    await store.persist_events(room.items([message], txns={message.event_id: (ALICE, "D", "t1")}))
    reaction = room.event(
        BOB,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message.event_id, "key": "+1"}},
    )
    redaction = room.event(ALICE, "m.room.redaction", {}, redacts=message.event_id)
    await store.persist_events(room.items([reaction, redaction]))
    leave = room.event(ALICE, "m.room.member", {"membership": "leave"}, ALICE)
    await store.persist_events(room.items([leave]))
    await store.forget_room(ALICE, room.room_id)
    join = room.event(ALICE, "m.room.member", {"membership": "join"}, ALICE)
    await store.persist_events(room.items([join]))
    # A message in each of three rooms (extremities by pairs), then in all ten (the other way).
    few = [r.items([r.event(ALICE, "m.room.message", {"body": "few"})]) for r in rooms[:3]]
    await store.persist_events([item for items in few for item in items])
    many = [r.items([r.event(ALICE, "m.room.message", {"body": "many"})]) for r in rooms]
    await store.persist_events([item for items in many for item in items])
    again = room.event(ALICE, "m.room.message", {"body": "again"})
    await store.persist_events(room.items([again], txns={again.event_id: (ALICE, "D", "t2")}))


async def _rows(storage: Storage) -> dict[str, list[tuple[Any, ...]]]:
    tables = (*TABLES, "event_forward_extremities", "forgotten_rooms")
    return {t: sorted(await storage.db.query("rows", f"SELECT * FROM {t}")) for t in tables}


@pytest_twisted.ensureDeferred
async def test_a_commit_as_one_statement_stores_what_separate_statements_store(
    pg_url: str, proxy: Any
) -> None:
    from homeserver.storage.migrations import migrate

    stored = []
    for one_statement in (True, False):
        storage = Storage.from_url(proxy.url_for(pg_url))
        storage.db.engine.fuses_writes = one_statement
        try:
            if one_statement:
                await migrate(storage.db)
            sent = len(proxy.queries)
            await _history(storage)
            stored.append(await _rows(storage))
            # What each one-message commit (transaction ids t1, t2) ran between BEGIN and
            # COMMIT, its PREPAREs aside.
            runs = [
                [s for s in q.split(b";") if s not in (b"BEGIN", b"COMMIT") and not s.startswith(b"PREPARE")]
                for q in proxy.queries[sent:]
                if q.endswith(b";COMMIT") and (b'"D","t1"' in q or b'"D","t2"' in q)
            ]
            await storage.db.execute("wipe", f"TRUNCATE {', '.join(stored[-1])}")
        finally:
            storage.close()
        assert len(runs) == 2
        assert all(len(run) == (1 if one_statement else 5) for run in runs), runs
    assert stored[0] == stored[1]
    assert stored[0]["forgotten_rooms"] == [] and len(stored[0]["event_forward_extremities"]) == 10
