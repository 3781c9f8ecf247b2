"""The caps on open connections (`listen.max_connections_per_ip`, `listen.max_connections`;
homeserver/api/connection_cap.py), on the HTTP server's channels over StringTransports:
a connection past a cap is closed unanswered before anything is read, one address's cap
leaves the others alone, an IPv6 client counts by its /64, a trusted balancer is capped
only in the total, and every way a connection ends gives its place back."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import TestClock, Transport, connect, make_server, parse_response, until
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import globalLogPublisher

from homeserver.api.connection_cap import WARN_EVERY_S, ConnectionCap
from homeserver.api.forwarded import parse_networks
from homeserver.api.http_server import (
    HEAD_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    OUTPUT_STALL_S,
    SWEEP_EVERY_S,
    HttpFactory,
    Request,
)
from homeserver.server import HomeServer

GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
ATTACKER = "203.0.113.7"


def address(host: str, port: int = 40000) -> IPv4Address | IPv6Address:
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class Listener:
    """An HttpFactory with a cap, whose handler answers each request or holds it."""

    def __init__(
        self, per_address: int = 1000, total: int = 1000, trusted: tuple[str, ...] = (), hold: bool = False
    ) -> None:
        self.clock = TestClock()
        self.hold = hold
        self.requests: list[Request] = []
        cap = ConnectionCap(self.clock, per_address, total, parse_networks(trusted))
        self.factory = HttpFactory(self.handle, 1024 * 1024, self.clock, cap=cap)
        self.factory.doStart()
        self._port = 40000

    def handle(self, request: Request) -> None:
        self.requests.append(request)
        if not self.hold:
            request.respond(200, b"Content-Type: application/json\r\n", b"{}")

    def open(self, host: str) -> Transport:
        self._port += 1
        _, transport = connect(self.factory, address(host, self._port))
        return transport

    def sweep_after(self, seconds: float) -> None:
        """Move the clock past `seconds` and one sweep more."""
        self.clock.advance(seconds + SWEEP_EVERY_S)


def answered(transport: Transport) -> bool:
    """A request on the connection is answered 200 and the connection stays open."""
    before = len(transport.value())
    transport.protocol.dataReceived(GET)
    status, _, _ = parse_response(transport.value()[before:])
    return status == 200 and not transport.disconnecting


def refused(transport: Transport) -> bool:
    """Closed by the server with nothing written: no response, not even an error."""
    return transport.closed.called and transport.value() == b""


def hang_up(transport: Transport) -> None:
    """The client closes its end (the reactor calls connectionLost)."""
    transport.loseConnection()


def test_one_address_gets_its_cap_and_no_more() -> None:
    listener = Listener(per_address=3)
    first = [listener.open(ATTACKER) for _ in range(3)]
    assert all(answered(t) for t in first)

    over = listener.open(ATTACKER)
    assert refused(over)
    assert len(listener.requests) == 3
    # Another address is not affected.
    assert answered(listener.open("198.51.100.1"))

    # A place comes back when one of the three closes, and only one.
    hang_up(first[0])
    assert answered(listener.open(ATTACKER))
    assert refused(listener.open(ATTACKER))


def test_an_ipv6_client_counts_by_its_64() -> None:
    listener = Listener(per_address=2)
    assert answered(listener.open("2001:db8:1:2::1"))
    assert answered(listener.open("2001:db8:1:2:ffff:ffff:ffff:fffe"))
    # Any other address of the same /64 is the same client.
    assert refused(listener.open("2001:db8:1:2:abcd::9"))
    # The next /64 is someone else.
    assert answered(listener.open("2001:db8:1:3::1"))


def test_an_ipv4_client_on_a_dual_stack_listener_counts_as_itself() -> None:
    listener = Listener(per_address=2)
    assert answered(listener.open(ATTACKER))
    assert answered(listener.open("::ffff:" + ATTACKER))
    assert refused(listener.open(ATTACKER))


def test_a_trusted_balancer_is_not_capped_per_address_but_in_the_total() -> None:
    listener = Listener(per_address=2, total=8, trusted=("10.0.0.0/8",))
    through_balancer = [listener.open("10.0.0.5") for _ in range(6)]
    assert all(answered(t) for t in through_balancer)
    # A client connecting directly is still capped.
    assert answered(listener.open(ATTACKER))
    assert answered(listener.open(ATTACKER))
    assert refused(listener.open(ATTACKER))
    # The total counts the balancer's connections too.
    assert refused(listener.open("10.0.0.5"))


def test_the_total_cap_refuses_any_address_until_one_closes() -> None:
    listener = Listener(per_address=100, total=3)
    open_ = [listener.open(f"198.51.100.{i}") for i in range(1, 4)]
    assert all(answered(t) for t in open_)
    assert refused(listener.open("198.51.100.200"))
    assert refused(listener.open("2001:db8::1"))

    hang_up(open_[1])
    assert answered(listener.open("198.51.100.200"))
    assert refused(listener.open("198.51.100.201"))


def test_a_refusal_is_logged_once_a_minute_per_address_not_per_connection() -> None:
    listener = Listener(per_address=1, total=3)
    warnings: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "homeserver.api.connection_cap":
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        listener.open(ATTACKER)
        listener.open("198.51.100.1")
        for _ in range(50):
            assert refused(listener.open(ATTACKER))
            assert refused(listener.open("198.51.100.1"))
        assert sorted(w["address"] for w in warnings) == ["198.51.100.1", ATTACKER]

        listener.clock.advance(WARN_EVERY_S)
        assert refused(listener.open(ATTACKER))
        assert [w.get("address") for w in warnings[2:]] == [ATTACKER]

        listener.open("198.51.100.2")  # the total is reached
        for _ in range(50):
            assert refused(listener.open("198.51.100.3"))
        assert [w.get("address") for w in warnings[3:]] == [None]
    finally:
        globalLogPublisher.removeObserver(observe)


# Each way a connection ends. Each gets a fresh connection that has answered one request
# (`hold`: whose second request the handler holds) and must leave it closed.


def client_hangs_up_idle(listener: Listener, transport: Transport) -> None:
    hang_up(transport)


def client_hangs_up_mid_request(listener: Listener, transport: Transport) -> None:
    listener.hold = True
    transport.protocol.dataReceived(GET)
    hang_up(transport)
    listener.hold = False
    listener.requests[-1].respond(200, b"", b"{}")  # the handler answers late: nowhere to go


def client_hangs_up_mid_head(listener: Listener, transport: Transport) -> None:
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHo")
    hang_up(transport)


def server_closes_after_connection_close(listener: Listener, transport: Transport) -> None:
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def server_refuses_a_bad_request(listener: Listener, transport: Transport) -> None:
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello")


def idle_timeout(listener: Listener, transport: Transport) -> None:
    listener.sweep_after(IDLE_TIMEOUT_S)


def head_deadline(listener: Listener, transport: Transport) -> None:
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\n")
    listener.sweep_after(HEAD_TIMEOUT_S)


def client_stops_reading(listener: Listener, transport: Transport) -> None:
    transport.protocol.pauseProducing()  # what Twisted does when the send buffer is full
    listener.sweep_after(OUTPUT_STALL_S)


def server_drains_for_shutdown(listener: Listener, transport: Transport) -> None:
    listener.factory.drain()
    listener.factory.draining = False  # the next round's connections are ordinary again


CLOSE_PATHS = [
    client_hangs_up_idle,
    client_hangs_up_mid_request,
    client_hangs_up_mid_head,
    server_closes_after_connection_close,
    server_refuses_a_bad_request,
    idle_timeout,
    head_deadline,
    client_stops_reading,
    server_drains_for_shutdown,
]


@pytest.mark.parametrize("close", CLOSE_PATHS, ids=lambda f: f.__name__)
def test_every_way_a_connection_ends_gives_its_place_back(
    close: Callable[[Listener, Transport], None],
) -> None:
    listener = Listener(per_address=2, total=3)
    for _ in range(20):
        transport = listener.open(ATTACKER)
        assert answered(transport)
        close(listener, transport)
        assert transport.closed.called
    # Exactly the caps, as before any of it.
    both = [listener.open(ATTACKER), listener.open(ATTACKER)]
    assert all(answered(t) for t in both)
    assert refused(listener.open(ATTACKER))
    assert answered(listener.open("198.51.100.1"))
    assert refused(listener.open("198.51.100.2"))


# WebSocket streams: upgraded on the same listener, counted until the stream ends.


def upgrade(hs: HomeServer) -> Transport:
    assert hs.http is not None
    _, transport = connect(hs.http, address(ATTACKER))
    if transport.closed.called:
        return transport
    key = base64.b64encode(os.urandom(16))
    transport.protocol.dataReceived(
        b"GET /_homeserver/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return transport


def close_frame() -> bytes:
    """A client's masked close frame, code 1000."""
    mask = os.urandom(4)
    payload = (1000).to_bytes(2, "big")
    return bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest_twisted.async_yield_fixture
async def capped_hs(tmp_path: Path) -> AsyncIterator[HomeServer]:
    hs = await make_server(tmp_path, TestClock(), listen={"max_connections_per_ip": 2})
    try:
        yield hs
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_websocket_streams_count_until_they_end(capped_hs: HomeServer) -> None:
    hs = capped_hs

    def switched(transport: Transport) -> bool:
        return transport.value().startswith(b"HTTP/1.1 101 ")

    for round_ in range(6):
        stream = upgrade(hs)
        await until(lambda s=stream: switched(s), "the upgrade answered")  # type: ignore[misc]
        if round_ % 2:
            hang_up(stream)  # the client drops the TCP connection
        else:
            stream.protocol.dataReceived(close_frame())  # a closing handshake: the server closes
            await until(lambda s=stream: s.closed.called, "the server closed")  # type: ignore[misc]
        assert stream.closed.called

    streams = [upgrade(hs), upgrade(hs)]
    for stream in streams:
        await until(lambda s=stream: switched(s), "the upgrade answered")  # type: ignore[misc]
    assert refused(upgrade(hs))
    hang_up(streams[0])
    again = upgrade(hs)
    await until(lambda: switched(again), "the upgrade answered")
