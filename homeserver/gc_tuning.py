"""Garbage-collector settings for a long-running server, and a record of its pauses.

CPython's cyclic collector stops the whole process while it runs. With the default thresholds a
full (generation 2) pass starts whenever the tracked heap has grown by a quarter, and walks every
tracked object: tens of milliseconds once caches and connections fill up, landing on whichever
requests are in flight. Two changes keep those pauses rare and short:

- `gc.freeze()` after start-up moves everything loaded so far (modules, config, routes, the
  schema) out of the collector's reach: it lives as long as the process and is never garbage.
- A larger generation-0 threshold: the server allocates many short-lived containers per request
  that reference counting frees on its own; collecting young objects every 700 allocations
  mostly finds nothing, and each pass promotes survivors towards the expensive generation.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="homeserver.gc")

# Young objects between generation-0 passes (CPython's default is 700), then passes of one
# generation per pass of the next (defaults: 10, 10).
THRESHOLDS = (20_000, 20, 20)
# Pauses at least this long are logged, so an operator can tell a GC stall from a slow query.
SLOW_PAUSE_S = 0.05


class PauseRecorder:
    """A gc.callbacks hook: counts passes and total paused time per generation."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.paused_s = [0.0, 0.0, 0.0]
        self.longest_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.passes[generation] += 1
        self.paused_s[generation] += took
        self.longest_s = max(self.longest_s, took)
        if took >= SLOW_PAUSE_S:
            log.warn(
                "garbage collection (generation {generation}) paused the server for {ms:.0f} ms"
                " and freed {collected} objects",
                generation=generation,
                ms=took * 1000,
                collected=info["collected"],
            )


recorder = PauseRecorder()


def tune_after_startup() -> None:
    """Freeze what start-up built, raise the thresholds and start recording pauses."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    if recorder not in gc.callbacks:
        gc.callbacks.append(recorder)
