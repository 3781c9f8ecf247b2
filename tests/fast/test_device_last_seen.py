"""A device's `last_seen_ts` and `last_seen_ip` (GET /devices: a user's list of sessions)
follow its requests, not only its login; the database hears of it at most every five
minutes per device, or at once when the address changes."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import Client, TestClock, Transport, make_server, turn
from twisted.internet.address import IPv4Address

from homeserver.core.device_activity import WRITE_EVERY_S
from homeserver.server import HomeServer

pytestmark = pytest.mark.fast


async def device(client: Client, token: str) -> dict[str, Any]:
    devices = (await client.call("GET", "/devices", token))["devices"]
    assert len(devices) == 1
    return devices[0]


async def written_ts(hs: HomeServer, user_id: str) -> int | None:
    rows = await hs.storage.devices.get_devices(user_id)
    return rows[0].last_seen_ts


async def until_written(hs: HomeServer, user_id: str, ts: int) -> None:
    """The write runs apart from the request: wait for it (database threads, not time)."""
    for _ in range(500):
        if await written_ts(hs, user_id) == ts:
            return
        await turn()
    raise AssertionError(f"last_seen_ts never became {ts}")


@pytest_twisted.ensureDeferred
async def test_requests_move_last_seen_at_most_every_five_minutes(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        clock.advance(3600)
        await client.call("GET", "/account/whoami", token)
        seen_at = clock.time_ms()  # an hour after the login
        await until_written(hs, alice["user_id"], seen_at)
        first = await device(client, token)
        assert (first["last_seen_ts"], first["last_seen_ip"]) == (seen_at, "127.0.0.1")

        clock.advance(WRITE_EVERY_S / 2)
        await client.call("GET", "/account/whoami", token)
        for _ in range(20):
            await turn()
        assert await written_ts(hs, alice["user_id"]) == seen_at  # not written again yet

        clock.advance(WRITE_EVERY_S / 2)
        await client.call("GET", "/account/whoami", token)
        await until_written(hs, alice["user_id"], clock.time_ms())
    finally:
        await hs.stop(None)


async def stream_seen_from(tmp_path: Path, trusted: list[str], forwarded: list[str]) -> str | None:
    """The address a WebSocket stream from 127.0.0.1 marks its device with, its handshake
    carrying one X-Forwarded-For line per item of `forwarded`."""
    clock = TestClock()
    hs = await make_server(tmp_path, clock, listen={"trusted_proxies": trusted})
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        clock.advance(60)
        protocol = hs.websocket.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        transport = Transport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = "".join(f"X-Forwarded-For: {line}\r\n" for line in forwarded)
        protocol.dataReceived(
            (
                "GET /_homeserver/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{lines}Authorization: Bearer {alice['access_token']}\r\n\r\n"
            ).encode()
        )
        await until_written(hs, alice["user_id"], clock.time_ms())
        rows = await hs.storage.devices.get_devices(alice["user_id"])
        transport.loseConnection()
        return rows[0].last_seen_ip
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_websocket_stream_marks_its_device_with_the_forwarded_address(tmp_path: Path) -> None:
    assert await stream_seen_from(tmp_path, ["127.0.0.1/32"], ["203.0.113.5"]) == "203.0.113.5"


@pytest_twisted.ensureDeferred
async def test_a_websocket_stream_from_an_untrusted_peer_is_seen_at_its_own_address(tmp_path: Path) -> None:
    # The peer (127.0.0.1) is no trusted balancer: what it writes in the header is ignored.
    assert await stream_seen_from(tmp_path, ["10.0.0.0/8"], ["203.0.113.5"]) == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_a_websocket_stream_ignores_lines_a_client_wrote_before_the_balancer(tmp_path: Path) -> None:
    # The client wrote 198.51.100.7 and 127.0.0.2 itself; HAProxy appended a line with the
    # address it got the connection from (203.0.113.5).
    seen = await stream_seen_from(tmp_path, ["127.0.0.1/32"], ["198.51.100.7, 127.0.0.2", "203.0.113.5"])
    assert seen == "203.0.113.5"
