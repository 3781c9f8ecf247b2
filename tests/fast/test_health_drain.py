"""GET /health for a load balancer: 200 while serving; on shutdown 503 for
`workers.drain_delay` while requests are still answered, then the usual drain."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server, until
from twisted.internet.defer import Deferred


@pytest_twisted.ensureDeferred
async def test_health_turns_503_for_the_drain_delay_before_the_listener_closes(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, workers={"drain_delay": "3s"})
    client = Client(hs)
    status, body = await client.start("GET", "/health")
    assert (status, body) == (200, {"status": "ok", "instance": "main"})
    stopping = Deferred.fromCoroutine(hs.stop(None))
    status, body = await client.start("GET", "/health")
    assert status == 503 and body["errcode"] == "M_UNKNOWN"
    # Still serving everything else meanwhile: a request the balancer sent before it saw
    # the 503 is answered, not refused.
    status, versions = await client.start("GET", "/_matrix/client/versions")
    assert status == 200 and "versions" in versions
    clock.advance(2.9)
    assert not stopping.called
    clock.advance(0.2)
    await until(lambda: stopping.called, "shut down after the drain delay")


@pytest_twisted.ensureDeferred
async def test_a_single_process_has_no_drain_delay(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    assert hs.config.workers.drain_delay_ms == 0
    status, _ = await Client(hs).start("GET", "/health")
    assert status == 200
    stopping = Deferred.fromCoroutine(hs.stop(None))
    await until(lambda: stopping.called, "shut down at once")
