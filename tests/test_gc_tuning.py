"""homeserver.gc_tuning: after start-up the collector leaves start-up's objects alone, runs less
often, and a long pause is logged so an operator can tell it from a slow query."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from homeserver import gc_tuning


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    while gc_tuning.recorder in gc.callbacks:
        gc.callbacks.remove(gc_tuning.recorder)


def test_tune_freezes_start_up_objects_and_records_passes(restore_gc: None) -> None:
    built_at_start_up = [{"n": i} for i in range(1000)]
    gc.disable()  # as `homeserver run` does while it starts
    gc_tuning.tune_after_startup()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built_at_start_up)
    assert gc.get_threshold() == gc_tuning.THRESHOLDS
    assert gc.get_threshold()[0] > 700  # CPython's default

    passes = gc_tuning.recorder.passes[2]
    gc.collect(2)
    assert gc_tuning.recorder.passes[2] == passes + 1

    gc_tuning.tune_after_startup()  # twice (a restart in tests): one callback, not two
    assert gc.callbacks.count(gc_tuning.recorder) == 1


def test_a_long_pause_is_logged_with_its_generation() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    # The recorder's timer, set by the test: each pause lasts what it says, however loaded
    # the machine (a generation-0 pass measured by the real timer could be descheduled).
    now = [0.0]
    try:
        recorder = gc_tuning.PauseRecorder(timer=lambda: now[0])
        recorder("start", {"generation": 0, "collected": 0, "uncollectable": 0})
        now[0] = gc_tuning.SLOW_PAUSE_S - 0.001
        recorder("stop", {"generation": 0, "collected": 3, "uncollectable": 0})
        now[0] = 0.0
        recorder("start", {"generation": 2, "collected": 0, "uncollectable": 0})
        now[0] = gc_tuning.SLOW_PAUSE_S
        recorder("stop", {"generation": 2, "collected": 12, "uncollectable": 0})
    finally:
        globalLogPublisher.removeObserver(events.append)
    slow = [e for e in events if e.get("log_namespace") == "homeserver.gc"]
    assert len(slow) == 1  # the quicker generation-0 pass is counted, not logged
    assert slow[0]["generation"] == 2 and slow[0]["collected"] == 12
    assert slow[0]["ms"] == gc_tuning.SLOW_PAUSE_S * 1000
    assert recorder.passes == [1, 0, 1]
    assert recorder.longest_s == gc_tuning.SLOW_PAUSE_S


def test_young_passes_run_on_the_clock_and_untrack_plain_tuples(restore_gc: None) -> None:
    gc_tuning.tune_after_startup()
    clock = Clock()
    passes = gc_tuning.TimedPasses(clock)
    passes.start()
    # A cache of plain string tuples, built without moving CPython's allocation count much
    # (each new entry replaces an old one, as in a full LRU): only a timed pass reaches them.
    cache = [(f"$event{i}", "text", "more") for i in range(5000)]
    assert all(gc.is_tracked(t) for t in cache[:10])
    before = list(gc_tuning.recorder.passes)

    clock.advance(gc_tuning.TICK_S)
    assert gc_tuning.recorder.passes[0] == before[0] + 1
    assert not any(gc.is_tracked(t) for t in cache)  # no later pass walks them again

    clock.pump([gc_tuning.TICK_S] * (gc_tuning.OLDER_EVERY - 1))
    assert gc_tuning.recorder.passes[1] == before[1] + 1  # every third tick reaches generation 1
    passes.stop()
    clock.pump([gc_tuning.TICK_S] * 5)
    assert sum(gc_tuning.recorder.passes) == sum(before) + gc_tuning.OLDER_EVERY
    assert not clock.getDelayedCalls()


def test_full_passes_come_from_the_timer_only(restore_gc: None) -> None:
    gc_tuning.tune_after_startup()
    # However many generation-1 passes run, CPython never starts a full one by itself. (Small
    # young thresholds, so that allocating here starts hundreds of automatic passes quickly.)
    gc.set_threshold(100, 2, gc_tuning.THRESHOLDS[2])
    before = list(gc_tuning.recorder.passes)
    kept = [[i] for i in range(200_000)]  # kept: old-generation growth, as a filling cache
    assert gc_tuning.recorder.passes[1] > before[1] + 100
    assert gc_tuning.recorder.passes[2] == before[2]
    del kept
    before = list(gc_tuning.recorder.passes)

    clock = Clock()
    passes = gc_tuning.TimedPasses(clock)
    passes.start()
    ticks = round(gc_tuning.FULL_EVERY_S / gc_tuning.TICK_S)
    clock.pump([gc_tuning.TICK_S] * (ticks - 1))
    assert gc_tuning.recorder.passes[2] == before[2]
    clock.advance(gc_tuning.TICK_S)
    assert gc_tuning.recorder.passes[2] == before[2] + 1
    passes.stop()
