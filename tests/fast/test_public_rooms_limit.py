"""/publicRooms' `limit`, GET's query parameter and POST's body field alike: the spec gives
it no range; as in Synapse, 0 means no limit and a negative one is refused. Both used to
be turned silently into a page of one room."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_limit_zero_is_no_limit_and_negative_is_refused(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        rooms = set()
        for name in ("one", "two", "three"):
            body = {"preset": "public_chat", "visibility": "public", "name": name}
            rooms.add((await client.call("POST", "/createRoom", token, body))["room_id"])

        for method, limit in (("GET", "0"), ("POST", 0)):
            if method == "GET":
                status, page = await client.start("GET", CS + "/publicRooms", token, limit=str(limit))
            else:
                status, page = await client.start("POST", CS + "/publicRooms", token, {"limit": limit})
            assert status == 200, page
            assert {r["room_id"] for r in page["chunk"]} == rooms, (method, page)
            assert "next_batch" not in page and page["total_room_count_estimate"] == 3

        for limit in ("-1", "-100"):
            status, answer = await client.start("GET", CS + "/publicRooms", token, limit=limit)
            assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), answer
            status, answer = await client.start("POST", CS + "/publicRooms", token, {"limit": int(limit)})
            assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), answer
        # Also when another server's list is asked for: refused here, not passed on.
        status, answer = await client.start(
            "GET", CS + "/publicRooms", token, limit="-1", server="elsewhere.example"
        )
        assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), answer

        # A positive limit pages as before.
        status, first = await client.start("GET", CS + "/publicRooms", token, limit="2")
        assert status == 200 and len(first["chunk"]) == 2 and first["next_batch"]
        status, rest = await client.start(
            "GET", CS + "/publicRooms", token, limit="0", since=first["next_batch"]
        )
        assert status == 200 and len(rest["chunk"]) == 1 and "next_batch" not in rest
        assert {r["room_id"] for r in first["chunk"] + rest["chunk"]} == rooms
    finally:
        await hs.stop(None)
