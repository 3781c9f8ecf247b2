"""Queries over a user's rooms hold for a user in more rooms than SQLite takes bound
parameters in one statement (32,766): message search and the user directory passed every
room id in one `IN (...)` and failed ("too many SQL variables"). On the real SQLite engine,
with the real rooms among 33,000 ids, the answers (their order and ranks too) are the ones
given for the real rooms alone."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server

from homeserver.storage.search import SearchRow

# Past SQLite's limit on bound parameters of one statement (SQLITE_MAX_VARIABLE_NUMBER).
MANY = 33_000


def padded(room_ids: list[str]) -> list[str]:
    """`room_ids` among MANY ids of rooms that do not exist, sorted as the services pass them."""
    return sorted([*room_ids, *(f"!nothere{i}:test" for i in range(MANY))])


@pytest_twisted.ensureDeferred
async def test_search_over_more_rooms_than_sqlite_parameters(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    try:
        store = hs.storage.search
        rooms = ["!a:test", "!b:test", "!c:test"]
        texts = ["walrus", "walrus walrus tusk", "a walrus on a long beach of sand", "walrus again"]
        await store.index(
            [
                SearchRow(f"$e{i}", rooms[i % 3], "@x:test", "m.room.message", "content.body", i + 1, 0, text)
                for i, text in enumerate(texts)
            ],
            [],
        )
        for by_rank in (True, False):
            for offset, before in ((0, None), (1, None), (0, 4)):
                args = (["walrus"], ["content.body"], by_rank, before, offset, 3)
                few = await store.search(args[0], rooms, *args[1:])
                assert few, (by_rank, offset, before)
                assert await store.search(args[0], padded(rooms), *args[1:]) == few
        # Only the rooms asked for.
        hits = await store.search(["walrus"], padded(["!b:test"]), ["content.body"], False, None, 0, 10)
        assert [h.event_id for h in hits] == ["$e1"]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_user_directory_over_more_rooms_than_sqlite_parameters(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob = [await client.register(hs, name) for name in ("alice", "bob")]
        room = await client.call("POST", "/createRoom", bob["access_token"], {"invite": [alice["user_id"]]})
        await client.call("POST", f"/join/{room['room_id']}", alice["access_token"], {})
        found = await client.call(
            "POST", "/user_directory/search", alice["access_token"], {"search_term": "bob"}
        )
        assert [r["user_id"] for r in found["results"]] == [bob["user_id"]]

        store = hs.storage.user_directory
        few = await store.search(["bob"], "bob", [room["room_id"]], 10)
        assert [u for u, _, _ in few] == [bob["user_id"]]
        assert await store.search(["bob"], "bob", padded([room["room_id"]]), 10) == few
        assert await store.search(["bob"], "bob", padded([]), 10) == []
    finally:
        await hs.stop(None)
