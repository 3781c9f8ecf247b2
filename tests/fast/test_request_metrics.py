"""The request histogram (homeserver/metrics.py) renders as Prometheus histograms do:
cumulative buckets, +Inf equal to the count, the sum of the durations."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from homeserver.metrics import RequestMetrics

ROUTE = "/_matrix/client/{version:v3|r0}/sync"


@dataclass
class FakeRequest:
    method: bytes
    started: float
    finished: bool = True
    _code: int = 200


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(**kv: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"method": "GET", "route": ROUTE, "status": "2xx", **kv}.items()))


def test_durations_land_in_cumulative_buckets() -> None:
    registry = CollectorRegistry()
    now = time.monotonic()
    # Durations measured against a fixed "now": a descheduled test must not move a bucket.
    metrics = RequestMetrics(registry, now=lambda: now)
    for seconds in (0.003, 0.003, 0.2, 100.0):
        metrics.finished(FakeRequest(b"GET", now - seconds), ROUTE)  # type: ignore[arg-type]
    metrics.finished(FakeRequest(b"GET", now - 0.02, finished=False), ROUTE)  # type: ignore[arg-type]
    metrics.finished(FakeRequest(b"BREW", now, _code=404), "<unmatched>")  # type: ignore[arg-type]
    got = samples(registry)
    bucket = "homeserver_http_request_duration_seconds_bucket"
    assert got[(bucket, labels(le="0.0025"))] == 0
    assert got[(bucket, labels(le="0.005"))] == 2
    assert got[(bucket, labels(le="0.25"))] == 3
    assert got[(bucket, labels(le="60.0"))] == 3
    assert got[(bucket, labels(le="+Inf"))] == 4
    assert got[("homeserver_http_request_duration_seconds_count", labels())] == 4
    assert 100.2 < got[("homeserver_http_request_duration_seconds_sum", labels())] < 100.3
    # A client that left before its answer; a method outside the known few.
    assert got[("homeserver_http_request_duration_seconds_count", labels(status="closed"))] == 1
    other = labels(method="other", route="<unmatched>", status="4xx")
    assert got[("homeserver_http_request_duration_seconds_count", other)] == 1


def test_in_flight_per_route() -> None:
    metrics = RequestMetrics(CollectorRegistry())
    metrics.begin(ROUTE)
    metrics.begin(ROUTE)
    metrics.end(ROUTE)
    assert metrics.in_flight == {ROUTE: 1}
