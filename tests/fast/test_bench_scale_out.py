"""The bench's one-against-two rows: the table (each figure with the generator's CPU and the load
average beside it, the ratio two ÷ one, one ÷ two for times and costs) and the HAProxy config
the two workers run behind (deploy/haproxy.cfg pointed at them)."""

from __future__ import annotations

from pathlib import Path

from bench.procstats import Resources
from bench.report import scale_out_table, w1_cost_table
from bench.servers import haproxy_from_deploy
from bench.stats import Metric, WorkloadResult


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


def _w1_costed(
    delivered: int, server: float, by_process: dict[str, float], db: float, generator: float
) -> WorkloadResult:
    result = _w1(delivered / 30.0, 0.0, generator, 3, 1.0)
    assert result.resources is not None
    result.resources.server_cpu_s = server
    result.resources.by_process = by_process
    result.resources.db_cpu_s = db
    result.details["delivered_total"] = delivered
    return result


def test_the_w1_cost_table_splits_each_message_and_bounds_the_ratio_by_the_cores() -> None:
    # One process: 30 CPU-s of server for 30,000 messages (1 ms each), bound by its core.
    # Two: workers 0.8 ms, HAProxy 0.2, Redis 0.01, PostgreSQL 0.3, generator 0.2 per message.
    results = {
        "ours-pg": [_w1_costed(30_000, 30.0, {}, 9.0, 6.0)],
        "ours-pg-2w": [
            _w1_costed(40_000, 40.4, {"w1": 17.0, "w2": 15.0, "haproxy": 8.0, "redis": 0.4}, 12.0, 8.0)
        ],
    }
    lines = w1_cost_table(results, 2).splitlines()
    assert "| homeserver processes | 1.000 | 0.800 |" in lines
    assert "| HAProxy | – | 0.200 |" in lines
    assert "| PostgreSQL backends | 0.300 | 0.300 |" in lines
    assert "| load generator | 0.200 | 0.200 |" in lines
    assert lines[-3] == "| all of it | 1.500 | 1.510 |"
    # 2 cores x 1 ms / 1.51 ms; without generator and balancer: 2 x 1 / (0.8 + 0.3).
    assert "**1.32×**" in lines[-1] and "= 1.82×." in lines[-1]
    assert w1_cost_table({"ours-pg": results["ours-pg"]}, 2) == ""


TEMPLATE = """global
    stats socket /run/haproxy/admin.sock mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog

frontend matrix
    bind 127.0.0.1:8008
    default_backend any_worker

backend client_workers
    balance hash var(txn.who)
# a comment at the margin inside a backend
    server w3 127.0.0.1:8103 check
    server w1 127.0.0.1:8101 check backup

backend any_worker
    balance roundrobin
    server w1 127.0.0.1:8101 check
    server w2 127.0.0.1:8102 check
    server w3 127.0.0.1:8103 check
"""


def test_the_deploy_haproxy_config_is_pointed_at_the_bench_workers() -> None:
    text = haproxy_from_deploy(TEMPLATE, 40000, {"w2": 40002, "w1": 40001}, Path("/tmp/x.sock"))
    lines = text.splitlines()
    assert "    bind 127.0.0.1:40000" in lines
    assert "    stats socket /tmp/x.sock mode 600 level admin" in lines
    assert not any(line.strip().startswith("log ") or "httplog" in line for line in lines)
    ours = ["    server w1 127.0.0.1:40001 check", "    server w2 127.0.0.1:40002 check"]
    for backend in ("backend client_workers", "backend any_worker"):
        at = lines.index(backend)
        assert lines[at + 1 : at + 3] == ours
    # Only the bench's two workers, each once per backend; the template's three are gone.
    assert sum("server " in line for line in lines) == 4
    assert "balance roundrobin" in text and "balance hash var(txn.who)" in text
