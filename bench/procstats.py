"""CPU and memory from /proc: the server's, its database backends', the generator's and the machine's."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _status_kib(pid: int, key: bytes) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    kib = _status_kib(pid, b"VmRSS:")
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int) -> int | None:
    kib = _status_kib(pid, b"VmHWM:")
    return None if kib is None else kib * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs the right to write clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_speed_probe() -> float:
    """Seconds a fixed pure-Python loop takes on one core (best of three).

    This VM's single-core speed drifts by up to 2x over a day (neighbours on the
    host, invisible in /proc): the same commit measured 1,011 and 554 msg/s on W1
    hours apart. Results files record this probe so runs can be compared fairly;
    ratios within one run are unaffected.
    """
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def generator_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (for this process and what it starts); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class Resources:
    """What one workload cost, measured around it."""

    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    server_peak_rss: int = 0
    db_cpu_s: float | None = None
    generator_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    # The bench's own process plus any load generator processes (bench/loadgen.py) it ran.
    generator_processes: int = 1
    # The machine's 1-minute load average at the workload's end.
    loadavg: float = 0.0
    # Server CPU-seconds of each named process (workers, Redis, the balancer), when several.
    by_process: dict[str, float] = field(default_factory=dict)

    @property
    def generator_share(self) -> float:
        """The generator's CPU as a fraction of one core over the workload."""
        return self.generator_cpu_s / self.wall_s if self.wall_s else 0.0


@dataclass
class Meter:
    """Measures a server process (and its database backends) over one workload.

    `db_pids` lists the PostgreSQL backends serving the server right now (called
    at start and end; a backend seen only at the end counts whole). `more_pids`: the
    server's other processes (workers, Redis, the balancer), whose CPU counts as the
    server's; the peak RSS is `pid`'s alone.
    """

    pid: int | None
    db_pids: Callable[[], list[int]] | None = None
    more_pids: list[int] = field(default_factory=list)
    # Names of `pid` and `more_pids` (e.g. "w1", "redis"): their CPU is reported one by one.
    names: dict[int, str] = field(default_factory=dict)
    _t0: float = 0.0
    _cpu0: float = 0.0
    _more0: dict[int, float] = field(default_factory=dict)
    _gen0: float = 0.0
    _busy0: float = 0.0
    _db0: dict[int, float] = field(default_factory=dict)
    _peak_sampled: int = 0
    _peak_reset: bool = False
    _sampler: asyncio.Task[None] | None = None

    def _db_cpu(self) -> dict[int, float]:
        if self.db_pids is None:
            return {}
        out = {}
        for pid in self.db_pids():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                out[pid] = cpu
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._gen0 = generator_cpu_seconds()
        self._busy0 = machine_busy_seconds()
        if self.pid is not None:
            self._cpu0 = cpu_seconds(self.pid) or 0.0
            self._peak_reset = reset_peak_rss(self.pid)
            self._peak_sampled = rss_bytes(self.pid) or 0
            self._sampler = asyncio.get_running_loop().create_task(self._sample())
        self._db0 = self._db_cpu()
        self._more0 = {pid: cpu_seconds(pid) or 0.0 for pid in self.more_pids}

    async def _sample(self) -> None:
        assert self.pid is not None
        while True:
            await asyncio.sleep(0.25)
            rss = rss_bytes(self.pid) or 0
            self._peak_sampled = max(self._peak_sampled, rss)

    def stop(self) -> Resources:
        wall = time.monotonic() - self._t0
        gen = generator_cpu_seconds() - self._gen0
        busy = machine_busy_seconds() - self._busy0
        res = Resources(wall_s=wall, generator_cpu_s=gen, loadavg=os.getloadavg()[0])
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self.pid is not None:
            res.server_cpu_s = (cpu_seconds(self.pid) or self._cpu0) - self._cpu0
            if self.pid in self.names:
                res.by_process[self.names[self.pid]] = res.server_cpu_s
            hwm = peak_rss_bytes(self.pid) if self._peak_reset else None
            res.server_peak_rss = max(hwm or 0, self._peak_sampled)
        for pid, before in self._more0.items():
            used = (cpu_seconds(pid) or before) - before
            res.server_cpu_s += used
            if pid in self.names:
                res.by_process[self.names[pid]] = used
        if self.db_pids is not None:
            end = self._db_cpu()
            res.db_cpu_s = sum(cpu - self._db0.get(pid, 0.0) for pid, cpu in end.items())
        res.other_cpu_s = max(0.0, busy - res.server_cpu_s - (res.db_cpu_s or 0.0) - gen)
        return res


async def settle(pid: int, quiet_share: float = 0.05, window_s: float = 1.0, max_s: float = 30.0) -> float:
    """Wait until the process uses under `quiet_share` of a core over `window_s`; the time waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        before = cpu_seconds(pid) or 0.0
        await asyncio.sleep(window_s)
        if (cpu_seconds(pid) or 0.0) - before < quiet_share * window_s:
            break
    return time.monotonic() - t0


async def steady_rss(pid: int, samples: int = 5, interval_s: float = 0.3) -> int:
    """The median of a few RSS readings."""
    values = []
    for _ in range(samples):
        values.append(rss_bytes(pid) or 0)
        await asyncio.sleep(interval_s)
    return int(statistics.median(values))
