"""What one read request may cost the server, whatever an account puts in its rooms: the
hierarchy walk's bound counts every room it looks up (docs/limits.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from harness import CS, Client, TestClock, make_server, room_path

import homeserver.core.spaces as spaces


@pytest_twisted.ensureDeferred
async def test_hierarchy_walk_counts_rooms_it_cannot_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A space's children that do not exist (or that the requester may not preview) each cost
    a room load: they used to be free, so a space of thousands of bogus children made every
    /hierarchy request load thousands of rooms."""
    monkeypatch.setattr(spaces, "MAX_ROOMS_WALKED", 4)
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        space = (
            await client.call(
                "POST",
                "/createRoom",
                token,
                {"preset": "public_chat", "creation_content": {"type": "m.space"}},
            )
        )["room_id"]
        child = (await client.call("POST", "/createRoom", token, {"preset": "public_chat"}))["room_id"]
        for i in range(5):
            bogus = f"!bogus{i}:fast.test"
            await client.call(
                "PUT",
                f"{room_path(space)}/state/m.space.child/{bogus}",
                token,
                {"via": ["fast.test"], "order": f"a{i}"},
            )
        await client.call(
            "PUT",
            f"{room_path(space)}/state/m.space.child/{child}",
            token,
            {"via": ["fast.test"], "order": "b"},
        )

        loads: list[str] = []
        load_room = hs.room_heads.store.load_room

        async def counted(room_id: str) -> Any:
            loads.append(room_id)
            return await load_room(room_id)

        monkeypatch.setattr(hs.room_heads.store, "load_room", counted)
        status, page = await client.start(
            "GET", f"{CS.replace('/v3', '/v1')}{room_path(space)}/hierarchy", token
        )
        assert status == 200, page
        # The space, then three bogus children: the walk ends there, before the real child.
        assert [r["room_id"] for r in page["rooms"]] == [space]
        assert len([r for r in loads if r.startswith("!bogus")]) == 3
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_search_context_is_clamped_and_profiles_read_in_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`event_context` took up to 100 events each side of each of 50 results (10,000 events,
    of up to 64 KiB each, in one answer) and read each sender's profile with a query of its
    own (up to 10,000 queries). Now at most 10 each side, and one profile query a result."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)
        await client.call(
            "PUT",
            f"/profile/{quote(bob['user_id'])}/displayname",
            bob["access_token"],
            {"displayname": "Bob B"},
        )
        senders = [alice, bob]
        for i in range(15):
            await client.call(
                "PUT",
                f"{room_path(room_id)}/send/m.room.message/b{i}",
                senders[i % 2]["access_token"],
                {"msgtype": "m.text", "body": f"before {i}"},
            )
        hit = await client.call(
            "PUT",
            f"{room_path(room_id)}/send/m.room.message/hit",
            alice["access_token"],
            {"msgtype": "m.text", "body": "the needle"},
        )
        for i in range(15):
            await client.call(
                "PUT",
                f"{room_path(room_id)}/send/m.room.message/a{i}",
                senders[i % 2]["access_token"],
                {"msgtype": "m.text", "body": f"after {i}"},
            )

        queries: list[str] = []
        db = hs.storage.events.db
        real_query = db.query

        async def counted(desc: str, sql: str, *args: Any) -> Any:
            queries.append(desc)
            return await real_query(desc, sql, *args)

        monkeypatch.setattr(db, "query", counted)
        context = {"before_limit": 100, "after_limit": 100, "include_profile": True}
        body = {"search_categories": {"room_events": {"search_term": "needle", "event_context": context}}}
        found = (await client.call("POST", "/search", alice["access_token"], body))["search_categories"]
        [result] = found["room_events"]["results"]
        assert result["result"]["event_id"] == hit["event_id"]
        ctx = result["context"]
        assert [e["content"].get("body") for e in ctx["events_before"]] == [
            f"before {i}" for i in range(14, 4, -1)
        ]
        assert [e["content"].get("body") for e in ctx["events_after"]] == [f"after {i}" for i in range(10)]
        assert ctx["profile_info"][bob["user_id"]] == {"displayname": "Bob B"}
        assert ctx["profile_info"][alice["user_id"]] == {"displayname": "alice"}
        assert len([q for q in queries if q.startswith("state_event")]) == 1
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_restricted_room_preview_loads_none_of_its_allowed_rooms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a user may preview a restricted room (room summary, each room of a /hierarchy
    walk) loaded each room its `allow` list names: a thousand bogus ones cost a thousand
    room loads a request. Now the user's own memberships answer."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, lobby = await client.alice_and_bob(hs)
        carol = await client.register(hs, "carol")
        allow = [{"type": "m.room_membership", "room_id": f"!bogus{i}:fast.test"} for i in range(300)]
        allow.append({"type": "m.room_membership", "room_id": lobby})
        join_rules = {
            "type": "m.room.join_rules",
            "state_key": "",
            "content": {"join_rule": "restricted", "allow": allow},
        }
        body = {"preset": "private_chat", "room_version": "10", "initial_state": [join_rules]}
        restricted = (await client.call("POST", "/createRoom", alice["access_token"], body))["room_id"]

        loads: list[str] = []
        load_room = hs.room_heads.store.load_room

        async def counted(room_id: str) -> Any:
            loads.append(room_id)
            return await load_room(room_id)

        monkeypatch.setattr(hs.room_heads.store, "load_room", counted)
        summary = f"{CS.replace('/v3', '/v1')}/room_summary/{quote(restricted)}"
        status, answer = await client.start("GET", summary, bob["access_token"])
        assert (status, answer.get("room_id")) == (200, restricted), answer
        status, answer = await client.start("GET", summary, carol["access_token"])
        assert status == 404, answer  # in no allowed room
        assert [r for r in loads if r.startswith("!bogus")] == []
    finally:
        await hs.stop(None)
