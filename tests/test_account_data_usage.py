"""The account data each user holds, kept by triggers on both engines (sql/101): what the
client API checks limits.max_account_data_per_user against, without summing the user's
entries at every PUT."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from homeserver.storage import Storage


async def _summed(storage: Storage, user_id: str) -> int:
    """The same measure, summed over the user's entries (what the triggers spare)."""
    rows = await storage.db.query(
        "summed", "SELECT room_id, type, content FROM account_data WHERE user_id = ?", user_id
    )
    return sum(len(room_id) + len(data_type) + len(content) for room_id, data_type, content in rows)


@pytest_twisted.ensureDeferred
async def test_usage_follows_writes_rewrites_and_erasure(storage: Storage) -> None:
    store = storage.user_data
    alice, bob = "@alice:example.org", "@bob:example.org"
    assert await store.account_data_size(alice, "", "m.direct") == (0, 0)

    writes: list[tuple[str, str, str, dict[str, Any]]] = [
        (alice, "", "org.example.a", {"x": "y" * 1000}),
        (alice, "!room:example.org", "m.tag", {"tags": {"u.work": {"order": 0.5}}}),
        (bob, "", "org.example.a", {"b": 1}),
        (alice, "", "org.example.a", {"x": "short"}),  # written again: an upsert's update
        (alice, "", "org.example.b", {}),
    ]
    for position, (user, room, data_type, content) in enumerate(writes, start=1):
        await store.put_account_data(user, room, data_type, content, position)
        used, _ = await store.account_data_size(user, room, data_type)
        assert used == await _summed(storage, user)

    used, replaced = await store.account_data_size(alice, "", "org.example.a")
    assert replaced == len("org.example.a") + len(json.dumps({"x": "short"}))
    assert used == await _summed(storage, alice) > replaced
    assert (await store.account_data_size(bob, "", "x"))[0] == await _summed(storage, bob)

    # Erasure empties both; Bob's is untouched.
    await storage.gdpr.delete_personal_rows(alice)
    assert await store.account_data_size(alice, "", "org.example.a") == (0, 0)
    assert (await store.account_data_size(bob, "", "x"))[0] == await _summed(storage, bob) > 0
