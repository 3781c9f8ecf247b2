"""The one clock of the server: every read of the time and every delayed call goes through it.

`Clock` wraps an `IReactorTime`: the real reactor in production, a
`twisted.internet.task.Clock` (or `MemoryReactorClock`) in tests, which then move
time themselves instead of sleeping. It offers Twisted's own names (`seconds`,
`callLater`, `getDelayedCalls`), so it can be handed to anything that takes a
reactor for its timers (LoopingCall, the group commit's gathering wait), and
the server's: `time_ms` (event timestamps, token expiry) and `monotonic`
(deadlines, rate limits).

Both readings are the reactor's `seconds()`, the time Twisted's own timers run on
(the wall clock, in the real reactor): a deadline and the timer that enforces it
never disagree. Durations logged only for operators (the access log's
milliseconds, slow queries, garbage-collector pauses) are measured with
`time.perf_counter`/`time.monotonic` where they happen: they measure work, and
no behaviour depends on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall


class Clock:
    __slots__ = ("reactor", "seconds", "callLater", "getDelayedCalls")

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        # The reactor's bound methods themselves: no extra call on the hot paths.
        self.seconds: Callable[[], float] = reactor.seconds
        self.callLater: Callable[..., Any] = reactor.callLater
        self.getDelayedCalls: Callable[[], Any] = reactor.getDelayedCalls

    def time_ms(self) -> int:
        """Milliseconds since the epoch (the reactor's seconds)."""
        return round(self.seconds() * 1000)

    def monotonic(self) -> float:
        """Seconds, for deadlines and rates: the time the reactor's timers run on."""
        return self.seconds()

    def looping_call(self, interval_s: float, fn: Callable[[], Any], *, now: bool = False) -> LoopingCall:
        """`fn()` every `interval_s`, started; stop it with `.stop()` (when `.running`)."""
        loop = LoopingCall(fn)
        loop.clock = self  # type: ignore[assignment]
        loop.start(interval_s, now=now)
        return loop
