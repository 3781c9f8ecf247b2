"""The simple API's `before` cursor (`GET /api/messages/{chatId}`) is parsed strictly: a cursor
the server never writes (a sync token, a number spelled another way, a position below zero in
a chat without history from other servers) is 400 M_INVALID_PARAM. These paged to an empty
200, which a client reads as the start of the chat. The cursors of the Link headers page as
before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest_twisted
from harness import Client, TestClock, connect, make_server, parse_response

from homeserver.server import HomeServer


async def page(hs: HomeServer, token: str, chat_id: str, **params: str) -> tuple[int, Any, str | None]:
    """(status, body, the next page's `before` from the Link header, if any)."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    head = (
        f"GET /api/messages/{quote(chat_id, safe='')}?{query} HTTP/1.1\r\nHost: test\r\n"
        f"Connection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    assert hs.http is not None
    _, transport = connect(hs.http)
    transport.protocol.dataReceived(head.encode())
    await transport.closed
    status, headers, data = parse_response(transport.value())
    before = None
    if "link" in headers:
        url = headers["link"].split(">", 1)[0].lstrip("<")
        before = parse_qs(urlsplit(url).query)["before"][0]
    return status, json.loads(data), before


@pytest_twisted.ensureDeferred
async def test_link_cursors_page_and_malformed_ones_are_refused(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, _, chat_id = await client.alice_and_bob(hs)
        token = alice["access_token"]
        for i in range(7):
            body = {"chatId": chat_id, "content": f"m{i}"}
            assert (await client.start("POST", "/api/messages/send", token, body))[0] == 201

        seen: list[str] = []
        status, messages, before = await page(hs, token, chat_id, limit="3")
        cursors = []
        while True:
            assert status == 200
            seen += [m["content"] for m in messages]
            if before is None:
                break
            cursors.append(before)
            status, messages, before = await page(hs, token, chat_id, limit="3", before=before)
        assert seen == [f"m{i}" for i in reversed(range(7))]
        assert len(cursors) == 2

        for bad in (
            "p-1",
            "p-5",
            "s1",
            "s1_0_0_0_0_0_0",
            cursors[0].replace("p", "s"),
            "p0" + cursors[0][1:],
            "p+" + cursors[0][1:],
            "p-0",
            "p",
            "",
            "1",
            "P1",
            cursors[0] + " ",
            "p\u0661",
            "p" + "9" * 16,
            "garbage",
        ):
            status, answer, _ = await page(hs, token, chat_id, before=bad)
            assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), bad
            assert "before" in answer["error"]

        # Well formed: at the start of the stream nothing is older; past its end, the newest.
        assert (await page(hs, token, chat_id, before="p0"))[:2] == (200, [])
        status, messages, _ = await page(hs, token, chat_id, before="p" + "9" * 15, limit="1")
        assert (status, [m["content"] for m in messages]) == (200, ["m6"])
    finally:
        await hs.stop(None)
