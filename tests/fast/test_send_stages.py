"""homeserver/send_stages.py: the group commit reports how long an event waited for its commit,
the commit itself and its publishing; the reactor probe reports how late a timer ran. Time is a
twisted Clock, moved by the test as the database and the consumers "take" it; the bench reads
these histograms (bench/server_stages.py) to split a latency tail by stage."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from bench import server_stages
from homeserver.core.persist import EventPersister
from homeserver.core.room_heads import RoomHeads
from homeserver.send_stages import LATENESS_TICK_S, SendStages
from tests.fast.test_persister import Item, RecordingStore


def observations(registry: CollectorRegistry) -> dict[str, tuple[float, float]]:
    """stage -> (count, sum in seconds)."""
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name != "homeserver_send_stage_seconds":
            continue
        for s in family.samples:
            entry = out.setdefault(s.labels["stage"], [0.0, 0.0])
            if s.name.endswith("_count"):
                entry[0] = s.value
            elif s.name.endswith("_sum"):
                entry[1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_each_event_reports_its_wait_the_commit_and_the_publishing() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    stages = SendStages(registry)
    store = RecordingStore()

    def publish(upto: int, items: list[Any]) -> None:
        clock.advance(0.0003)  # the consumers' work

    persister = EventPersister(store, RoomHeads(store), publish, clock)  # type: ignore[arg-type]
    persister.on_stage = stages.observe
    first: Deferred[None] = persister.persist([Item(1)])  # type: ignore[list-item]
    clock.advance(0.001)  # it waits while the first commit runs
    second = persister.persist([Item(2)])  # type: ignore[list-item]
    clock.advance(0.002)
    store.finish()  # the first commit: 3 ms
    clock.advance(0.001)
    store.finish()  # the second: written while the first was published, 1.3 ms
    assert first.called and second.called

    seen = observations(registry)
    assert seen["queued"][0] == 2
    # The first went at once; the second waited 2 ms of the first commit (not its publishing).
    assert math.isclose(seen["queued"][1], 0.002)
    assert seen["commit"][0] == 2 and math.isclose(seen["commit"][1], 0.0043)
    assert seen["publish"][0] == 2 and math.isclose(seen["publish"][1], 0.0006)


def test_the_reactor_probe_counts_how_late_its_timer_ran() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    stages = SendStages(registry)
    stages.watch_reactor(clock)
    clock.advance(LATENESS_TICK_S)  # on time
    clock.advance(LATENESS_TICK_S + 0.03)  # the reactor held 30 ms by something else
    stages.stop()
    assert not clock.getDelayedCalls()
    count, total = observations(registry)["reactor_lateness"]
    assert count == 2
    assert math.isclose(total, 0.03)


def test_the_bench_reads_a_workloads_share_with_bucket_bounds() -> None:
    registry = CollectorRegistry()
    stages = SendStages(registry)
    stages.observe("commit", 0.0004)  # before the workload
    before = _parse(registry)
    for _ in range(98):
        stages.observe("commit", 0.0008)
    stages.observe("commit", 0.004)
    stages.observe("commit", 0.04)
    summary = server_stages.summarize(before, _parse(registry))["commit"]
    assert summary["n"] == 100
    assert summary["p50_ms"] == "≤1"
    assert summary["p99_ms"] == "≤5"
    assert summary["max_ms"] == "≤50"


def _parse(registry: CollectorRegistry) -> server_stages.Histograms:
    class Response:
        status = 200
        body = generate_latest(registry)

    class Http:
        async def request(self, *args: Any, **kwargs: Any) -> Response:
            return Response()

    coroutine = server_stages.scrape(Http(), "secret")  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("scrape waited for something")
