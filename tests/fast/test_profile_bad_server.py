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


@pytest_twisted.ensureDeferred
async def test_a_remote_profile_holding_a_surrogate_is_502(tmp_path: Path) -> None:
    """A server answering a profile query with a surrogate, escaped (`"\\ud800"`) or as raw
    bytes (ED A0 80, not UTF-8), gave our client a 500: the answer was taken as text that no
    UTF-8 encodes, so our own response could not be written. It is a bad answer: 502."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    federation = hs.federation.client
    answers = [b'{"displayname": "\\ud800"}', b'{"displayname": "\xed\xa0\x80"}']

    async def prepare(*_: object) -> tuple[bytes, dict[bytes, list[bytes]], None]:
        return b"https://evil.example/", {}, None

    async def send(*_: object) -> tuple[int, bytes, str]:
        return 200, answers.pop(0), "application/json"

    federation._prepare = prepare  # type: ignore[method-assign]
    federation._send = send  # type: ignore[method-assign]
    try:
        token = (await client.register(hs, "alice"))["access_token"]
        for path in ("/profile/@a:evil.example", "/profile/@b:evil.example/displayname"):
            status, body = await client.start("GET", CS + path, token)
            assert (status, body.get("errcode")) == (502, "M_UNKNOWN"), (path, body)
        assert answers == []
    finally:
        await hs.stop(None)
