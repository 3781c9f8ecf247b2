"""A `send` frame with `room_id` on the WebSocket stream goes through the same checks as
`PUT /rooms/{roomId}/send`: the per-user rate limit, a suspended account's refusal and a
shadow ban. It skipped all three, so a suspended user kept posting, and a shadow-banned
user's messages reached the room, by sending over the stream instead of HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
from harness import CS, Client, TestClock, make_server, room_path, until
from test_ws_idle import TEXT, Stream

from homeserver.server import HomeServer


async def open_stream(hs: HomeServer, token: str) -> Stream:
    stream = Stream(hs, token)
    await until(lambda: len([f for f in stream.peek() if f[0] == TEXT]) >= 2, "ready and sync")
    stream.frames()
    return stream


async def send_frame(stream: Stream, room: str, txn_id: str, body: str) -> dict[str, object]:
    """Send a message over the stream; its answer (send_ack or error)."""
    frame = {
        "type": "send",
        "room_id": room,
        "txn_id": txn_id,
        "content": {"msgtype": "m.text", "body": body},
    }
    stream.send(TEXT, json.dumps(frame, separators=(",", ":")).encode())
    answers: list[dict[str, object]] = []

    def answered() -> bool:
        answers.extend(json.loads(p) for op, p in stream.frames() if op == TEXT)
        return any(a.get("txn_id") == txn_id for a in answers)

    await until(answered, f"an answer to {txn_id}")
    return next(a for a in answers if a.get("txn_id") == txn_id)


async def bodies_seen_by(client: Client, token: str, room: str) -> list[object]:
    page = await client.call("GET", f"{room_path(room)}/messages?dir=b&limit=50", token)
    return [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]


@pytest_twisted.ensureDeferred
async def test_a_suspended_account_cannot_send_over_the_stream(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice, bob, room = await client.alice_and_bob(hs)
    stream = await open_stream(hs, bob["access_token"])
    await hs.admin.set_restriction(bob["user_id"], "suspended", True)

    # Over HTTP the suspended account is refused ...
    status, answer = await client.start(
        "PUT",
        f"{CS}{room_path(room)}/send/m.room.message/h1",
        bob["access_token"],
        {"msgtype": "m.text", "body": "http"},
    )
    assert (status, answer["errcode"]) == (403, "M_USER_SUSPENDED")
    # ... and over the stream too.
    answer = await send_frame(stream, room, "w1", "stream")
    assert (answer["type"], answer["errcode"]) == ("error", "M_USER_SUSPENDED")
    assert "stream" not in await bodies_seen_by(client, alice["access_token"], room)
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_shadow_banned_accounts_stream_sends_reach_no_one(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice, bob, room = await client.alice_and_bob(hs)
    stream = await open_stream(hs, bob["access_token"])
    await hs.admin.set_restriction(bob["user_id"], "shadow_banned", True)

    answer = await send_frame(stream, room, "w1", "spam")
    # It looks sent to bob, and alice never sees it.
    assert answer["type"] == "send_ack" and str(answer["event_id"]).startswith("$")
    assert "spam" not in await bodies_seen_by(client, alice["access_token"], room)
    await hs.stop(None)
