"""Every storage read that takes a list of ids of unbounded length (a user's rooms, a room's
members, a user's ignored users, every pusher) answers for more ids than SQLite takes bound
parameters in one statement (32,766), on both engines, and gives the rows it gives for the
real ids alone. They passed the ids in one `IN (...)` and failed ("too many SQL variables").
The search and user-directory reads: tests/fast/test_many_rooms_queries.py."""

from __future__ import annotations

import pytest_twisted

from homeserver.storage import Storage
from homeserver.storage.events import UnreadQuery
from homeserver.storage.search import SearchRow

MANY = 33_000


def fake(prefix: str) -> list[str]:
    return [f"{prefix}nothere{i}:test" for i in range(MANY)]


@pytest_twisted.ensureDeferred
async def test_reads_over_more_ids_than_sqlite_parameters(storage: Storage) -> None:
    rooms, users, events = fake("!"), fake("@"), fake("$")
    ev = storage.events
    assert await ev.last_positions_of_types(rooms, ["m.room.message"]) == {}
    assert await ev.txn_ids_for_events(events) == {}
    assert await ev.membership_changes(rooms, 0, 10**9) == []
    assert await ev.read_positions("@u:test", rooms) == {}
    assert await ev.events_before_in_rooms(rooms, 10**9, "@u:test", 10) == []
    assert await ev.thread_replies(events) == []
    assert await ev.annotations(events) == []
    assert await ev.edits(events) == {}
    unread = await ev.unread_events_many([UnreadQuery("@u:test", "!r:test", (), users)], 10, 10**9)
    assert [(u.read_at, u.events) for u in unread] == [(0, [])]
    assert await storage.user_data.receipts_for_rooms(rooms, 0, 10**9) == []
    assert await storage.user_data.delivery_positions(users) == {}
    assert await storage.pushers.for_users(users) == []
    assert await storage.pushers.by_ids(users) == []
    assert await storage.e2ee.get_cross_signing_keys(users) == {}


@pytest_twisted.ensureDeferred
async def test_search_over_more_rooms_than_sqlite_parameters(storage: Storage) -> None:
    store = storage.search
    rooms = ["!a:test", "!b:test", "!c:test"]
    texts = ["walrus", "walrus walrus tusk", "a walrus on a long beach of sand", "walrus again"]
    rows = [
        SearchRow(f"$e{i}", rooms[i % 3], "@x:test", "m.room.message", "content.body", i + 1, 0, text)
        for i, text in enumerate(texts)
    ]
    await store.index(rows, [])
    padded = sorted([*rooms, *fake("!")])
    for by_rank in (True, False):
        for offset, before in ((0, None), (1, None), (0, 4)):
            few = await store.search(["walrus"], rooms, ["content.body"], by_rank, before, offset, 3)
            assert few
            assert await store.search(["walrus"], padded, ["content.body"], by_rank, before, offset, 3) == few
