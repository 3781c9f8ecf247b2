"""The federation bench runs end to end for a few seconds between two of our servers and
counts every message delivered; no timing is asserted (the figures are the bench's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_federation_bench_between_two_of_our_servers() -> None:
    argv = [sys.executable, "-m", "bench.federation_latency", "--pairs", "ours-ours"]
    argv += ["--rate", "10", "--seconds", "2", "--members", "20", "--no-save"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)  # noqa: S603
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {
        line.split(" | ")[0].lstrip("| "): line for line in done.stdout.splitlines() if line.startswith("| ")
    }
    names = " ".join(rows)
    assert "send → remote sync, ours (a) → ours (b) at 10 msg/s: p50 (ms)" in names
    assert "p99 (ms)" in names
    # Every message reached the receiver: the bench adds a "delivered" row only when some did not.
    assert not any("delivered" in name for name in rows), done.stdout
    assert "join a 20-member room on ours (a) from ours (b) (s)" in names
