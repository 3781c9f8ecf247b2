"""homeserver.threads: blocking calls run off the reactor thread, answer on it, in parallel up
to the pool's size, and leave no reference cycle behind (Twisted's deferToThread left one per
call, four objects for the garbage collector)."""

from __future__ import annotations

import gc
import threading

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from homeserver.threads import PoolClosed, WorkerThreads


def make_pool(size_max: int = 10) -> WorkerThreads:
    from twisted.internet import reactor

    return WorkerThreads(0, size_max, "test", reactor)


@pytest_twisted.ensureDeferred
async def test_a_blocking_call_runs_on_another_thread_and_answers_on_the_reactor() -> None:
    here = threading.get_ident()
    pool = make_pool()
    try:
        ran_on = await pool.run(threading.get_ident)
        assert ran_on != here

        def fails() -> None:
            raise KeyError("missing")

        with pytest.raises(KeyError, match="missing"):
            await pool.run(fails)
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_calls_run_side_by_side_up_to_the_size_then_wait() -> None:
    pool = make_pool(2)
    try:
        barrier = threading.Barrier(2, timeout=10)  # passes only if both run at once
        names = await DeferredList(
            [pool.run(lambda: (barrier.wait(), threading.current_thread().name)[1]) for _ in range(2)],
            fireOnOneErrback=True,
        )
        assert len({name for _, name in names}) == 2

        gate = threading.Event()
        held = [pool.run(gate.wait, 10) for _ in range(2)]
        third = pool.run(lambda: "third")
        assert not third.called
        gate.set()
        assert await third == "third"
        await DeferredList(held, fireOnOneErrback=True)
    finally:
        pool.close()
    with pytest.raises(PoolClosed):
        pool.run(lambda: None)


@pytest_twisted.ensureDeferred
async def test_calls_leave_no_garbage_cycles() -> None:
    pool = make_pool()
    for _ in range(10):
        await pool.run(len, "warm")
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(300):
            assert await pool.run(str, i) == str(i)
        collected = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
        pool.close()
    assert collected < 100  # deferToThread: 1,200
