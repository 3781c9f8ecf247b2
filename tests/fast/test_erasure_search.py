"""An erasure while the search index is behind (core/erasure.py): the indexer hands over
events as they were committed, so a message it had not yet written when the erasure
pruned it must not reach the index afterwards with its text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path, turn, until
from twisted.internet.defer import Deferred

from homeserver.storage.search import SearchRow


@pytest_twisted.ensureDeferred
async def test_a_message_the_indexer_had_not_written_is_not_found_after_erasure(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)

        # The index write of alice's message is held until the test lets it go.
        store = hs.search_index.store
        real = store.index
        gate: Deferred[None] = Deferred()
        held: list[list[SearchRow]] = []

        async def held_index(rows: list[SearchRow], removed: list[str]) -> None:
            if any(r.sender == alice["user_id"] for r in rows):
                held.append(rows)
                await gate
            await real(rows, removed)

        store.index = held_index  # type: ignore[method-assign]
        path = f"{room_path(room_id)}/send/m.room.message/t1"
        await client.call(
            "PUT", path, alice["access_token"], {"msgtype": "m.text", "body": "zanzibar secret"}
        )
        await until(lambda: bool(held), "the indexer holds alice's message")

        erased = Deferred.fromCoroutine(hs.erasure.erase_user(alice["user_id"]))
        for _ in range(20):  # the erasure runs as far as it can while the index is held
            await turn()
        # It waits for the index before pruning: the held write lands, and pruning deletes it.
        assert not erased.called
        gate.callback(None)
        await erased

        query: dict[str, Any] = {"search_categories": {"room_events": {"search_term": "zanzibar"}}}
        found = await client.call("POST", "/search", bob["access_token"], query)
        assert found["search_categories"]["room_events"]["results"] == []
        rows = await hs.storage.db.query(
            "count", "SELECT COUNT(*) FROM event_search WHERE sender = ?", alice["user_id"]
        )
        assert rows[0][0] == 0
    finally:
        await hs.stop(None)
