"""Room aliases with an empty localpart, whitespace or a second ':' are refused (400
M_INVALID_PARAM), both from PUT /directory/room and createRoom's room_alias_name: they
made look-alike aliases ("#a b", "#a\\n") and ones no client can parse ("#:server")."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_malformed_alias_localparts_are_refused(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, _, room = await client.alice_and_bob(hs)
        token = alice["access_token"]
        for local in ("", "a b", "a\n", "a:b", "\ta"):
            alias = f"#{local}:fast.test"
            status, body = await client.start(
                "PUT", CS + "/directory/room/" + quote(alias), token, {"room_id": room}
            )
            assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), (alias, body)
            status, body = await client.start("GET", CS + "/directory/room/" + quote(alias), token)
            assert status != 200, (alias, body)
            if local:
                status, body = await client.start(
                    "POST", CS + "/createRoom", token, {"room_alias_name": local}
                )
                assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), (local, body)

        # An ordinary alias, with non-ASCII letters, is still fine.
        await client.call("PUT", "/directory/room/" + quote("#café-talk:fast.test"), token, {"room_id": room})
        found = await client.call("GET", "/directory/room/" + quote("#café-talk:fast.test"), token)
        assert found["room_id"] == room
    finally:
        await hs.stop(None)
