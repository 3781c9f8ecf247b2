"""The bench's one-against-two table: each figure with the generator's CPU and the load average
beside it, the ratio two ÷ one (one ÷ two for times and costs)."""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is a top-level folder of the repository, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.procstats import Resources  # noqa: E402
from bench.report import scale_out_table  # noqa: E402
from bench.stats import Metric, WorkloadResult  # noqa: E402


def _w1(acked: float, cpu_ms: float, generator_cpu_s: float, processes: int, load: float) -> WorkloadResult:
    result = WorkloadResult("W1", "W1")
    result.metrics["w1.acked"] = Metric(acked, "msg/s", True)
    result.metrics["w1.cpu"] = Metric(cpu_ms, "ms", False)
    result.resources = Resources(
        wall_s=30.0, generator_cpu_s=generator_cpu_s, generator_processes=processes, loadavg=load
    )
    return result


def test_rows_carry_generator_cpu_load_and_the_ratio_each_way() -> None:
    results = {
        "ours-pg": [_w1(1000.0, 0.5, 9.0, 3, 2.5)],
        "ours-pg-2w": [_w1(1800.0, 0.4, 15.0, 3, 4.0)],
    }
    lines = scale_out_table(results).splitlines()
    acked = next(line for line in lines if line.startswith("| W1 throughput: acknowledged"))
    assert "| 1,000 | 1,800 | 1.8× | 30 % (3 processes) / 50 % (3 processes) | 2.5 / 4.0 |" in acked
    cpu = next(line for line in lines if line.startswith("| W1: server + database CPU"))
    assert "| 0.50 | 0.40 | 1.2× |" in cpu  # cheaper per message with two: above 1×
    assert not any("W3" in line for line in lines)  # not run: no row


def test_no_table_without_the_two_process_server() -> None:
    assert scale_out_table({"ours-pg": [_w1(1000.0, 0.5, 9.0, 1, 1.0)]}) == ""
