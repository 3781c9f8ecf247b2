"""A server squeezed onto half a core: its threads pinned to CPU 0 beside a busy loop.

This VM's single-core speed drifts by up to 2x over a day. Running a latency workload with
the server sharing its core with a busy loop shows what a slow hour (or a busier machine)
does to it, whatever the hour of the run: the kernel splits the core about evenly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CORE = 0


def available() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")] if Path(f"/proc/{pid}").exists() else []


def _pin_to_core() -> None:  # in the busy loop's child, before exec
    os.sched_setaffinity(0, {CORE})


class HalfCore:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.original = os.sched_getaffinity(pid)
        self.hog: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Threads started later (a DB pool growing) inherit the affinity of the one starting them.
        for tid in _threads(self.pid):
            os.sched_setaffinity(tid, {CORE})
        self.hog = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-c", "while True: pass"],
            preexec_fn=_pin_to_core,  # noqa: PLW1509 - only sets the CPU affinity
        )

    def stop(self) -> None:
        if self.hog is not None:
            self.hog.kill()
            self.hog.wait()
            self.hog = None
        for tid in _threads(self.pid):
            try:
                os.sched_setaffinity(tid, self.original)
            except ProcessLookupError:
                pass
