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


@pytest_twisted.ensureDeferred
async def test_a_websocket_stream_marks_its_device_with_the_forwarded_address(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, listen={"trusted_proxies": ["127.0.0.1/32"]})
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        clock.advance(60)
        protocol = hs.websocket.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        transport = Transport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        key = base64.b64encode(os.urandom(16)).decode()
        protocol.dataReceived(
            (
                "GET /_homeserver/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"X-Forwarded-For: 203.0.113.5\r\nAuthorization: Bearer {alice['access_token']}\r\n\r\n"
            ).encode()
        )
        await until_written(hs, alice["user_id"], clock.time_ms())
        rows = await hs.storage.devices.get_devices(alice["user_id"])
        assert rows[0].last_seen_ip == "203.0.113.5"
        transport.loseConnection()
    finally:
        await hs.stop(None)
