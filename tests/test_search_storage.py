"""The full-text index's writes (storage/search.py) on both engines: a batch in one
transaction, a repeated batch (a durable consumer's replay after a crash) and an event
twice in one batch leave one row each, and removed events leave the index."""

from __future__ import annotations

import pytest_twisted

from homeserver.storage import Storage
from homeserver.storage.search import SearchRow

ROOM = "!r:example.org"
KEYS = ["content.body"]


def row(n: int, text: str) -> SearchRow:
    return SearchRow(f"$e{n}", ROOM, "@a:example.org", "m.room.message", "content.body", n, 1000 + n, text)


async def found(storage: Storage, word: str) -> list[str]:
    hits = await storage.search.search([word], [ROOM], KEYS, False, None, 0, 10)
    return [h.event_id for h in hits]


@pytest_twisted.ensureDeferred
async def test_index_batches_repeats_and_removals(storage: Storage) -> None:
    await storage.search.index([row(1, "apples and pears"), row(2, "more apples"), row(3, "plums")], [])
    assert await found(storage, "apples") == ["$e2", "$e1"]
    # Replayed, and an event twice in one batch (the last text wins): one row each.
    await storage.search.index([row(1, "apples and pears"), row(3, "plums"), row(3, "cherries")], [])
    assert await found(storage, "apples") == ["$e2", "$e1"]
    assert await found(storage, "cherries") == ["$e3"]
    assert await found(storage, "plums") == []
    count = await storage.db.query("count", "SELECT COUNT(*) FROM event_search")
    assert count[0][0] == 3
    # Redacted: gone from the index, in the same transaction as new rows.
    await storage.search.index([row(4, "apples again")], ["$e1", "$e3"])
    assert await found(storage, "apples") == ["$e4", "$e2"]
    assert await found(storage, "cherries") == []


@pytest_twisted.ensureDeferred
async def test_messages_of_an_erased_sender_are_not_indexed(storage: Storage) -> None:
    """The indexer writes events as they were committed: once their sender is erased, a
    write that comes after the erasure pruned them must not put their text back. A room's
    name or topic is the room's and is still indexed."""
    await storage.gdpr.mark_erased("@a:example.org", 1)
    topic = SearchRow("$t", ROOM, "@a:example.org", "m.room.topic", "content.topic", 2, 1002, "apples topic")
    other = SearchRow("$o", ROOM, "@b:example.org", "m.room.message", "content.body", 3, 1003, "apples too")
    await storage.search.index([row(1, "apples and pears"), topic, other], [])
    hits = await storage.search.search(
        ["apples"], [ROOM], ["content.body", "content.topic"], False, None, 0, 10
    )
    assert [h.event_id for h in hits] == ["$o", "$t"]
