"""HomeServer.stop in-process, on a clock the test moves: requests in flight and requests
still arriving finish before the database closes, idle connections do not hold it up, and a
stalled client holds it for SHUTDOWN_GRACE_S on the clock, no longer. (tests/test_shutdown.py
checks a real process and its signals end to end.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import TestClock, Transport, connect, make_server, parse_response, until
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from homeserver.api.http import ApiRequest
from homeserver.server import SHUTDOWN_GRACE_S, HomeServer


class Held:
    """A server with a route (/_test/held) that answers only when the test opens its gate."""

    def __init__(self, hs: HomeServer, clock: TestClock) -> None:
        self.hs = hs
        self.clock = clock
        self.gate: Deferred[None] = Deferred()
        self.bodies: list[Any] = []
        self.logs: list[str] = []

        async def held(request: ApiRequest) -> dict[str, Any]:
            self.bodies.append(request.json_body())
            await self.gate
            return {"done": True}

        hs.router.add("POST", "/_test/held", held)

    def connect(self) -> Transport:
        assert self.hs.http is not None
        return connect(self.hs.http)[1]

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.hs.stop(None))


def head(length: int) -> bytes:
    return b"POST /_test/held HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length


@pytest_twisted.async_yield_fixture
async def held(tmp_path: Path) -> AsyncIterator[Held]:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    server = Held(hs, clock)

    def observe(event: dict[str, Any]) -> None:
        server.logs.append(str(event.get("log_format", "")))

    globalLogPublisher.addObserver(observe)
    try:
        yield server
    finally:
        globalLogPublisher.removeObserver(observe)
        if not server.gate.called:  # a handler the shutdown gave up on: let it end
            server.gate.callback(None)


def answer(transport: Transport) -> tuple[int, dict[str, str], Any]:
    status, headers, body = parse_response(transport.value())
    return status, headers, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_an_idle_server_stops_without_the_clock_moving(held: Held) -> None:
    idle = held.connect()
    idle.protocol.dataReceived(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: b"200 OK" in idle.value(), "the first request answered")
    started = held.clock.seconds()
    stopped = held.stop()
    await until(lambda: stopped.called, "stop() finished")
    assert held.clock.seconds() == started
    assert idle.disconnecting, "an idle keep-alive connection stays open at shutdown"
    assert "shutting down with requests still in flight" not in held.logs


@pytest_twisted.ensureDeferred
async def test_a_request_in_flight_finishes_before_the_server_stops(held: Held) -> None:
    transport = held.connect()
    body = b'{"n": 1}'
    transport.protocol.dataReceived(head(len(body)) + body)
    await until(lambda: held.bodies, "the request reached its handler")
    stopped = held.stop()
    held.clock.advance(SHUTDOWN_GRACE_S - 0.1)
    await until(lambda: held.hs.notifier.closing, "stop() began")
    assert not stopped.called, "stopped with a request in flight"
    held.gate.callback(None)
    await until(lambda: stopped.called, "stop() finished once the request was answered")
    status, headers, result = answer(transport)
    assert (status, result) == (200, {"done": True})
    assert headers["connection"] == "close"
    assert "shutting down with requests still in flight" not in held.logs


@pytest_twisted.ensureDeferred
async def test_a_request_still_arriving_is_read_and_answered_before_the_server_stops(held: Held) -> None:
    held.gate.callback(None)  # answered as soon as it is read
    transport = held.connect()
    body = b'{"text": "' + b"x" * 100 + b'"}'
    transport.protocol.dataReceived(head(len(body)) + body[:20])
    stopped = held.stop()
    held.clock.advance(1.0)
    await until(lambda: held.hs.notifier.closing, "stop() began")
    assert not stopped.called, "stopped while a connection was still sending its request"
    transport.protocol.dataReceived(body[20:])
    await until(lambda: stopped.called, "stop() finished once the request was answered")
    assert held.bodies == [{"text": "x" * 100}]
    status, headers, result = answer(transport)
    assert (status, result) == (200, {"done": True})
    assert headers["connection"] == "close"
    assert "shutting down with requests still in flight" not in held.logs


@pytest.mark.parametrize("stall", ["in the head", "in the body", "in the handler"])
@pytest_twisted.ensureDeferred
async def test_a_stalled_request_holds_the_shutdown_for_the_grace_period_only(held: Held, stall: str) -> None:
    transport = held.connect()
    body = b'{"n": 1}'
    if stall == "in the head":
        transport.protocol.dataReceived(head(len(body))[:20])
    elif stall == "in the body":
        transport.protocol.dataReceived(head(len(body)) + body[:3])
    else:
        transport.protocol.dataReceived(head(len(body)) + body)
        await until(lambda: held.bodies, "the request reached its handler")
    stopped = held.stop()
    await until(lambda: held.hs.notifier.closing, "stop() began")
    held.clock.advance(SHUTDOWN_GRACE_S - 0.01)
    assert not stopped.called
    held.clock.advance(0.02)
    await until(lambda: stopped.called, "stop() gave up at the grace period")
    assert "shutting down with requests still in flight" in held.logs
