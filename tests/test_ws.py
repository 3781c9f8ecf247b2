"""The WebSocket stream (/_homeserver/ws, docs/api.md "WebSocket stream") against a real server.

The client is websocket-client (blocking, one socket per test step); the Matrix
client that sends the messages a stream must resume is matrix-nio, run with
`asyncio.run` on a worker thread as in test_nio_client.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import requests
import websocket
from conftest import ServerProcess
from nio import AsyncClient, RegisterResponse, RoomCreateResponse, RoomSendResponse

T = TypeVar("T")
PASSWORD = "ws-" + secrets.token_urlsafe(12)
CLIENT = "/_matrix/client/v3"
# Every access token a test used: none may appear in the server's log.
TOKENS: list[str] = []


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """asyncio.run(coro) on a fresh thread and loop; its exceptions are raised here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


def new_user(server: ServerProcess, prefix: str = "ws") -> dict[str, Any]:
    user = server.register(f"{prefix}{secrets.token_hex(4)}", PASSWORD)
    TOKENS.append(user["access_token"])
    return user


def auth(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['access_token']}"}


def ws_url(server: ServerProcess, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/_homeserver/ws{query}"


class Socket(websocket.WebSocket):  # type: ignore[misc]
    """A client socket that keeps the frames `recv_type` skipped, for the next `recv`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[dict[str, Any]] = []


def connect(
    server: ServerProcess,
    token: str | None = None,
    query: str = "",
    header: list[str] | None = None,
    **kwargs: Any,
) -> Socket:
    if header is None:
        header = [f"Authorization: Bearer {token}"] if token is not None else []
    ws: Socket = websocket.create_connection(
        ws_url(server, query), header=header, timeout=10, class_=Socket, **kwargs
    )
    return ws


def send(ws: Socket, frame: dict[str, Any]) -> None:
    ws.send(json.dumps(frame))


def recv(ws: Socket, timeout: float = 10) -> dict[str, Any]:
    if ws.pending:
        return ws.pending.pop(0)
    ws.settimeout(timeout)
    frame: dict[str, Any] = json.loads(ws.recv())
    return frame


def recv_type(ws: Socket, kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next frame of type `kind`; frames of other types stay for `recv` (sync frames come at any time)."""
    for i, frame in enumerate(ws.pending):
        if frame["type"] == kind:
            return ws.pending.pop(i)
    deadline = time.monotonic() + timeout
    while True:
        ws.settimeout(max(0.01, deadline - time.monotonic()))
        frame = json.loads(ws.recv())
        if frame["type"] == kind:
            return frame
        ws.pending.append(frame)


def recv_close(ws: Socket, timeout: float = 10) -> tuple[int, str]:
    """The code and reason of the server's close frame (other frames are skipped)."""
    ws.settimeout(timeout)
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data
            return struct.unpack("!H", data[:2])[0], data[2:].decode("utf-8")


def open_stream(server: ServerProcess, user: dict[str, Any]) -> tuple[Socket, dict[str, Any]]:
    """A header-authenticated stream, past its ready frame and initial sync frame."""
    ws = connect(server, user["access_token"])
    ready = recv(ws)
    assert ready == {"type": "ready", "user_id": user["user_id"], "device_id": user["device_id"]}
    initial = recv(ws)
    assert initial["type"] == "sync", initial
    return ws, initial


def ping(ws: Socket) -> None:
    """A round trip: every frame sent before it has been handled when the pong arrives."""
    tag = secrets.token_hex(4)
    send(ws, {"type": "ping", "id": tag})
    assert recv_type(ws, "pong")["id"] == tag


def timeline(frame: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (
        frame["data"]["rooms"]["join"].get(room_id, {}).get("timeline", {}).get("events", [])
    )
    return events


def messages_in(frame: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    return [ev for ev in timeline(frame, room_id) if ev["type"] == "m.room.message"]


def collect_messages(
    ws: Socket, room_id: str, want: int, settle: float = 1.0, timeout: float = 10
) -> tuple[list[dict[str, Any]], str]:
    """Message events pushed for the room until `want` arrived and `settle` s more passed quietly."""
    got: list[dict[str, Any]] = []
    next_batch = ""
    deadline = time.monotonic() + timeout
    while True:
        wait = settle if len(got) >= want else max(0.01, deadline - time.monotonic())
        try:
            frame = recv(ws, wait)
        except websocket.WebSocketTimeoutException:
            if len(got) >= want:
                return got, next_batch
            raise
        if frame["type"] == "sync":
            got.extend(messages_in(frame, room_id))
            next_batch = frame["next_batch"]


def create_room(server: ServerProcess, owner: dict[str, Any], invite: list[str]) -> str:
    r = requests.post(server.url(f"{CLIENT}/createRoom"), json={"invite": invite}, headers=auth(owner))
    assert r.status_code == 200, r.text
    room_id: str = r.json()["room_id"]
    return room_id


def join(server: ServerProcess, user: dict[str, Any], room_id: str) -> None:
    r = requests.post(server.url(f"{CLIENT}/join/{quote(room_id)}"), json={}, headers=auth(user))
    assert r.status_code == 200, r.text


def message_status(server: ServerProcess, user: dict[str, Any], chat_id: str, message_id: str) -> str:
    r = requests.get(
        server.url(f"/api/messages/{quote(chat_id)}/{quote(message_id)}/status"), headers=auth(user)
    )
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


# matrix-nio, the other side of the resume test ------------------------------------------


async def nio_create_room(server: ServerProcess, invitee: str) -> tuple[str, str, str, str]:
    """A nio user and a room it made with `invitee` invited: (user id, device id, token, room id)."""
    client = AsyncClient(server.base_url)
    try:
        reg = await client.register(f"nio{secrets.token_hex(4)}", PASSWORD)
        assert isinstance(reg, RegisterResponse), reg
        room = await client.room_create(invite=[invitee])
        assert isinstance(room, RoomCreateResponse), room
        return reg.user_id, reg.device_id, reg.access_token, room.room_id
    finally:
        await client.close()


async def nio_send(
    server: ServerProcess, login: tuple[str, str, str], room_id: str, bodies: list[str]
) -> list[str]:
    client = AsyncClient(server.base_url)
    client.restore_login(*login)
    try:
        ids = []
        for body in bodies:
            sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
            assert isinstance(sent, RoomSendResponse), sent
            ids.append(sent.event_id)
        return ids
    finally:
        await client.close()


# Resuming --------------------------------------------------------------------------------


def test_reconnect_with_token_gets_exactly_the_missed_messages(any_server: ServerProcess) -> None:
    """The issue's test: a client receives a message sent by a nio client, disconnects, misses
    three messages, reconnects with its token and gets exactly those three."""
    server = any_server
    alice = new_user(server)
    nio_user, nio_device, nio_token, room_id = run(nio_create_room(server, alice["user_id"]))
    TOKENS.append(nio_token)
    nio_login = (nio_user, nio_device, nio_token)
    join(server, alice, room_id)

    ws, _ = open_stream(server, alice)
    [first] = run(nio_send(server, nio_login, room_id, ["before the gap"]))
    received, token = collect_messages(ws, room_id, 1)
    assert [ev["event_id"] for ev in received] == [first]
    assert received[0]["sender"] == nio_user
    ws.close()

    missed = run(nio_send(server, nio_login, room_id, ["one", "two", "three"]))

    ws = connect(server)
    send(ws, {"type": "auth", "token": alice["access_token"], "since": token})
    assert recv(ws)["type"] == "ready"
    resumed, _ = collect_messages(ws, room_id, 3)
    assert [ev["event_id"] for ev in resumed] == missed
    assert [ev["content"]["body"] for ev in resumed] == ["one", "two", "three"]

    # Live again: the next message arrives once, on its own.
    [after] = run(nio_send(server, nio_login, room_id, ["after the gap"]))
    live, _ = collect_messages(ws, room_id, 1)
    assert [ev["event_id"] for ev in live] == [after]
    ws.close()


def test_resume_with_the_latest_token_pushes_nothing_old(server: ServerProcess) -> None:
    alice = new_user(server)
    room_id = create_room(server, alice, [])
    ws, initial = open_stream(server, alice)
    assert room_id in initial["data"]["rooms"]["join"]
    ws.close()

    ws = connect(server, alice["access_token"], f"?since={initial['next_batch']}")
    assert recv(ws)["type"] == "ready"
    ping(ws)
    assert ws.pending == []  # no sync frame came before the pong: nothing changed since the token
    ws.close()


# Auth ----------------------------------------------------------------------------------------


def test_header_auth_pushes_an_initial_sync_and_counts_as_syncing(server: ServerProcess) -> None:
    alice = new_user(server)
    room_id = create_room(server, alice, [])
    ws, initial = open_stream(server, alice)
    assert initial["next_batch"].startswith("s")
    assert initial["data"]["next_batch"] == initial["next_batch"]
    assert room_id in initial["data"]["rooms"]["join"]
    r = requests.get(server.url(f"{CLIENT}/presence/{quote(alice['user_id'])}/status"), headers=auth(alice))
    assert r.status_code == 200, r.text
    assert r.json()["presence"] == "online"
    ws.close()


def test_first_frame_auth(server: ServerProcess) -> None:
    alice = new_user(server)
    ws = connect(server)
    send(ws, {"type": "auth", "token": alice["access_token"]})
    send(ws, {"type": "ping", "id": "early"})  # sent before the token is checked: handled after
    assert recv(ws) == {"type": "ready", "user_id": alice["user_id"], "device_id": alice["device_id"]}
    assert recv_type(ws, "pong") == {"type": "pong", "id": "early"}
    assert recv(ws)["type"] == "sync"
    ws.close()


@pytest.mark.parametrize("with_header", [False, True])
def test_token_in_url_is_refused(server: ServerProcess, with_header: bool) -> None:
    alice = new_user(server)
    ws = connect(
        server, alice["access_token"] if with_header else None, f"?access_token={alice['access_token']}"
    )
    code, reason = recv_close(ws)
    assert code == 4400
    assert "URL" in reason


def test_bad_token_is_closed_with_unknown_token(server: ServerProcess) -> None:
    ws = connect(server, "not-a-token")
    code, reason = recv_close(ws)
    assert code == 4401 and reason.startswith("M_UNKNOWN_TOKEN"), (code, reason)

    ws = connect(server)
    send(ws, {"type": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.e30.forged"})
    code, reason = recv_close(ws)
    assert code == 4401 and reason.startswith("M_UNKNOWN_TOKEN"), (code, reason)

    ws = connect(server, header=["Authorization: Basic YTpi"])
    code, reason = recv_close(ws)
    assert code == 4401 and reason.startswith("M_UNKNOWN_TOKEN"), (code, reason)

    # Any JSON string may arrive in an auth frame: still a bad token (4401), not a server
    # error (4500). One no codec can encode (a lone surrogate) makes the frame itself bad JSON
    # (4400), as the same body would be over HTTP.
    for token in ("é" * 40, "x" * 100_000):
        ws = connect(server)
        send(ws, {"type": "auth", "token": token})
        code, reason = recv_close(ws)
        assert code == 4401 and reason.startswith("M_UNKNOWN_TOKEN"), (token[:10], code, reason)
    ws = connect(server)
    send(ws, {"type": "auth", "token": "\ud800"})
    code, reason = recv_close(ws)
    assert code == 4400 and reason.startswith("M_BAD_JSON"), (code, reason)


def test_revoked_token_is_closed_with_unknown_token(server: ServerProcess) -> None:
    alice = new_user(server)
    r = requests.post(server.url(f"{CLIENT}/logout"), json={}, headers=auth(alice))
    assert r.status_code == 200, r.text
    ws = connect(server, alice["access_token"])
    code, reason = recv_close(ws)
    assert code == 4401 and reason.startswith("M_UNKNOWN_TOKEN"), (code, reason)


def test_bad_since_and_oversized_frames_close_the_stream(server: ServerProcess) -> None:
    alice = new_user(server)
    ws = connect(server, alice["access_token"], "?since=yesterday")
    code, reason = recv_close(ws)
    assert code == 4400 and reason.startswith("M_INVALID_PARAM"), (code, reason)

    ws, _ = open_stream(server, alice)
    send(ws, {"type": "ping", "padding": "x" * 200_000})
    code, _ = recv_close(ws)
    assert code == 1009


def send_fragmented(ws: Socket, payload: bytes, fragments: int) -> None:
    """One text message in `fragments` frames: the first and last carry `payload`, the rest are empty."""
    half = len(payload) // 2
    ws.send_frame(websocket.ABNF(0, opcode=websocket.ABNF.OPCODE_TEXT, data=payload[:half]))
    for _ in range(fragments - 2):
        ws.send_frame(websocket.ABNF(0, opcode=websocket.ABNF.OPCODE_CONT, data=b""))
    ws.send_frame(websocket.ABNF(1, opcode=websocket.ABNF.OPCODE_CONT, data=payload[half:]))


def test_a_message_in_too_many_fragments_closes_the_stream(server: ServerProcess) -> None:
    """Fragments are bounded by count, not only by bytes: an endless run of empty ones would
    grow the server's list of the message's parts without limit."""
    alice = new_user(server)
    ws, _ = open_stream(server, alice)
    frame = json.dumps({"type": "ping", "id": "fragmented"}).encode()
    send_fragmented(ws, frame, 64)
    assert recv_type(ws, "pong")["id"] == "fragmented"  # a fragmented message is fine
    send_fragmented(ws, frame, 65)
    ws.settimeout(10)
    opcode, answer = ws.recv_data_frame(True)
    # Refused outright: no pong first.
    assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, answer.data)
    assert struct.unpack("!H", answer.data[:2])[0] == 1009


def test_first_frame_must_be_auth(server: ServerProcess) -> None:
    ws = connect(server)
    send(ws, {"type": "ping"})
    code, reason = recv_close(ws)
    assert code == 4401 and reason.startswith("M_MISSING_TOKEN"), (code, reason)


def test_a_second_stream_for_the_device_replaces_the_first(server: ServerProcess) -> None:
    alice = new_user(server)
    first, _ = open_stream(server, alice)
    second, _ = open_stream(server, alice)
    code, reason = recv_close(first)
    assert code == 4409, (code, reason)
    ping(second)
    second.close()


# Sending ---------------------------------------------------------------------------------------


def test_send_frame_is_acked_with_the_event_id_after_the_commit(server: ServerProcess) -> None:
    alice = new_user(server)
    bob = new_user(server)
    room_id = create_room(server, alice, [bob["user_id"]])
    join(server, bob, room_id)
    ws, _ = open_stream(server, bob)
    content = {"msgtype": "m.text", "body": "over the stream"}
    send(ws, {"type": "send", "room_id": room_id, "content": content, "txn_id": "s1"})
    ack = recv_type(ws, "send_ack")
    assert ack["txn_id"] == "s1" and ack["room_id"] == room_id
    event_id = ack["event_id"]
    assert event_id.startswith("$")

    # Committed before the ack: the other user's /sync and /messages have it at once.
    r = requests.get(server.url(f"{CLIENT}/sync"), headers=auth(alice))
    assert r.status_code == 200, r.text
    synced = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert [(e["event_id"], e["content"]) for e in synced if e["event_id"] == event_id] == [
        (event_id, content)
    ]
    r = requests.get(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/messages?dir=b&limit=50"), headers=auth(alice)
    )
    assert r.status_code == 200, r.text
    assert event_id in [e["event_id"] for e in r.json()["chunk"]]

    # The sender's own stream carries it too, with its transaction id (local echo).
    echoed, _ = collect_messages(ws, room_id, 1, settle=0.2)
    assert [(e["event_id"], e["unsigned"].get("transaction_id")) for e in echoed] == [(event_id, "s1")]
    ws.close()


def test_the_same_txn_id_twice_gives_one_event(server: ServerProcess) -> None:
    alice = new_user(server)
    room_id = create_room(server, alice, [])
    ws, _ = open_stream(server, alice)
    frame = {
        "type": "send",
        "room_id": room_id,
        "content": {"msgtype": "m.text", "body": "once"},
        "txn_id": "dup",
    }
    send(ws, frame)
    send(ws, frame)  # a retry while the first is still in flight
    acks = [recv_type(ws, "send_ack"), recv_type(ws, "send_ack")]
    send(ws, frame)  # and one after the commit
    acks.append(recv_type(ws, "send_ack"))
    assert {a["txn_id"] for a in acks} == {"dup"}
    event_ids = {a["event_id"] for a in acks}
    assert len(event_ids) == 1
    # The Matrix API's send with the same device and txn id is the same transaction.
    r = requests.put(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/dup"),
        json={"msgtype": "m.text", "body": "once"},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    assert {r.json()["event_id"]} == event_ids
    r = requests.get(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/messages?dir=b&limit=50"), headers=auth(alice)
    )
    bodies = [e["content"].get("body") for e in r.json()["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["once"]
    ws.close()


def test_ack_frame_and_resume_make_messages_delivered(server: ServerProcess) -> None:
    alice = new_user(server)
    bob = new_user(server)
    sender, _ = open_stream(server, alice)
    # A simple-API send: a direct chat opened by the first message to bob.
    send(sender, {"type": "send", "receiverId": bob["user_id"], "content": "hello bob", "txn_id": "c1"})
    ack = recv_type(sender, "send_ack")
    chat_id, first = ack["room_id"], ack["event_id"]
    assert message_status(server, alice, chat_id, first) == "sent"

    # Bob opens the chat (joining it) and his stream serves him the message: not yet proof of receipt.
    r = requests.get(server.url(f"/api/messages/{quote(chat_id)}"), headers=auth(bob))
    assert r.status_code == 200, r.text
    ws, initial = open_stream(server, bob)
    assert first in [e["event_id"] for e in messages_in(initial, chat_id)]
    ping(ws)
    assert message_status(server, alice, chat_id, first) == "sent"

    # The ack frame for the delta that carried it is.
    send(ws, {"type": "ack", "next_batch": initial["next_batch"]})
    ping(ws)
    assert message_status(server, alice, chat_id, first) == "delivered"

    # A second message, served live but not acked: resuming from its token counts the same.
    send(sender, {"type": "send", "chatId": chat_id, "content": "are you there?", "txn_id": "c2"})
    second = recv_type(sender, "send_ack")["event_id"]
    served, token = collect_messages(ws, chat_id, 1, settle=0.2)
    assert [e["event_id"] for e in served] == [second]
    ws.close()
    assert message_status(server, alice, chat_id, second) == "sent"
    ws = connect(server)
    send(ws, {"type": "auth", "token": bob["access_token"], "since": token})
    assert recv(ws)["type"] == "ready"
    assert message_status(server, alice, chat_id, second) == "delivered"
    ws.close()
    sender.close()


def test_read_frame_marks_messages_read(server: ServerProcess) -> None:
    alice = new_user(server)
    bob = new_user(server)
    eve = new_user(server)
    sender, _ = open_stream(server, alice)
    send(sender, {"type": "send", "receiverId": bob["user_id"], "content": "one", "txn_id": "c1"})
    ack = recv_type(sender, "send_ack")
    chat_id, first = ack["room_id"], ack["event_id"]
    send(sender, {"type": "send", "chatId": chat_id, "content": "two", "txn_id": "c2"})
    second = recv_type(sender, "send_ack")["event_id"]
    ws, _ = open_stream(server, bob)

    # Up to a given message (joining the chat, as any first access does), then up to the newest.
    send(ws, {"type": "read", "chatId": chat_id, "messageId": first, "txn_id": "r1"})
    assert recv_type(ws, "read_ack") == {
        "type": "read_ack",
        "chatId": chat_id,
        "messageId": first,
        "txn_id": "r1",
    }
    assert message_status(server, alice, chat_id, first) == "read"
    assert message_status(server, alice, chat_id, second) != "read"
    send(ws, {"type": "read", "chatId": chat_id})
    assert recv_type(ws, "read_ack") == {"type": "read_ack", "chatId": chat_id, "messageId": second}
    assert message_status(server, alice, chat_id, second) == "read"

    # Bad frames get error frames, and the stream goes on.
    send(ws, {"type": "read", "txn_id": "r2"})
    assert recv_type(ws, "error") == {
        "type": "error",
        "errcode": "M_MISSING_PARAM",
        "error": "Missing 'chatId'",
        "txn_id": "r2",
    }
    send(ws, {"type": "read", "chatId": chat_id, "messageId": 7})
    assert recv_type(ws, "error")["errcode"] == "M_BAD_JSON"
    send(ws, {"type": "read", "chatId": chat_id, "messageId": "$nothere", "txn_id": "r3"})
    assert recv_type(ws, "error")["errcode"] == "M_NOT_FOUND"
    # A non-member may not mark anything read.
    outsider, _ = open_stream(server, eve)
    send(outsider, {"type": "read", "chatId": chat_id, "messageId": first, "txn_id": "r4"})
    refused = recv_type(outsider, "error")
    assert (refused["errcode"], refused["txn_id"]) == ("M_FORBIDDEN", "r4")
    ping(ws)
    for socket_ in (ws, outsider, sender):
        socket_.close()


def test_a_client_that_stops_reading_gets_coalesced_deltas_without_repeats(server: ServerProcess) -> None:
    """Back-pressure: while the socket is full the stream computes nothing; when it drains, one
    delta covers the rest. Nothing is repeated, order holds, and a gap is flagged `limited`."""
    alice = new_user(server)
    room_id = create_room(server, alice, [])
    # A tiny receive window: the server's send buffer fills after a few messages.
    ws = connect(server, alice["access_token"], sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    assert recv(ws)["type"] == "ready"
    sent = []
    # Enough to fill the kernel's send buffer too (it grows to a few MiB on loopback).
    padding = "x" * 60_000
    for i in range(100):
        r = requests.put(
            server.url(f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/bp{i}"),
            json={"msgtype": "m.text", "body": f"{i} {padding}"},
            headers=auth(alice),
        )
        assert r.status_code == 200, r.text
        sent.append(r.json()["event_id"])
    got: list[str] = []
    limited = False
    frames = 0
    deadline = time.monotonic() + 30
    while sent[-1] not in got and time.monotonic() < deadline:
        frame = recv(ws)
        if frame["type"] == "sync":
            frames += 1
            room = frame["data"]["rooms"]["join"].get(room_id, {})
            limited = limited or room.get("timeline", {}).get("limited", False)
            got.extend(e["event_id"] for e in messages_in(frame, room_id))
    assert got and got[-1] == sent[-1]
    assert len(got) == len(set(got))  # nothing twice
    assert got == [e for e in sent if e in got]  # in order
    assert len(got) == len(sent) or limited  # a gap is always flagged
    assert frames < len(sent)  # wake-ups were coalesced while the client was not reading
    ping(ws)
    ws.close()


def test_shutdown_closes_streams_so_clients_resume(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    alice = new_user(server)
    ws, _ = open_stream(server, alice)
    server.process.send_signal(signal.SIGTERM)
    code, reason = recv_close(ws)
    assert code == 4503, (code, reason)
    assert server.stop() == 0


# Bad input ---------------------------------------------------------------------------------------


def test_malformed_frames_get_error_frames_and_the_stream_stays_usable(server: ServerProcess) -> None:
    alice = new_user(server)
    room_id = create_room(server, alice, [])
    ws, _ = open_stream(server, alice)
    cases: list[tuple[str | bytes, str, str | None]] = [
        ("not json", "M_NOT_JSON", None),
        ("[1, 2]", "M_BAD_JSON", None),
        ("{}", "M_MISSING_PARAM", None),
        ('{"type": "teleport"}', "M_UNRECOGNIZED", None),
        ('{"type": 7}', "M_UNRECOGNIZED", None),
        ('{"type": "ack"}', "M_MISSING_PARAM", None),
        ('{"type": "ack", "next_batch": "garbage"}', "M_INVALID_PARAM", None),
        ('{"type": "ack", "next_batch": 12}', "M_BAD_JSON", None),
        ('{"type": "auth", "token": "again"}', "M_INVALID_PARAM", None),
        ('{"type": "send", "content": {}}', "M_MISSING_PARAM", None),
        ('{"type": "send", "content": {}, "txn_id": "t1"}', "M_MISSING_PARAM", "t1"),
        (json.dumps({"type": "send", "room_id": room_id, "txn_id": "t2"}), "M_MISSING_PARAM", "t2"),
        (
            json.dumps({"type": "send", "room_id": room_id, "content": "text", "txn_id": "t3"}),
            "M_BAD_JSON",
            "t3",
        ),
        (
            json.dumps(
                {"type": "send", "room_id": room_id, "chatId": room_id, "content": {}, "txn_id": "t4"}
            ),
            "M_INVALID_PARAM",
            "t4",
        ),
        (
            '{"type": "send", "room_id": "!nowhere:example.org", "content": {}, "txn_id": "t5"}',
            "M_NOT_FOUND",
            "t5",
        ),
        (
            json.dumps({"type": "send", "room_id": room_id, "content": {}, "txn_id": "x" * 300}),
            "M_INVALID_PARAM",
            "x" * 300,
        ),
        ("[" * 50_000 + "]" * 50_000, "M_NOT_JSON", None),
        # PostgreSQL cannot store U+0000: refused on every engine, as over HTTP.
        (
            json.dumps({"type": "send", "room_id": room_id, "content": {}, "txn_id": "t\u0000"}),
            "M_BAD_JSON",
            None,
        ),
        (b"\xff\xfe\x00", "M_NOT_JSON", None),
    ]
    for payload, errcode, txn_id in cases:
        if isinstance(payload, bytes):
            ws.send_binary(payload)
        else:
            ws.send(payload)
        error = recv_type(ws, "error")
        assert error["errcode"] == errcode, (payload[:80], error)
        assert isinstance(error["error"], str)
        assert error.get("txn_id") == txn_id, (payload[:80], error)
    ping(ws)
    send(
        ws,
        {
            "type": "send",
            "room_id": room_id,
            "content": {"msgtype": "m.text", "body": "fine"},
            "txn_id": "ok",
        },
    )
    assert recv_type(ws, "send_ack")["txn_id"] == "ok"
    ws.close()


def test_plain_http_on_the_stream_path_and_other_paths_are_unchanged(server: ServerProcess) -> None:
    r = requests.get(server.url("/_homeserver/ws"))
    assert r.status_code == 426 and r.json()["errcode"] == "M_UNRECOGNIZED"
    for path in ("/", "/nowhere", "/_homeserver/ws/more", "/_homeserver"):
        r = requests.get(server.url(path))
        assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED", path
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = requests.delete(server.url("/_matrix/client/versions"))
    assert r.status_code == 405 and r.json()["errcode"] == "M_UNRECOGNIZED"
    r = requests.options(server.url(f"{CLIENT}/sync"))
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert requests.get(server.url("/_matrix/client/versions")).status_code == 200


def test_server_log_contains_no_token(server: ServerProcess) -> None:
    """Runs last in this module: none of the tokens the tests sent reached the log."""
    log = server.log_text()
    assert TOKENS
    for token in TOKENS:
        assert token not in log
    assert "access_token=" not in log
    # Not even masked: the scrubber (homeserver/logs.py) never had a token to hide.
    assert "<redacted>" not in log
    assert "Traceback" not in log
    assert "WS /_homeserver/ws open" in log
