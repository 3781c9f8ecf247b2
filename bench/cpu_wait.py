"""How long a server's threads were ready to run but waited for a CPU (Linux schedstat).

On a shared machine a latency tail can come from the kernel giving the cores to other
processes, not from anything the server does. `/proc/PID/task/TID/schedstat` counts, per
thread, the nanoseconds spent on a CPU and waiting in a run queue; sampling the reactor
(main) thread every 10 ms tells how much of a stall was waiting for a CPU. Read from
outside the process, so the server runs unchanged.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

SAMPLE_S = 0.01
WINDOW_S = 1.0  # the worst second


def _schedstat(path: Path) -> tuple[float, float]:
    """(ms on a CPU, ms waiting in a run queue) of one thread, or (0, 0) once it is gone."""
    try:
        on_cpu, waiting, _slices = path.read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e6, int(waiting) / 1e6


def _process_totals(pid: int) -> tuple[float, float]:
    on_cpu = waiting = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        run, wait = _schedstat(task / "schedstat")
        on_cpu, waiting = on_cpu + run, waiting + wait
    return on_cpu, waiting


class CpuWait:
    """Samples the main threads of `pids` from start() to stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._stop = threading.Event()
        # (monotonic time, ms on a CPU, ms waiting) of each main thread, every SAMPLE_S.
        self._samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in pids}
        self._totals: dict[str, tuple[float, float]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._totals = {name: _process_totals(pid) for name, pid in self.pids.items()}
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                run, wait = _schedstat(Path(f"/proc/{pid}/task/{pid}/schedstat"))
                self._samples[name].append((time.monotonic(), run, wait))
            time.sleep(SAMPLE_S)

    def stop(self) -> dict[str, dict[str, float]]:
        """Per process: its main thread's ms waiting and on a CPU, the most it waited in any
        second, and all its threads' ms waiting and on a CPU."""
        self._stop.set()
        self._thread.join()
        out = {}
        for name, pid in self.pids.items():
            samples = self._samples[name]
            worst, j = 0.0, 0
            for i, (t, _run, wait) in enumerate(samples):
                j = max(j, i)
                while j + 1 < len(samples) and samples[j + 1][0] - t <= WINDOW_S:
                    j += 1
                worst = max(worst, samples[j][2] - wait)
            run0, wait0 = self._totals[name]
            run1, wait1 = _process_totals(pid)
            out[name] = {
                "main_wait_ms": samples[-1][2] - samples[0][2] if samples else 0.0,
                "main_cpu_ms": samples[-1][1] - samples[0][1] if samples else 0.0,
                "main_worst_second_wait_ms": worst,
                "all_wait_ms": wait1 - wait0,
                "all_cpu_ms": run1 - run0,
            }
        return out


class GcPauses:
    """This process's garbage-collector passes from creation to stop(): the load generator's own
    pauses, which land on its send times and its receivers' clocks like a server's would."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.longest_ms = 0.0
        self.total_ms = 0.0
        self._started = 0.0
        gc.callbacks.append(self._record)

    def _record(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = (time.perf_counter() - self._started) * 1000
        self.passes[info["generation"]] += 1
        self.longest_ms = max(self.longest_ms, took)
        self.total_ms += took

    def stop(self) -> None:
        if self._record in gc.callbacks:
            gc.callbacks.remove(self._record)

    def summary(self) -> dict[str, Any]:
        longest, total = round(self.longest_ms, 1), round(self.total_ms)
        return {"passes": self.passes, "longest_ms": longest, "total_ms": total}
