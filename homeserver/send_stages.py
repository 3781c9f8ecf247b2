"""Where a message's time goes inside the server, stage by stage, as Prometheus histograms.

A send's answer time is in the request histogram already; a latency tail measured from
outside (send -> the receiver's /sync) needs it split: waiting in the group commit's
queue, the commit itself (PostgreSQL's fsync), publishing (the inline consumers and the
notifier, which wakes the receivers' long-polls and computes their answers), and how late
the reactor runs its timers (work or a GC pass holding it, or the thread waiting for a CPU).
With the GC pause histogram beside them, a slow message can be put down to one of these.

Observations are on the reactor thread only, so plain counters do (as RequestMetrics):
about a microsecond each, a few per commit.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

# Fine at the bottom: the stages of a send at a steady 500 messages/s take tenths of a millisecond.
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    1.0,
)
STAGES = {
    "queued": "an event waiting for its group commit to start (the previous commit, the gathering wait)",
    "commit": "a group commit's transaction, sent to answered (PostgreSQL's fsync among it)",
    "publish": "a commit's publication: inline consumers, the notifier waking long-polls and their answers",
    "reactor_lateness": "how late the reactor ran a timer due every LATENESS_TICK_S",
}
# The reactor-lateness probe: a timer this often (a few dozen wake-ups a second cost nothing).
LATENESS_TICK_S = 0.02


class SendStages(Collector):
    """A histogram per stage (`homeserver_send_stage_seconds{stage=...}`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._counts = {stage: [0] * (len(STAGE_BUCKETS) + 1) for stage in STAGES}
        self._sums = dict.fromkeys(STAGES, 0.0)
        self._clock: Any = None
        self._call: Any = None
        self._due = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, stage: str, seconds: float) -> None:
        self._counts[stage][bisect_left(STAGE_BUCKETS, seconds)] += 1
        self._sums[stage] += seconds

    def watch_reactor(self, clock: Any) -> None:
        """Start the lateness probe on `clock` (the reactor, or a test's Clock)."""
        self._clock = clock
        self._due = clock.seconds() + LATENESS_TICK_S
        self._call = clock.callLater(LATENESS_TICK_S, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        now = self._clock.seconds()
        self.observe("reactor_lateness", max(0.0, now - self._due))
        self._due = now + LATENESS_TICK_S
        self._call = self._clock.callLater(LATENESS_TICK_S, self._tick)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "homeserver_send_stage_seconds",
            "Stages of a message inside the server: " + "; ".join(f"{k}: {v}" for k, v in STAGES.items()),
            labels=["stage"],
        )
        for stage, counts in self._counts.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*STAGE_BUCKETS, math.inf), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric([stage], buckets, self._sums[stage])
        yield family
