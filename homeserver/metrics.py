"""The server's Prometheus metrics, all in one registry (docs/operations.md, "Metrics").

What a request pays is one histogram observation after its answer, about a microsecond,
and two dict updates for the in-flight count of its route; a commit one counter and one
histogram observation. The rest - open streams, consumer lag, active users - lives
elsewhere already and is read only when Prometheus scrapes, by collectors. Labels are
bounded: a route is its template
(`/_matrix/client/{version:v3|r0}/rooms/{room_id}/send/{event_type}/{txn_id}`), never the
raw path, and a status is its class (2xx, 4xx...).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from homeserver import gc_tuning
from homeserver.send_stages import SendStages

if TYPE_CHECKING:
    from homeserver.api.http import ApiRequest
    from homeserver.server import HomeServer

__all__ = ["CONTENT_TYPE_LATEST", "RequestMetrics", "ServerMetrics", "UNMATCHED"]

# The route label of a request no route matched (404, OPTIONS, a malformed path).
UNMATCHED = "<unmatched>"
_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# No `*_created` series beside every counter and histogram: Prometheus does not need them.
disable_created_metrics()


class _Series:
    """One histogram series: counts per bucket (the last is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class RequestMetrics(Collector):
    """Requests per route template, method and status class, with their latency.

    A histogram of its own rather than prometheus_client's: that one takes a lock per
    bucket and per sum (~6 us an observation, measured); requests are answered on the
    reactor thread only, which also renders the scrape, so plain counters do (~1 us).
    """

    def __init__(self, registry: CollectorRegistry, now: Callable[[], float] = time.monotonic) -> None:
        self._series: dict[tuple[bytes, str, int], _Series] = {}
        self.in_flight: dict[str, int] = {}
        # The clock `request.started` was read from (a test passes a fixed one).
        self._now = now
        registry.register(self)

    def begin(self, route: str) -> None:
        self.in_flight[route] = self.in_flight.get(route, 0) + 1

    def end(self, route: str) -> None:
        self.in_flight[route] -= 1

    def finished(self, request: ApiRequest, route: str) -> None:
        # Status class; 0 = the client left before its answer (a long-poll given up).
        key = (request.method, route, request._code // 100 if request.finished else 0)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        seconds = self._now() - request.started
        series.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "homeserver_http_request_duration_seconds",
            "Time from a request's arrival to its answer (the count is the number of requests)",
            labels=["method", "route", "status"],
        )
        for (method, route, status), series in sorted(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), series.counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            labels = [_METHODS.get(method, "other"), route, f"{status}xx" if status else "closed"]
            family.add_metric(labels, buckets, series.total)
        yield family


class ServerMetrics:
    """Every metric of the core, registered in `hs.metrics` (plugins add theirs there too)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # CPU, memory, open files: read from /proc at scrape time.
        ProcessCollector(registry=registry)
        self.requests = RequestMetrics(registry)
        self.events_persisted = Counter(
            "homeserver_events_persisted", "Events committed to the database", registry=registry
        )
        self.commit_batch_size = Histogram(
            "homeserver_event_commit_batch_size",
            "Events per group commit (the count is the number of commits)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.thread_pool_wait = Histogram(
            "homeserver_thread_pool_wait_seconds",
            "Time a job waited for a free worker thread: the database pool, blocking work",
            ("pool",),
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.gc_pause = Histogram(
            "homeserver_gc_pause_seconds",
            "Garbage-collector passes and how long each stopped the process",
            ("generation",),
            buckets=GC_BUCKETS,
            registry=registry,
        )
        self._gc_children = [self.gc_pause.labels(str(g)) for g in range(3)]
        self.stages = SendStages(registry)

    def events_committed(self, count: int) -> None:
        self.events_persisted.inc(count)
        self.commit_batch_size.observe(count)

    def pool_wait_observer(self, pool: str) -> Callable[[float], None]:
        return self.thread_pool_wait.labels(pool).observe  # type: ignore[no-any-return]

    def gc_paused(self, generation: int, seconds: float) -> None:
        self._gc_children[generation].observe(seconds)

    def watch(self, hs: HomeServer) -> None:
        """Hook the server's parts up: the router, the persister, the pools, the collectors."""
        hs.router.metrics = self.requests
        hs.persister.on_commit = self.events_committed
        hs.persister.on_stage = self.stages.observe
        hs.storage.db.pool.wait_observer = self.pool_wait_observer(hs.storage.db.dialect)
        hs.blocking.wait_observer = self.pool_wait_observer("blocking")
        gc_tuning.recorder.observe = self.gc_paused
        self.registry.register(_ServerCollector(hs, self.requests))

    def render(self) -> bytes:
        return generate_latest(self.registry)  # type: ignore[no-any-return]


class _ServerCollector(Collector):
    """Gauges read at scrape time from where the values already live."""

    def __init__(self, hs: HomeServer, requests: RequestMetrics) -> None:
        self._hs = hs
        self._requests = requests

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cap = self._hs.connection_cap
        yield GaugeMetricFamily(
            "homeserver_connections_open",
            "Connections open on the client and federation listeners (WebSocket streams among them)",
            value=cap.open,
        )
        refused = CounterMetricFamily(
            "homeserver_connections_refused",
            "Connections closed as accepted: over listen.max_connections_per_ip or listen.max_connections",
            labels=["cap"],
        )
        refused.add_metric(["per_ip"], cap.refused_per_address)
        refused.add_metric(["total"], cap.refused_total)
        yield refused
        in_flight = GaugeMetricFamily(
            "homeserver_http_requests_in_flight",
            "Requests being handled, by route template: open /sync and sliding-sync long-polls among them",
            labels=["route"],
        )
        for route, count in sorted(self._requests.in_flight.items()):
            in_flight.add_metric([route], count)
        yield in_flight
        yield GaugeMetricFamily(
            "homeserver_long_polls_waiting",
            "Long-polls (/sync, sliding sync) waiting for news",
            value=self._hs.notifier.waiting_requests(),
        )
        ws = self._hs.websocket_if_started()
        yield GaugeMetricFamily(
            "homeserver_websocket_streams_open",
            "Open WebSocket streams",
            value=len(ws.connections) if ws is not None else 0,
        )
        yield GaugeMetricFamily(
            "homeserver_websocket_streams_authenticated",
            "WebSocket streams with a signed-in device",
            value=ws.authenticated_count() if ws is not None else 0,
        )
        activity = self._hs.activity
        if activity.refreshed:
            for name, text, value in (
                (
                    "daily_active_users",
                    "Local users active in the last 24 hours",
                    activity.daily_active_users,
                ),
                (
                    "monthly_active_users",
                    "Local users active in the last 30 days",
                    activity.monthly_active_users,
                ),
                (
                    "messages_last_day",
                    "Messages (m.room.message, m.room.encrypted) sent in the last 24 hours",
                    activity.messages_last_day,
                ),
            ):
                yield GaugeMetricFamily(f"homeserver_{name}", text, value=value)
