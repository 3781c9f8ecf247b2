"""What one read request may cost the server, whatever an account puts in its rooms: the
hierarchy walk's bound counts every room it looks up (docs/limits.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
