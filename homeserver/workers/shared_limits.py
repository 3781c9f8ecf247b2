"""Rate limits counted across processes (core/ratelimit.py), through Redis pub/sub.

Each process keeps its own token buckets and decides at once, without a round trip; every
take it lets through is also sent to the others, which take it from their copy of that
bucket. So sends spread over several processes draw on one budget. Takes are sent
batched, once per BATCH_S, to keep one publish off each request's path; a process misses
at most that window's takes of the others, and those of a Redis outage (the buckets then
refill as usual: a short overshoot, never a false refusal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.config import RateLimit

if TYPE_CHECKING:
    from homeserver.core.clock import Clock
    from homeserver.core.ratelimit import RateLimiter
    from homeserver.workers.bus import Bus

CHANNEL = "ratelimit.taken"
BATCH_S = 0.05


class SharedRateLimits:
    def __init__(self, limiter: RateLimiter, bus: Bus, clock: Clock) -> None:
        self.limiter = limiter
        self.bus = bus
        self.clock = clock
        # (action, key) -> [cost, per_second, burst] taken here since the last send
        self._pending: dict[tuple[str, str], list[float]] = {}
        self._flush: Any = None

    def wire(self) -> None:
        self.limiter.on_take = self._taken
        self.bus.subscribe(CHANNEL, self._received)

    def _taken(self, action: str, key: str, cost: float, limit: RateLimit) -> None:
        entry = self._pending.get((action, key))
        if entry is None:
            self._pending[(action, key)] = [cost, limit.per_second, float(limit.burst)]
        else:
            entry[0] += cost
        if self._flush is None:
            self._flush = self.clock.callLater(BATCH_S, self.flush)

    def flush(self) -> None:
        self._flush = None
        if not self._pending:
            return
        takes = [[action, key, *entry] for (action, key), entry in self._pending.items()]
        self._pending = {}
        self.bus.publish(CHANNEL, {"takes": takes})

    def _received(self, message: dict[str, Any]) -> None:
        for action, key, cost, per_second, burst in message["takes"]:
            self.limiter.taken_elsewhere(action, key, cost, RateLimit(per_second, int(burst)))

    def stop(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self.flush()
