"""A lone surrogate (`"\\ud800"`) in a client's JSON body is a clear 400 M_BAD_JSON: no
UTF-8 encodes it, so an event holding one could be neither hashed, stored nor sent to
other servers (it was a 500). The federation side: tests/fast/test_federation_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, connect, make_server, parse_response


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_an_event_is_refused_and_a_pair_is_kept(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    token = (await client.register(hs, "alice"))["access_token"]
    room = (await client.call("POST", "/createRoom", token, {}))["room_id"]

    async def send(txn: str, raw: bytes) -> tuple[int, bytes]:
        path = f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
        )
        _, transport = connect(hs.http)
        transport.protocol.dataReceived(head.encode() + raw)
        await transport.closed
        status, _, body = parse_response(transport.value())
        return status, body

    status, body = await send("t1", b'{"msgtype": "m.text", "body": "\\ud800"}')
    assert status == 400 and b"M_BAD_JSON" in body, body
    status, body = await send("t2", b'{"msgtype": "m.text", "\\udfff": "x", "body": "x"}')
    assert status == 400 and b"M_BAD_JSON" in body, body
    # A surrogate pair is one character (U+1F600), escaped or not; a literal "\ud800" is text.
    status, body = await send("t3", b'{"msgtype": "m.text", "body": "\\ud83d\\ude00 \\\\ud800"}')
    assert status == 200, body
    messages = await client.call("GET", f"/rooms/{room}/messages?dir=b&limit=1", token)
    assert messages["chunk"][0]["content"]["body"] == "\U0001f600 \\ud800"
    await hs.stop(None)
