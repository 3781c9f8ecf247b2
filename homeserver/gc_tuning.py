"""Garbage-collector settings for a long-running server, and a record of its pauses.

CPython's cyclic collector stops the whole process while it runs. With the default thresholds a
full (generation 2) pass starts whenever the tracked heap has grown by a quarter, and walks every
tracked object: tens of milliseconds once caches and connections fill up, landing on whichever
requests are in flight. Two changes keep those pauses rare and short:

- `gc.freeze()` after start-up moves everything loaded so far (modules, config, routes, the
  schema) out of the collector's reach: it lives as long as the process and is never garbage.
- Young-generation passes on a timer. CPython starts a pass when allocations minus
  deallocations pass a threshold; a server whose caches are full frees an old entry for each new
  one, so that count hardly moves while the young generation grows without bound (140,000
  objects, a 70 ms pass, measured under load). A pass every 100 ms keeps each one small, and
  untracks the plain tuples of strings that the caches are made of, so later passes skip them.
  Generation 1 every third tick: at 500 messages/s a pass every second took 3.9 ms of CPU (and
  every message arriving meanwhile waited), every third tick 1.9 ms (W2, issue 12).
- Full passes on the timer only, every FULL_EVERY_S. CPython's own rule starts one once a
  quarter of the old generation is new since the last: under steady messaging one came about
  20 s after start-up in each run measured, a 23-35 ms pause (the whole heap walked) landing on
  the messages in flight, and it found nothing (0 objects collected, as every generation-1
  pass before it): the server's garbage is freed by reference counting or by the young passes.
  The timer still frees any cycles that do reach the old generation, within FULL_EVERY_S:
  a long-poll lives past the young passes, so any cycle it leaves (and what hangs off it, its
  response included) waits for a full pass. Once a minute bounds that memory, and one ~30 ms pause a
  minute touches ~0.05 % of messages at 500/s, well under the p99.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="homeserver.gc")

# Net new objects between generation-0 passes (CPython's default is 700), then passes of one
# generation per pass of the next (defaults: 10, 10); a burst of allocations still starts a young
# pass. The third is out of reach: full passes come from the timer only.
THRESHOLDS = (20_000, 20, 2**31 - 1)
# The timer's passes: generation 0 at each tick, generation 1 every third, a full pass every
# FULL_EVERY_S.
TICK_S = 0.1
OLDER_EVERY = 3
FULL_EVERY_S = 60.0
# Pauses at least this long are logged, so an operator can tell a GC stall from a slow query.
SLOW_PAUSE_S = 0.05


class PauseRecorder:
    """A gc.callbacks hook: counts passes per generation, keeps the longest pause, logs long ones,
    and tells `observe(generation, seconds)` (the metrics) of every pause."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.passes = [0, 0, 0]
        self.longest_s = 0.0
        self._timer = timer  # a test's own, so that a pause is as long as it says
        self._started = 0.0
        self.observe: Callable[[int, float], None] | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._timer()
            return
        took = self._timer() - self._started
        generation = info["generation"]
        self.passes[generation] += 1
        self.longest_s = max(self.longest_s, took)
        if self.observe is not None:
            self.observe(generation, took)
        if took >= SLOW_PAUSE_S:
            log.warn(
                "garbage collection (generation {generation}) paused the server for {ms:.0f} ms"
                " and freed {collected} objects",
                generation=generation,
                ms=took * 1000,
                collected=info["collected"],
            )


recorder = PauseRecorder()


def tune_after_startup(clock: Any = None) -> None:
    """Freeze what start-up built, set the thresholds, record pauses and, given a reactor,
    start the timer's passes."""
    # No full collection first: it walked every object start-up made (25-40 ms of CPU before the
    # first answer) to free about 1,300 leftover objects (measured), which now stay frozen.
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    gc.enable()  # the command `run` turns it off during start-up
    if recorder not in gc.callbacks:
        gc.callbacks.append(recorder)
    if clock is not None:
        TimedPasses(clock).start()


class TimedPasses:
    """Collects generation 0 every TICK_S, generation 1 every OLDER_EVERY ticks and everything
    every FULL_EVERY_S."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._ticks = 0
        self._call: Any = None

    def start(self) -> None:
        self._call = self._clock.callLater(TICK_S, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks % round(FULL_EVERY_S / TICK_S) == 0:
            gc.collect(2)
        else:
            gc.collect(1 if self._ticks % OLDER_EVERY == 0 else 0)
        self._call = self._clock.callLater(TICK_S, self._tick)
