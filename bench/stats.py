"""Small numeric helpers and the shapes workload results take."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.procstats import Resources

T = TypeVar("T")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def gather_limited(awaitables: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Run awaitables with at most `limit` at once; results in order; the first error is raised."""
    semaphore = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[T]) -> T:
        async with semaphore:
            return await aw

    return list(await asyncio.gather(*(one(aw) for aw in awaitables)))


@dataclass
class Metric:
    """One figure of the table. `value` None: not measured (not applicable, or the workload failed)."""

    value: float | None
    unit: str
    higher_is_better: bool
    note: str = ""


@dataclass
class WorkloadResult:
    name: str  # "W1", "W2@200", ...
    title: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    resources: Resources | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
