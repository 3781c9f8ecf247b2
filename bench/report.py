"""The results table (stdout and markdown), the dated results file and the README's copy of it."""

from __future__ import annotations

import os
import platform
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.stats import Metric, WorkloadResult
from bench.workloads import Sizes

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "README.md"
README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"

COLUMNS = [("ours-pg", "ours (PostgreSQL)"), ("synapse", "Synapse"), ("ours-sqlite", "ours (SQLite)")]
# Ours as several worker processes: its own table (scale_out_table) against ours-pg.
SCALE_OUT = [("ours-pg-2w", "ours (PostgreSQL, 2 processes behind HAProxy)")]
# Every server, for the per-workload tables.
ALL_COLUMNS = COLUMNS + SCALE_OUT


@dataclass(frozen=True)
class Row:
    key: str
    label: str


def rows_for(sizes: Sizes) -> list[Row]:
    s = sizes
    rows = [
        Row("w1.acked", f"W1 throughput, {s.w1_users} users in {s.w1_users // 2} DMs: acknowledged (msg/s)"),
        Row("w1.delivered", "W1 throughput: delivered to the receiver's sync (msg/s)"),
        Row("w1.cpu", "W1: server + database CPU per message (ms)"),
    ]
    for rate in sorted(set(s.w2_rates) | set(s.w2_rates_ours)):
        for q in ("p50", "p99", "max"):
            rows.append(Row(f"w2.{rate}.{q}", f"W2 latency at {rate:,} msg/s: send→sync {q} (ms)"))
        rows.append(Row(f"w2.{rate}.cpu", f"W2 at {rate:,} msg/s: server + database CPU per message (ms)"))
    if s.w2_half_core_rate:
        rate = s.w2_half_core_rate
        for q in ("p50", "p99", "max"):
            label = f"W2 at {rate:,} msg/s, server's core shared with a busy loop: send→sync {q} (ms)"
            rows.append(Row(f"w2h.{rate}.{q}", label))
        rows.append(
            Row(
                f"w2h.{rate}.cpu",
                f"W2 at {rate:,} msg/s on half a core: server + database CPU per message (ms)",
            )
        )
    rows += [
        Row("w3.p50", f"W3 fan-out, {s.w3_members} members: time until all have a message, p50 (ms)"),
        Row("w3.p99", "W3 fan-out: time until all have a message, p99 (ms)"),
        Row("w3.rate", "W3 fan-out: deliveries/s"),
        Row("w3p.p50", "W3P fan-out, every member with a pusher: time until all have a message, p50 (ms)"),
        Row("w3p.p99", "W3P fan-out with pushers: time until all have a message, p99 (ms)"),
        Row("w3p.rate", "W3P fan-out with pushers: deliveries/s"),
        Row("w4.sync", f"W4 {s.w4_syncs:,} idle long-poll syncs: server RSS per connection (KiB)"),
    ]
    for n in s.w4_ws:
        rows.append(Row(f"w4.ws{n}", f"W4 {n:,} idle WebSocket streams: server RSS per connection (KiB)"))
        rows.append(Row(f"w4.ws{n}.added", f"W4 {n:,} idle WebSocket streams: server RSS added (MB)"))
        rows.append(
            Row(f"w4.ws{n}.total", f"W4 {n:,} idle WebSocket streams: server RSS in total, after W1-W6 (MB)")
        )
    rows += [
        Row("w5.first", f"W5 initial sync, {s.w5_rooms} rooms × {s.w5_messages} messages: first (ms)"),
        Row("w5.time", f"W5 initial sync: median of {s.w5_repeats} (ms)"),
        Row("w5.bytes", "W5 initial sync: response size (KiB)"),
        Row("w5.incr", "W5 incremental sync after one new message: median (ms)"),
        Row("w5.ss.first", f"W5 initial sliding sync (MSC4186), {s.w5_rooms} rooms: first (ms)"),
        Row("w5.ss.time", f"W5 initial sliding sync: median of {s.w5_repeats} (ms)"),
        Row("w5.ss.bytes", "W5 initial sliding sync: response size (KiB)"),
        Row("w5.ss.incr", "W5 incremental sliding sync after one new message: median (ms)"),
        Row("w6.time", f"W6 join a room with {s.w6_members:,} members (ms)"),
        Row("sr.rank", f"SR search a room of {s.sr_messages:,} messages: POST /search by rank, median (ms)"),
        Row("sr.recent", "SR search: POST /search by recency, median (ms)"),
        Row(
            "pg.rate",
            f"PG push gateway, {s.pg_in_flight} in flight, to a local FCM endpoint: notifications/s",
        ),
    ]
    return rows


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(ours: Metric | None, theirs: Metric | None) -> str:
    """How many times better ours is (above 1: better, below 1: worse)."""
    if ours is None or theirs is None or ours.value is None or theirs.value is None:
        return "–"
    if ours.value <= 0 or theirs.value <= 0:
        return "–"
    r = ours.value / theirs.value if ours.higher_is_better else theirs.value / ours.value
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def _cell(metric: Metric | None) -> str:
    if metric is None:
        return "n/a"
    text = fmt(metric.value)
    return f"{text} ({metric.note})" if metric.note else text


def metrics_by_target(results: dict[str, list[WorkloadResult]]) -> dict[str, dict[str, Metric]]:
    out: dict[str, dict[str, Metric]] = {}
    for key, workloads in results.items():
        merged: dict[str, Metric] = {}
        for w in workloads:
            merged.update(w.metrics)
        out[key] = merged
    return out


def main_table(sizes: Sizes, results: dict[str, list[WorkloadResult]]) -> str:
    metrics = metrics_by_target(results)
    header = "| workload | ours (PostgreSQL) | Synapse | ratio | ours (SQLite) |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for row in rows_for(sizes):
        cells = {key: metrics.get(key, {}).get(row.key) for key, _ in COLUMNS}
        if all(c is None for c in cells.values()):
            continue
        lines.append(
            f"| {row.label} | {_cell(cells['ours-pg'])} | {_cell(cells['synapse'])} | "
            f"{ratio(cells['ours-pg'], cells['synapse'])} | {_cell(cells['ours-sqlite'])} |"
        )
    return "\n".join(lines)


def resources_table(results: dict[str, list[WorkloadResult]]) -> str:
    lines = [
        "| workload | server | wall s | server CPU-s | DB CPU-s | server peak RSS (MB) "
        "| generator CPU (% of a core) | other load CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = dict(ALL_COLUMNS)
    for key, _ in ALL_COLUMNS:
        for w in results.get(key, []):
            r = w.resources
            if r is None:
                continue
            lines.append(
                f"| {w.name} | {labels[key]} | {r.wall_s:.1f} | {r.server_cpu_s:.1f} | "
                f"{'–' if r.db_cpu_s is None else f'{r.db_cpu_s:.1f}'} | {r.server_peak_rss / 2**20:.0f} | "
                f"{100 * r.generator_share:.0f} % | {r.other_cpu_s:.1f} |"
            )
    return "\n".join(lines)


SCALE_OUT_ROWS = [
    Row("w1.acked", "W1 throughput: acknowledged (msg/s)"),
    Row("w1.delivered", "W1 throughput: delivered to the receiver's sync (msg/s)"),
    Row("w1.cpu", "W1: server + database CPU per message (ms)"),
    Row("w3.rate", "W3 fan-out: deliveries/s"),
    Row("w3.p50", "W3 fan-out: time until all have a message, p50 (ms)"),
]


def _workload_of(results: list[WorkloadResult], metric: str) -> WorkloadResult | None:
    return next((w for w in results if metric in w.metrics), None)


def _generator_cell(w: WorkloadResult | None) -> str:
    if w is None or w.resources is None:
        return "–"
    r = w.resources
    processes = f" ({r.generator_processes} processes)" if r.generator_processes > 1 else ""
    return f"{100 * r.generator_share:.0f} %{processes}"


def scale_out_table(results: dict[str, list[WorkloadResult]]) -> str:
    """Ours as one process (ours-pg) against several (ours-pg-Nw), W1 and W3, with the load
    generator's CPU (% of one core, all its processes) and the machine's load average beside
    each figure: on a machine shared with other work both move the figures."""
    lines = []
    for key, label in SCALE_OUT:
        if key not in results:
            continue
        one, many = results.get("ours-pg", []), results[key]
        lines += [
            f"| workload | ours, one process | {label} | ratio | generator CPU (one / two) "
            "| load average (one / two) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in SCALE_OUT_ROWS:
            w_one, w_many = _workload_of(one, row.key), _workload_of(many, row.key)
            if w_one is None and w_many is None:
                continue
            m_one = w_one.metrics[row.key] if w_one else None
            m_many = w_many.metrics[row.key] if w_many else None
            load = " / ".join(
                f"{w.resources.loadavg:.1f}" if w and w.resources else "–" for w in (w_one, w_many)
            )
            lines.append(
                f"| {row.label} | {_cell(m_one)} | {_cell(m_many)} | {ratio(m_many, m_one)} | "
                f"{_generator_cell(w_one)} / {_generator_cell(w_many)} | {load} |"
            )
    return "\n".join(lines)


def _w1_costs(w: WorkloadResult | None) -> dict[str, float] | None:
    """W1's CPU per delivered message in ms, by part: the homeserver processes, HAProxy and
    Redis (when run), PostgreSQL, the generator and all of it."""
    if w is None or w.resources is None or not w.details.get("delivered_total"):
        return None
    r, per = w.resources, 1000.0 / w.details["delivered_total"]
    others = {label: r.by_process[name] * per for name, label in _HELPERS if name in r.by_process}
    costs = {"homeserver processes": r.server_cpu_s * per - sum(others.values()), **others}
    costs["PostgreSQL backends"] = (r.db_cpu_s or 0.0) * per
    costs["load generator"] = r.generator_cpu_s * per
    costs["all of it"] = sum(costs.values())
    return costs


# The processes besides the workers that bench/servers.py counts as the two-process server.
_HELPERS = [("haproxy", "HAProxy"), ("redis", "Redis")]
_COST_ROWS = [
    "homeserver processes",
    "HAProxy",
    "Redis",
    "PostgreSQL backends",
    "load generator",
    "all of it",
]


def _paragraph(text: str) -> list[str]:
    return [text, ""] if text else []


def w1_cost_table(results: dict[str, list[WorkloadResult]], cores: int) -> str:
    """Where a W1 message's CPU went with one process and with two, and the ratio those costs
    allow on this machine: one process is bound by its own core (1 ÷ its homeserver cost per
    message), two by every core here, shared with everything else a message costs (cores ÷
    all of it). Empty without both servers' W1."""
    one = _w1_costs(_workload_of(results.get("ours-pg", []), "w1.cpu"))
    many = _w1_costs(_workload_of(results.get("ours-pg-2w", []), "w1.cpu"))
    if one is None or many is None:
        return ""
    lines = ["| W1, CPU per message (ms) | one process | two processes |", "|---|---:|---:|"]
    for part in _COST_ROWS:
        cells = [f"{c[part]:.3f}" if part in c else "–" for c in (one, many)]
        lines.append(f"| {part} | {cells[0]} | {cells[1]} |")
    server = one["homeserver processes"]
    lean = many["homeserver processes"] + many["PostgreSQL backends"]
    lines += [
        "",
        f"The ratio these costs allow on {cores} cores: {cores} × {server:.3f} ÷ "
        f"{many['all of it']:.3f} = **{cores * server / many['all of it']:.2f}×**; with the "
        f"generator, HAProxy and Redis on other cores: {cores} × {server:.3f} ÷ {lean:.3f} = "
        f"{cores * server / lean:.2f}×.",
    ]
    return "\n".join(lines)


def _meminfo_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _seconds(value: Any) -> str:
    return f"{value:.3f} s" if isinstance(value, float) else "?"


def machine_section(meta: dict[str, Any]) -> str:
    lines = [
        f"- CPU: {os.cpu_count()} cores ({cpu_model()}); memory {_meminfo_total()}; "
        f"kernel {platform.release()}",
        f"- Python {platform.python_version()}; Twisted {_version('Twisted')}; "
        f"generator: aiohttp {_version('aiohttp')}, uvloop {meta.get('uvloop', 'not used')}",
        f"- ours: homeserver {meta.get('ours_version', '?')}; SQLite {sqlite3.sqlite_version}",
        f"- Synapse {meta.get('synapse_version', '–')} (PyPI, monolith, default caches)",
        f"- PostgreSQL {meta.get('postgres_version', '?')} (127.0.0.1, both servers, one at a time)",
        f"- load average at start: {meta.get('loadavg_start', '?')}; at end: {meta.get('loadavg_end', '?')}",
        f"- single-core speed probe (a fixed pure-Python loop, best of 3; lower is faster; this VM"
        f" drifts by up to 2x over a day, so compare files by it): {_seconds(meta.get('speed_start'))}"
        f" at start, {_seconds(meta.get('speed_end'))} at end",
    ]
    fsync = meta.get("fsync")
    if fsync:
        lines.append(
            f"- PostgreSQL's disk (`bench.fsync_probe`, before the run): `fdatasync` of an 8 KB write at"
            f" {fsync['rate']:g}/s, {fsync['flushes']} flushes: p50 {fsync['p50_ms']:.2f} ms,"
            f" p99 {fsync['p99_ms']:.2f} ms, {fsync['over_3ms_pct']:.1f} % over 3 ms (every commit"
            " waits for one; W2's p99 cannot be under this disk's)"
        )
    return "\n".join(lines)


def results_markdown(
    sizes: Sizes,
    results: dict[str, list[WorkloadResult]],
    meta: dict[str, Any],
    profiles: dict[str, str],
) -> str:
    started: datetime = meta["started"]
    out = [
        f"# Benchmark results, {started:%Y-%m-%d %H:%M}",
        "",
        f"`{meta['command']}`, {meta['mode']} run, {meta['elapsed_min']:.1f} minutes in all.",
        "",
        "## Machine",
        "",
        machine_section(meta),
        "",
        "## Results",
        "",
        "Ratio: how many times better ours (PostgreSQL) does than Synapse on that row "
        "(throughput: ours ÷ Synapse; latency, time, memory: Synapse ÷ ours); below 1× is worse. "
        "A note in brackets counts what went wrong (lost = acknowledged but never seen in the "
        "receiver's sync). n/a: not run against that server (WebSocket rows, the 1,000 msg/s rows "
        "and the half-core rows are ours only).",
        "",
        main_table(sizes, results),
        "",
        "## One process against two",
        "",
        "Ours on PostgreSQL as one process (the column above) and as two worker processes, each "
        "an event writer, behind HAProxy (docs/scaling.md): W1 and W3 only. Ratio: two ÷ one "
        "(time: one ÷ two). Generator CPU: the load generator's processes together, in % of one "
        "core over the workload; load average: the machine's 1-minute figure at the workload's "
        "end (other work on the machine included).",
        "",
        scale_out_table(results) or "Not run (`--servers` without ours-pg-2w).",
        "",
        *_paragraph(w1_cost_table(results, os.cpu_count() or 1)),
        "## Server resources per workload",
        "",
        "Measured over each workload's load phase only (setup excluded), from /proc: server "
        "CPU-seconds (user + system, all threads), the PostgreSQL backends serving it, peak RSS "
        "(VmHWM after resetting it), the load generator's own CPU, and the CPU used by everything "
        "else on the machine in that time (other engineers' test runs: noise).",
        "",
        resources_table(results),
        "",
    ]
    noisy = [
        (key, w.name, w.resources.other_cpu_s / w.resources.wall_s)
        for key, workloads in results.items()
        for w in workloads
        if w.resources is not None
        and not w.name.endswith("half core")  # its busy loop is the point of it
        and w.resources.wall_s > 1
        and w.resources.other_cpu_s / w.resources.wall_s > 0.2
    ]
    if noisy:
        out += [
            "**Noise:** other processes used a notable share of the two cores during "
            + ", ".join(f"{name} on {key} ({100 * share:.0f} % of a core)" for key, name, share in noisy)
            + ". Figures from those workloads are pessimistic.",
            "",
        ]
    busy_generator = [
        (key, w.name, w.resources.generator_share)
        for key, workloads in results.items()
        for w in workloads
        if w.resources is not None and w.resources.generator_share > 0.8
    ]
    if busy_generator:
        out += [
            "**Generator:** above 80 % of a core during "
            + ", ".join(f"{name} on {key} ({100 * share:.0f} %)" for key, name, share in busy_generator)
            + ": there the generator may be part of the limit.",
            "",
        ]
    costly_generator = [
        (key, w.name)
        for key, workloads in results.items()
        for w in workloads
        if w.resources is not None
        and w.resources.wall_s > 1
        and w.resources.generator_cpu_s > w.resources.server_cpu_s + (w.resources.db_cpu_s or 0.0)
    ]
    if costly_generator:
        out += [
            "**Generator costlier than the server** during "
            + ", ".join(f"{name} on {key}" for key, name in costly_generator)
            + ": there the figures may say more about the generator than the server.",
            "",
        ]
    problems = [(key, w.name, p) for key, workloads in results.items() for w in workloads for p in w.problems]
    out += ["## Problems seen", ""]
    if problems:
        out += [f"- {key}, {name}: {p}" for key, name, p in problems]
    else:
        out.append("None: no errors, no lost, duplicated or gapped messages.")
    out += ["", "## Details", ""]
    for key, label in ALL_COLUMNS:
        if key not in results:
            continue
        out.append(f"### {label}")
        out.append("")
        if key in meta.get("setup", {}):
            out.append(f"- setup: {meta['setup'][key]}")
        for w in results[key]:
            detail = ", ".join(f"{k} {_detail(v)}" for k, v in w.details.items())
            out.append(f"- {w.title}: {detail}")
        out.append("")
    if profiles:
        out += ["## Profiles (py-spy on our server)", ""]
        for name, text in profiles.items():
            out += [f"### {name}", "", text, ""]
    out += ["## How the servers ran", "", meta.get("config_notes", ""), ""]
    return "\n".join(out)


def _detail(value: Any) -> str:
    if isinstance(value, float):
        return fmt(value)
    return str(value)


def write_results(text: str, started: datetime, suffix: str = "") -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{started:%Y-%m-%d-%H%M}{suffix}.md"
    path.write_text(text)
    return path


def update_readme(table: str, results_path: Path, started: datetime) -> bool:
    """Replace the table between the README's bench markers; False if the markers are missing."""
    if not README.exists():
        return False
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return False
    rel = results_path.relative_to(ROOT)
    block = (
        f"{README_START}\nLatest full run ({started:%Y-%m-%d}, [{rel}]({rel}): machine, versions, "
        "CPU and memory per workload, notes). Ratio: how many times better ours on PostgreSQL does "
        f"than Synapse (below 1×: worse).\n\n{table}\n{README_END}"
    )
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    README.write_text(pattern.sub(lambda _: block, text, count=1))
    return True
