"""A flood of `read` frames on the WebSocket stream is bounded like `send` frames: at most
MAX_SENDS_IN_FLIGHT wait for their commit at once, the rest get M_LIMIT_EXCEEDED with their
`txn_id`. Each read was a coroutine and a database write with no limit at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, until
from test_ws_idle import TEXT, Stream, client_frame

from homeserver.api.ws import MAX_SENDS_IN_FLIGHT


@pytest_twisted.ensureDeferred
async def test_a_flood_of_read_frames_is_refused_past_the_in_flight_limit(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice, bob, room = await client.alice_and_bob(hs)
    status, _ = await client.start(
        "POST", "/api/messages/send", alice["access_token"], {"chatId": room, "content": "hi"}
    )
    assert status == 201
    stream = Stream(hs, bob["access_token"])
    await until(lambda: len([f for f in stream.peek() if f[0] == TEXT]) >= 2, "ready and sync")
    stream.frames()

    flood = MAX_SENDS_IN_FLIGHT + 20
    stream.protocol.dataReceived(
        b"".join(
            client_frame(TEXT, json.dumps({"type": "read", "chatId": room, "txn_id": f"r{i}"}).encode())
            for i in range(flood)
        )
    )

    def answers() -> list[dict[str, object]]:
        return [json.loads(p) for op, p in stream.peek() if op == TEXT and json.loads(p)["type"] != "sync"]

    await until(lambda: len(answers()) == flood, "every read answered")
    acked = [a["txn_id"] for a in answers() if a["type"] == "read_ack"]
    refused = [a["txn_id"] for a in answers() if a.get("errcode") == "M_LIMIT_EXCEEDED"]
    assert acked == [f"r{i}" for i in range(MAX_SENDS_IN_FLIGHT)]
    assert refused == [f"r{i}" for i in range(MAX_SENDS_IN_FLIGHT, flood)]
    stream.frames()

    # Once they are stored, the stream takes reads again.
    stream.send(TEXT, json.dumps({"type": "read", "chatId": room, "txn_id": "again"}).encode())
    await until(lambda: any(a.get("txn_id") == "again" for a in answers()), "the next read answered")
    assert [a["type"] for a in answers() if a.get("txn_id") == "again"] == ["read_ack"]
    await hs.stop(None)
