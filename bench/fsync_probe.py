"""`python -m bench.fsync_probe [PATH] [RATE] [SECONDS]`: how long `fdatasync` of an 8 KB
write takes at a steady rate, on the disk PATH is on (by default PostgreSQL's): the floor
under a commit's wait, since each commit writes its WAL and waits for such a flush
(docs/latency.md). Prints the percentiles in milliseconds."""

from __future__ import annotations

import os
import sys
import time

DEFAULT_PATH = "/var/lib/postgresql/fsync_probe.tmp"
BLOCK = 8192
SLOTS = 2048  # the writes cycle over 16 MB, as WAL segments are reused


def probe(path: str, rate: float, seconds: float) -> list[float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block = os.urandom(BLOCK)
    latencies = []
    try:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            os.pwrite(fd, block, (i % SLOTS) * BLOCK)
            before = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - before) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(latencies)


def summary(path: str = DEFAULT_PATH, rate: float = 500.0, seconds: float = 5.0) -> dict[str, float] | None:
    """The probe's figures for a results file, or None where PATH's directory cannot be written."""
    try:
        ms = probe(path, rate, seconds)
    except OSError:
        return None
    return {
        "rate": rate,
        "flushes": len(ms),
        "p50_ms": _at(ms, 0.5),
        "p99_ms": _at(ms, 0.99),
        "over_3ms_pct": 100 * sum(x > 3 for x in ms) / len(ms),
    }


def _at(ms: list[float], q: float) -> float:
    return ms[min(len(ms) - 1, int(q * len(ms)))]


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 500.0
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    ms = probe(path, rate, seconds)

    def at(q: float) -> float:
        return _at(ms, q)

    print(
        f"{len(ms)} flushes at {rate:g}/s: p50 {at(0.5):.3f}, p90 {at(0.9):.3f}, p99 {at(0.99):.3f},"
        f" p99.9 {at(0.999):.3f}, max {ms[-1]:.3f} ms; over 3 ms: {sum(x > 3 for x in ms)},"
        f" over 5 ms: {sum(x > 5 for x in ms)}"
    )


if __name__ == "__main__":
    main()
