"""A lone surrogate (`"\\ud800"`) in a client's JSON body is a clear 400 M_BAD_JSON: no
UTF-8 encodes it, so an event holding one could be neither hashed, stored nor sent to
other servers (it was a 500). Its UTF-8-like spelling as raw bytes (ED A0 80, which is not
UTF-8) is M_NOT_JSON. The same holds for WebSocket frames. The federation side:
tests/fast/test_federation_limits.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, request_bytes, until
from test_ws_idle import TEXT
from test_ws_send_restrictions import open_stream, send_frame

from homeserver.server import HomeServer

BINARY = 0x2


async def put_raw(hs: HomeServer, token: str, path: str, raw: bytes) -> tuple[int, bytes]:
    """PUT `raw` bytes as a JSON body, as no JSON library would write them."""
    assert hs.http is not None
    status, _, body = await request_bytes(hs.http, "PUT", path, token, raw)
    return status, body


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_an_event_is_refused_and_a_pair_is_kept(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    token = (await client.register(hs, "alice"))["access_token"]
    room = (await client.call("POST", "/createRoom", token, {}))["room_id"]

    async def send(txn: str, raw: bytes) -> tuple[int, bytes]:
        return await put_raw(hs, token, f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", raw)

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


@pytest_twisted.ensureDeferred
async def test_an_encoded_surrogate_in_a_body_is_not_json(tmp_path: Path) -> None:
    """ED A0 80 is how CESU-8 would spell U+D800; json.loads(bytes) took it as text, and the
    send failed with a 500 when the event was hashed."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    token = (await client.register(hs, "alice"))["access_token"]
    room = (await client.call("POST", "/createRoom", token, {}))["room_id"]
    user_id = (await client.call("GET", "/account/whoami", token))["user_id"]
    for path in (
        f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t1",
        f"/_matrix/client/v3/user/{user_id}/account_data/org.example.x",
    ):
        status, body = await put_raw(hs, token, path, b'{"msgtype": "m.text", "body": "\xed\xa0\x80"}')
        assert (status, json.loads(body)["errcode"]) == (400, "M_NOT_JSON"), (path, body)
    messages = await client.call("GET", f"/rooms/{room}/messages?dir=b&limit=5", token)
    assert [e for e in messages["chunk"] if e["type"] == "m.room.message"] == []
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_websocket_frames_with_surrogates_or_nan_get_an_error_frame(tmp_path: Path) -> None:
    """A lone surrogate in a frame made an "Internal server error" frame (send, read) or
    dropped the connection with a traceback (ping, an error echoing txn_id); NaN in a
    ping's id was echoed back in a pong that is not JSON."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice, _, room = await client.alice_and_bob(hs)
    stream = await open_stream(hs, alice["access_token"])
    sent = [
        (TEXT, b'{"type":"ping","id":"\\ud800"}', "M_BAD_JSON"),
        (TEXT, b'{"type":"send","txn_id":"\\ud800","room_id":"x"}', "M_BAD_JSON"),
        (TEXT, b'{"type":"read","chatId":"\\udfff"}', "M_BAD_JSON"),
        (TEXT, b'{"type":"ping","id":NaN}', "M_NOT_JSON"),
        (BINARY, b'{"type":"read","chatId":"\xed\xa0\x80"}', "M_NOT_JSON"),
    ]
    answers: list[bytes] = []

    def answered() -> bool:
        answers.extend(p for op, p in stream.frames() if op == TEXT)
        return bool(answers)

    for opcode, payload, errcode in sent:
        answers.clear()
        stream.send(opcode, payload)
        await until(answered, f"an answer to {payload!r}")
        answer = json.loads(answers[0])
        assert (answer["type"], answer["errcode"]) == ("error", errcode), (payload, answer)
    # The stream is still open: a message goes through.
    answer = await send_frame(stream, room, "w1", "ok")
    assert answer["type"] == "send_ack", answer
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_nan_and_infinity_in_a_body_are_not_json(tmp_path: Path) -> None:
    """json.loads takes NaN, Infinity and -Infinity, which are not JSON: account data stored
    them and answered them back as null."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    token = (await client.register(hs, "alice"))["access_token"]
    user_id = (await client.call("GET", "/account/whoami", token))["user_id"]
    path = f"/_matrix/client/v3/user/{user_id}/account_data/org.example.x"
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        status, body = await put_raw(hs, token, path, b'{"n": ' + constant + b"}")
        assert (status, json.loads(body)["errcode"]) == (400, "M_NOT_JSON"), (constant, body)
    status, _ = await client.start(
        "GET", f"/_matrix/client/v3/user/{user_id}/account_data/org.example.x", token
    )
    assert status == 404
    await hs.stop(None)
