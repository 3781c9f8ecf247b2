"""Where the time went inside our server during a workload, from its own metrics.

A latency measured from outside (send -> the receiver's /sync) mixes the server, the load
generator and every other process on the machine. The server counts its stages itself
(homeserver/send_stages.py: waiting for the group commit, the commit, publishing, reactor
lateness; the GC pause and request histograms beside them): scraping them before and after
a workload and subtracting gives that workload's share, which holds on a noisy machine too.
Percentiles come from the histograms' buckets, so each is "at most this bucket's bound".
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.httpclient import HttpClient

METRICS_PATH = "/_homeserver/metrics"
SEND_ROUTE_PART = "/send/"

# A histogram series: its name and labels -> (cumulative counts by upper bound, sum).
Histograms = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[float, float], float]]


async def scrape(http: HttpClient, secret: str) -> Histograms:
    response = await http.request("GET", METRICS_PATH, token=secret, timeout=30)
    if response.status != 200:
        raise RuntimeError(f"metrics answered {response.status}")
    out: Histograms = {}
    for family in text_string_to_metric_families(response.body.decode()):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            key = (family.name, tuple(sorted(labels.items())))
            buckets, total = out.get(key, ({}, 0.0))
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            out[key] = (buckets, total)
    return out


Series = tuple[dict[float, float], float]


def _diff(after: Series, before: Series | None) -> Series:
    if before is None:
        return after
    return {le: n - before[0].get(le, 0.0) for le, n in after[0].items()}, after[1] - before[1]


def _bound(buckets: dict[float, float], fraction: float) -> float:
    """The upper bound of the bucket holding the `fraction` quantile (inf: past the last bound)."""
    total = buckets.get(math.inf, 0.0)
    for le in sorted(buckets):
        if buckets[le] >= fraction * total:
            return le
    return math.inf


def _ms(seconds: float) -> str:
    return "over the last bucket" if seconds == math.inf else f"≤{seconds * 1000:g}"


def summarize(before: Histograms, after: Histograms) -> dict[str, Any]:
    """Per stage: count, mean, and p50/p99/max bucket bounds (ms), for the time between scrapes."""
    out: dict[str, Any] = {}
    for key, series in after.items():
        name, labels = key
        label = dict(labels)
        if name == "homeserver_send_stage_seconds":
            title = label["stage"]
        elif name == "homeserver_gc_pause_seconds":
            title = f"gc gen{label['generation']}"
        elif (
            name == "homeserver_http_request_duration_seconds"
            and SEND_ROUTE_PART in label.get("route", "")
            and label.get("status") == "2xx"
        ):
            title = "send answered"
        else:
            continue
        buckets, total = _diff(series, before.get(key))
        count = buckets.get(math.inf, 0.0)
        if not count:
            continue
        out[title] = {
            "n": int(count),
            "mean_ms": round(total / count * 1000, 3),
            "p50_ms": _ms(_bound(buckets, 0.5)),
            "p99_ms": _ms(_bound(buckets, 0.99)),
            "max_ms": _ms(_last_bucket(buckets)),
        }
    return out


def _last_bucket(buckets: dict[float, float]) -> float:
    """The upper bound of the highest bucket with an observation in it."""
    last, below = 0.0, 0.0
    for le in sorted(buckets):
        if buckets[le] > below:
            last = le
        below = buckets[le]
    return last
