"""Idle WebSocket streams on a clock the test moves (docs/adr/0004, "Idle connections"): the
sweep pings each stream once an interval, drops a peer that does not answer in time and
keeps one that does, and its keep-alive closes a stream whose token was revoked. The stream
runs over a StringTransport: no sockets."""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, Transport, make_server, until
from twisted.internet.address import IPv4Address

from homeserver.api.ws import (
    AUTO_PING_INTERVAL_S,
    AUTO_PING_TIMEOUT_S,
    CLOSE_UNAUTHORIZED,
    KEEPALIVE_S,
    SWEEP_S,
)
from homeserver.server import HomeServer

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame, as a client must send it (payloads under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Stream:
    """One stream's client side: sends frames, reads the server's (unmasked) frames."""

    def __init__(self, hs: HomeServer, token: str) -> None:
        self.protocol = hs.websocket.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        assert self.protocol is not None
        self.transport = Transport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.protocol.dataReceived(
            (
                "GET /_homeserver/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        self._read = 0

    def frames(self) -> list[tuple[int, bytes]]:
        """The frames the server sent since the last call."""
        data = self.transport.value()
        start = data.index(b"\r\n\r\n") + 4 if self._read == 0 else self._read
        frames = []
        while start + 2 <= len(data):
            opcode, length = data[start] & 0x0F, data[start + 1] & 0x7F
            at = start + 2
            if length == 126:
                (length,) = struct.unpack("!H", data[at : at + 2])
                at += 2
            elif length == 127:
                (length,) = struct.unpack("!Q", data[at : at + 8])
                at += 8
            if at + length > len(data):
                break
            frames.append((opcode, data[at : at + length]))
            start = at + length
        self._read = start
        return frames

    def peek(self) -> list[tuple[int, bytes]]:
        """The frames `frames()` would return, left unread."""
        read = self._read
        try:
            return self.frames()
        finally:
            self._read = read

    def send(self, opcode: int, payload: bytes) -> None:
        self.protocol.dataReceived(client_frame(opcode, payload))

    def opened(self) -> bool:
        return self.protocol.requester is not None


class Idle:
    def __init__(self, hs: HomeServer, clock: TestClock, client: Client) -> None:
        self.hs, self.clock, self.client = hs, clock, client

    async def stream(self, name: str) -> tuple[Stream, dict[str, str]]:
        user = await self.client.register(self.hs, name)
        stream = Stream(self.hs, user["access_token"])
        await until(lambda: b"\r\n\r\n" in stream.transport.value(), "the handshake answered")
        await until(lambda: len([f for f in stream.peek() if f[0] == TEXT]) >= 2, "ready and sync")
        types = [json.loads(p)["type"] for op, p in stream.frames() if op == TEXT]
        assert types == ["ready", "sync"]
        return stream, user

    def sweep_for(self, seconds: float) -> None:
        moved = 0.0
        while moved < seconds:
            self.clock.advance(SWEEP_S)
            moved += SWEEP_S


@pytest_twisted.async_yield_fixture
async def idle(tmp_path: Path) -> AsyncIterator[Idle]:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    try:
        yield Idle(hs, clock, Client(hs))
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_stream_whose_peer_stops_answering_pings_is_dropped(idle: Idle) -> None:
    stream, _ = await idle.stream("deadpeer")
    idle.sweep_for(AUTO_PING_INTERVAL_S - SWEEP_S)
    assert [op for op, _ in stream.frames()] == [], "pinged before the interval"
    idle.sweep_for(2 * SWEEP_S)
    assert [op for op, _ in stream.frames()] == [PING]
    # Nobody answers: dropped once the ping timeout has passed, not before.
    idle.sweep_for(AUTO_PING_TIMEOUT_S - 2 * SWEEP_S)
    assert idle.hs.websocket.connections, "dropped before the ping timeout"
    idle.sweep_for(3 * SWEEP_S)
    assert not idle.hs.websocket.connections
    assert stream.transport.disconnecting
    assert "ping timeout" in str(stream.protocol.wasNotCleanReason)


@pytest_twisted.ensureDeferred
async def test_a_stream_whose_peer_answers_pings_stays_open(idle: Idle) -> None:
    stream, _ = await idle.stream("livepeer")
    pings = 0
    for _ in range(int(5 * (AUTO_PING_INTERVAL_S + AUTO_PING_TIMEOUT_S) / SWEEP_S)):
        idle.clock.advance(SWEEP_S)
        for op, payload in stream.frames():
            if op == PING:
                pings += 1
                stream.send(PONG, payload)
    assert pings >= 5
    assert idle.hs.websocket.connections == {stream.protocol}
    assert not stream.transport.disconnecting
    # Any message answers a ping too: a client that only sends app-level pings stays.
    for _ in range(int(3 * AUTO_PING_TIMEOUT_S / SWEEP_S)):
        idle.clock.advance(SWEEP_S)
        if any(op == PING for op, _ in stream.frames()):
            stream.send(TEXT, json.dumps({"type": "ping", "id": "x"}).encode())
    assert idle.hs.websocket.connections == {stream.protocol}


@pytest_twisted.ensureDeferred
async def test_the_keep_alive_closes_a_stream_whose_token_was_revoked(idle: Idle) -> None:
    stream, user = await idle.stream("revoked")
    await idle.client.call("POST", "/logout", user["access_token"], {})
    idle.sweep_for(KEEPALIVE_S - SWEEP_S)
    assert not any(op == CLOSE for op, _ in stream.frames()), "closed before the keep-alive"
    idle.sweep_for(2 * SWEEP_S)
    closes: list[Any] = []
    await until(
        lambda: closes.extend(p for op, p in stream.frames() if op == CLOSE) or closes, "a close frame"
    )
    (code,) = struct.unpack("!H", closes[0][:2])
    assert code == CLOSE_UNAUTHORIZED and closes[0][2:].startswith(b"M_UNKNOWN_TOKEN"), closes


@pytest_twisted.ensureDeferred
async def test_the_keep_alive_closes_a_stream_whose_account_was_locked(idle: Idle) -> None:
    """A lock (the admin API's) ends the account's open streams too, with its own code."""
    stream, user = await idle.stream("locked")
    await idle.hs.restrictions.set(user["user_id"], "locked", True)
    idle.sweep_for(KEEPALIVE_S + SWEEP_S)
    closes: list[Any] = []
    await until(
        lambda: closes.extend(p for op, p in stream.frames() if op == CLOSE) or closes, "a close frame"
    )
    (code,) = struct.unpack("!H", closes[0][:2])
    assert code == CLOSE_UNAUTHORIZED and closes[0][2:].startswith(b"M_USER_LOCKED"), closes
