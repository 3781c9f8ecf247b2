"""A profile lookup of a user id whose server part is not a server name is the client's
mistake: 400 M_INVALID_PARAM, not a 502 as if some real server could not be reached."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_a_malformed_server_name_in_a_profile_lookup_is_400(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        for path in ("/profile/{}", "/profile/{}/displayname", "/profile/{}/avatar_url"):
            for user_id in ("@x:bad host!", "@x:example.org:99999", "@x:exa_mple.org"):
                status, body = await client.start("GET", CS + path.format(quote(user_id)), token)
                assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), (path, user_id, body)
    finally:
        await hs.stop(None)
