"""`python -m bench`: install what is missing, run every workload against every server, report.

Servers run one at a time (ours on SQLite, ours on PostgreSQL, ours on PostgreSQL as
two worker processes behind HAProxy, Synapse), each fresh: its own empty database,
users registered anew. The generator is this asyncio process (on uvloop when
installed); W1's and W3's load comes from `--generators` processes of its own
(bench/loadgen.py).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib.util
import os
import shlex
import subprocess
import sys
import time
import traceback
from datetime import datetime
from typing import Any

from bench import fsync_probe, half_core, report
from bench.procstats import cpu_speed_probe, raise_fd_limit
from bench.profiling import PySpy, summarize
from bench.push_gateway import FcmStandIn, run_pg
from bench.servers import (
    BENCH_DIR,
    WORK_DIR,
    Target,
    drop_database,
    ensure_synapse,
    postgres_version,
    start_ours,
    start_ours_workers,
    start_synapse,
)
from bench.stats import WorkloadResult
from bench.workloads import Runner, Sizes

ALL_SERVERS = ["ours-sqlite", "ours-pg", "ours-pg-2w", "synapse"]
ALL_WORKLOADS = ["W1", "W2", "W3", "W3P", "W4", "W5", "W6", "SR", "PG"]
# What ours as several worker processes runs: the rows that compare it with one process.
SCALE_OUT_WORKLOADS = ["W1", "W3"]
SCALE_OUT_PROCESSES = {"ours-pg-2w": 2}

CONFIG_NOTES = """\
- **ours**: `homeserver run` with `rate_limits.enabled: false`, `auth.password_hashing: fast`,
  `logging.access_log: false` (level INFO), `pushers.allow_private_addresses: true`,
  metrics served (`metrics.bearer_secret` set, never scraped); no
  plugins, except the push plugin (defaults) for the whole run when W3P is in it and the push
  gateway for PG; default pool (2-10 connections on PostgreSQL), default epoll reactor.
  Users register through `POST /register` (`m.login.dummy`).
- **Synapse**: the PyPI release in `bench/.synapse-venv`, one process (no workers), database
  `bench_synapse` (C collation) on the same PostgreSQL server (`cp_min` 5, `cp_max` 10), client
  listener only (no federation listener), `registration_shared_secret` (users registered through
  `/_synapse/admin/v1/register`), `enable_registration: false`, every `rc_*` rate limit raised
  to 1,000,000/s, `bcrypt_rounds: 4`, `filter_timeline_limit: 1000`,
  `caches.sync_response_cache_duration: 0` (as Complement), presence on (default),
  `trusted_key_servers: []`, `report_stats: false`, logging INFO with the access log off.
- **Load generator** (`bench/`): asyncio processes, raw HTTP/1.1 keep-alive connections
  (aiohttp only for WebSocket streams). W1's and W3's load comes from `--generators`
  processes (default 2; bench/loadgen.py), each with its share of the users (W1: whole DMs;
  W3: a slice of the members and senders); the other workloads from the bench's own process.
  "Generator CPU" counts every one of them. Receivers upload a filter once and long-poll `/sync`
  (timeout 30 s) with its id, as Element does: the bench rooms' `m.room.message` timeline
  (limit 500), lazy-loaded members, no presence, account data or ephemeral events. Each
  message carries `bench_id` and `bench_ts` (send time, µs); latency is the receiver's clock
  minus `bench_ts` (same machine).
- **ours (PostgreSQL, 2 processes)**: the same config plus a `workers:` section: two
  instances, both event writers (rooms shared out by the CRC-32 of their id), the other
  streams and jobs on the first, a Redis of its own (`redis-server`, no persistence);
  `homeserver migrate` once, then `homeserver run --worker wN` for each; HAProxy in front:
  deploy/haproxy.cfg (a room's sends, state events and redactions routed to its writer) with
  both workers in every backend, one thread and its request log off (bench/servers.py
  `haproxy_from_deploy`), or where
  the checkout has no deploy/haproxy.cfg a minimal one (`haproxy_config`: /sync, sliding sync
  and the WebSocket stream sticky per access token, everything else round robin). Server CPU
  counts both workers, Redis and HAProxy. W1 and W3 only.
- **W1**: every user of each DM sends, one request in flight each, for the whole duration;
  "acknowledged" counts 200 answers inside the window, "delivered" counts the peer's messages
  that reached the other member's sync inside the window.
- **W2**: open loop: sends scheduled at a fixed total rate, spread over the same users; up to
  min(rate, 1,000) sends in flight, each on a keep-alive connection opened before the clock
  starts; beyond that a send waits in the generator with its clock already running. A server
  that acknowledges fewer messages per second than offered builds a queue, and its latency
  then grows with the length of the run. The "core shared with a busy loop" row runs ours
  once more at 1,000 msg/s with every server thread pinned to CPU 0 beside a pinned busy
  loop (so about half a core; the loop counts as "other load"): what a VM hour half as
  fast would do, this VM's single-core speed drifting by up to 2x over a day.
  Before the clock starts each sender sends one message, one at a time, and W2 waits for
  them (the row measures a steady load; a member's first message in a room loads its unread
  counts from the database, a hundred queries at once at the rate's start: in the details as
  `warmup`, not in the row), checkpoints PostgreSQL with 32 WAL segments renamed ahead (a
  fresh cluster creates and zero-fills each next 16 MB segment while every commit waits,
  30-110 ms here; one that has run a while renames old ones: in the details as `pg_wal`, with
  the segment files new during the row), then waits (up to 5 s) for the server to go idle after its set-up,
  and the generator's own garbage collector is off during the load (its passes, up to 64 ms
  at 1,000 msg/s, stopped sends and receivers alike); the first sends are still counted, and
  the details say how many messages of the first second were slower than the p99 and what
  the p99 is without them. On ours the details add `server_stages`, the server's own histograms over the run
  (bench/server_stages.py: waiting for the group commit, the commit, publishing, reactor
  lateness, GC passes, the send's answer time; bucket bounds, so "≤"), and
  `server_cpu_wait_ms`, how long its threads were ready to run but waited for a CPU: these
  hold on a busy machine where the send→sync figures do not.
- **CPU per message** (W1, W2): the server's plus its PostgreSQL backends' CPU-seconds over
  the workload (load and drain) ÷ messages delivered (on SQLite, the server's only).
- **W3**: one public room, every member long-polls; senders send one message at a time; time
  until all = the last member's receipt minus the send time; deliveries/s = all deliveries ÷
  (last delivery - first send).
- **W3P**: W3 again once each member has set an http pusher (`event_id_only`) to a push gateway
  in the load generator that answers at once; every member still long-polls, so the row shows
  what deciding (push rules for each member) and, where due, sending pushes costs the fan-out.
  The number of push requests the gateway received is in the details.
- **W4**: runs last, with its own users (`idle*`, in no room, so their presence reaches nobody);
  RSS measured (median of 5 readings, once the server is idle) before and after opening the
  connections; per connection = difference ÷ count. Long-polls use `timeout=300000`; WebSocket
  streams send the auth frame with a `since` token, one device each (more logins for more).
- **W5**: `GET /sync` without `since` or filter (the server's default timeline limit); then
  `/sync` from a token after one new message (incremental); then the same user through simplified
  sliding sync (MSC4186): one list over every room with timeline_limit 10, Element X's room-list
  state keys and every extension, initial and incremental after one new message (no rows
  where the server answers 404).
- **W6**: `POST /join/{roomId}` by users not yet in the room, one at a time; median.
- **SR**: `POST /search` (room_events, the default page of 10) for a word in 1 of 20 messages of
  one room, once ordered by rank and once by recency, one at a time; medians. Ours answers
  from PostgreSQL full-text search or SQLite FTS5.
- **PG** (ours only): `POST /_matrix/push/v1/notify` with one FCM device each, a fixed number
  in flight, through the push gateway plugin (firebase-admin) to the tests' local OAuth and
  FCM v1 endpoints (tests/push_endpoints.py, threads of the generator's process); ours runs
  with that plugin configured for this row.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few minutes")
    p.add_argument("--servers", default=",".join(ALL_SERVERS), help="comma list of " + ",".join(ALL_SERVERS))
    p.add_argument("--only", default=",".join(ALL_WORKLOADS), help="comma list of workloads (W1..W6)")
    p.add_argument(
        "--profile",
        default="",
        help="comma list of workloads (W1,W2,W3) to profile with py-spy on our servers",
    )
    p.add_argument("--no-install", action="store_true", help="do not pip-install anything")
    p.add_argument("--no-readme", action="store_true", help="do not copy the table into README.md")
    p.add_argument("--keep-databases", action="store_true", help="leave the bench databases afterwards")
    sizes = p.add_argument_group("sizes (defaults: the full run, or --quick's)")
    for name, kind, help_text in [
        ("w1-users", int, "W1/W2 users (pairs in DMs)"),
        ("w1-seconds", float, "W1 duration"),
        ("w2-seconds", float, "W2 duration per rate"),
        ("w2-rates", str, "W2 total rates for Synapse, comma list"),
        ("w2-rates-ours", str, "W2 total rates for ours, comma list"),
        ("w2-half-core-rate", int, "W2 rate for ours on half a core (0: skip)"),
        ("w3-members", int, "W3 room members"),
        ("w3-senders", int, "W3 senders"),
        ("w3-messages", int, "W3 messages per sender"),
        ("w4-syncs", int, "W4 idle long-polls"),
        ("w4-ws", str, "W4 idle WebSocket stream counts (ours), comma list"),
        ("w5-rooms", int, "W5 rooms"),
        ("w5-messages", int, "W5 messages per room"),
        ("w5-repeats", int, "W5 initial syncs"),
        ("w6-members", int, "W6 room members"),
        ("w6-joins", int, "W6 joins measured"),
        ("sr-messages", int, "SR messages in the searched room"),
        ("sr-repeats", int, "SR searches measured per ordering"),
        ("pg-notifications", int, "PG notifications sent"),
        ("grace", float, "longest wait for late deliveries (s)"),
        ("generators", int, "load generator processes for W1 and W3 (1: the bench's own)"),
    ]:
        sizes.add_argument(f"--{name}", type=kind, help=help_text)
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    for field_name in (
        "w1_users",
        "w1_seconds",
        "w2_seconds",
        "w2_half_core_rate",
        "w3_members",
        "w3_senders",
        "w3_messages",
        "w4_syncs",
        "w5_rooms",
        "w5_messages",
        "w5_repeats",
        "w6_members",
        "w6_joins",
        "sr_messages",
        "sr_repeats",
        "pg_notifications",
        "generators",
    ):
        value = getattr(args, field_name)
        if value is not None:
            setattr(sizes, field_name, value)
    for field_name in ("w2_rates", "w2_rates_ours", "w4_ws"):
        value = getattr(args, field_name)
        if value is not None:
            setattr(sizes, field_name, [int(x) for x in value.split(",") if x.strip()])
    if args.grace is not None:
        sizes.grace_s = args.grace
    if sizes.w1_users % 2:
        sizes.w1_users += 1
    return sizes


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_generator_packages(no_install: bool) -> None:
    missing = [m for m in ("aiohttp", "uvloop") if importlib.util.find_spec(m) is None]
    if missing and not no_install:
        log(f"installing {', '.join(missing)} (bench/requirements.txt)")
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            + ["-r", str(BENCH_DIR / "requirements.txt")],
            check=True,
        )


async def run_target(
    target: Target,
    sizes: Sizes,
    workloads: list[str],
    profile: list[str],
    profiles: dict[str, str],
    meta: dict[str, Any],
    stand_in: FcmStandIn | None = None,
) -> list[WorkloadResult]:
    def start_profile(name: str) -> Any:
        if not target.is_ours or name not in profile or target.pid is None:
            return None
        pids = {target.pid: target.process_names.get(target.pid, "")}
        pids.update({pid: target.process_names.get(pid, "") for pid in target.worker_pids})
        spies = {}
        for pid, process in pids.items():
            suffix = f"-{process}" if process else ""
            out = WORK_DIR / f"profile-{target.key}-{name}{suffix}.txt"
            spies[f"{name} on {target.label}{' ' + process if process else ''}"] = (PySpy(pid, out), out)

        class Handle:
            def stop(self) -> None:
                for title, (spy, out) in spies.items():
                    spy.stop()
                    profiles[title] = summarize(out)

        return Handle()

    if target.key in SCALE_OUT_PROCESSES:
        workloads = [w for w in workloads if w in SCALE_OUT_WORKLOADS]
    runner = Runner(target, sizes, log, start_profile)
    results: list[WorkloadResult] = []
    try:
        pool = sizes.pool_size(workloads)
        log(f"  registering {pool} users")
        took = await runner.setup_users(pool)
        meta.setdefault("setup", {})[target.key] = f"{pool} users registered in {took:.1f}s"
        log(f"  registered in {took:.1f}s")
        plan: list[tuple[str, Any]] = []
        if "W1" in workloads:
            plan.append(("W1", runner.w1))
        if "W2" in workloads:
            for rate in sizes.w2_rates_ours if target.is_ours else sizes.w2_rates:
                plan.append((f"W2@{rate}", lambda rate=rate: runner.w2(rate)))
            if target.is_ours and sizes.w2_half_core_rate and half_core.available():
                rate = sizes.w2_half_core_rate
                plan.append((f"W2@{rate} half core", lambda rate=rate: runner.w2(rate, half_core=True)))
        if "W3" in workloads:
            plan.append(("W3", runner.w3))
        if "W3P" in workloads:
            plan.append(("W3P", lambda: runner.w3_with_pushers()))
        if "W6" in workloads:
            plan.append(("W6", runner.w6))
        if "W5" in workloads:
            plan.append(("W5", runner.w5))
        if "SR" in workloads:
            plan.append(("SR", runner.sr))
        if "PG" in workloads and stand_in is not None and target.is_ours:
            plan.append(
                (
                    "PG",
                    lambda: run_pg(
                        runner.http, runner.meter(), stand_in, sizes.pg_notifications, sizes.pg_in_flight
                    ),
                )
            )
        # Last: thousands of users stop syncing at its end, and going offline a minute later
        # is work for the server that would land in whatever workload came next.
        if "W4" in workloads:
            plan.append(("W4 sync", runner.w4_sync))
            if target.is_ours:
                for n in sizes.w4_ws:
                    plan.append((f"W4 ws{n}", lambda n=n: runner.w4_ws(n)))
        for name, run in plan:
            if not target.alive():
                break
            log(f"  {name}")
            try:
                result = await run()
            except Exception as e:
                traceback.print_exc()
                result = WorkloadResult(name, name)
                result.problems.append(f"workload failed: {type(e).__name__}: {e}")
            if not target.alive():
                result.problems.append(
                    f"the server exited (code {target.process.returncode if target.process else '?'}); "
                    f"log tail:\n\n```\n{target.log_tail(20)}\n```"
                )
            results.append(result)
            summary = ", ".join(
                f"{k}={report.fmt(m.value)}{' (' + m.note + ')' if m.note else ''}"
                for k, m in result.metrics.items()
            )
            if result.resources is not None:
                r = result.resources
                summary += (
                    f"; generator {100 * r.generator_share:.0f} % of a core"
                    f" ({r.generator_processes} process{'es' if r.generator_processes > 1 else ''}),"
                    f" server {r.server_cpu_s:.1f} CPU-s, load average {r.loadavg:.1f}"
                )
            log(f"    {summary or 'no figures'}")
            for problem in result.problems:
                log(f"    PROBLEM: {problem}")
    finally:
        runner.close()
    return results


async def run(args: argparse.Namespace) -> int:
    started = datetime.now()
    t0 = time.monotonic()
    sizes = sizes_from(args)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    workloads = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    profile = [w.strip().upper() for w in args.profile.split(",") if w.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            raise SystemExit(f"unknown server {s!r}: choose from {', '.join(ALL_SERVERS)}")
    limit = raise_fd_limit()
    needed = max(sizes.w4_syncs, max(sizes.w4_ws, default=0)) + 200
    if limit < needed:
        log(f"warning: open-file limit {limit} is below the {needed} connections some rows need")
    meta: dict[str, Any] = {
        "started": started,
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:])),
        "mode": "quick" if args.quick else "full",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "speed_start": cpu_speed_probe(),
        "postgres_version": postgres_version(),
        # The floor under W2's tail: every commit waits for such a flush (docs/latency.md).
        "fsync": fsync_probe.summary() if "W2" in workloads else None,
        "config_notes": CONFIG_NOTES,
    }
    try:
        import uvloop

        meta["uvloop"] = getattr(uvloop, "__version__", "?")
    except ImportError:
        meta["uvloop"] = "not installed (stdlib asyncio loop)"
    synapse_version = ""
    if "synapse" in servers:
        if args.no_install:
            from bench.servers import synapse_python

            if not synapse_python().exists():
                raise SystemExit("Synapse is not installed and --no-install was given")
        synapse_version = ensure_synapse(log) if not args.no_install else "installed"
        meta["synapse_version"] = synapse_version
    results: dict[str, list[WorkloadResult]] = {}
    profiles: dict[str, str] = {}
    stand_in = FcmStandIn(WORK_DIR / "fcm-stand-in") if "PG" in workloads else None
    for key in servers:
        log(f"starting {key}")
        try:
            if key == "synapse":
                target = await start_synapse(synapse_version)
            elif key in SCALE_OUT_PROCESSES:
                target = await start_ours_workers(SCALE_OUT_PROCESSES[key], key=key)
                meta["ours_version"] = target.version
            else:
                plugins = [stand_in.plugin()] if stand_in is not None else []
                if "W3P" in workloads:
                    # Loaded for the whole run, so W3 beside it pays the plugin's cost too and
                    # W3P's difference is what the pushers themselves cost.
                    plugins.append({"module": "plugins.push.PushPlugin", "config": {}})
                target = await start_ours("sqlite" if key == "ours-sqlite" else "postgres", plugins)
                meta["ours_version"] = target.version
        except Exception as e:
            log(f"could not start {key}: {type(e).__name__}: {e}")
            failed = WorkloadResult("start", "start")
            failed.problems.append(f"could not start: {e}")
            results[key] = [failed]
            continue
        log(f"{target.label} is up on port {target.port} (pid {target.pid})")
        try:
            results[key] = await run_target(target, sizes, workloads, profile, profiles, meta, stand_in)
        finally:
            target.stop()
            if not args.keep_databases:
                if key == "ours-pg":
                    drop_database("bench_homeserver")
                elif key in SCALE_OUT_PROCESSES:
                    drop_database("bench_homeserver_workers")
                elif key == "synapse":
                    drop_database("bench_synapse")
    if stand_in is not None:
        stand_in.close()
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["speed_end"] = cpu_speed_probe()
    meta["elapsed_min"] = (time.monotonic() - t0) / 60
    table = report.main_table(sizes, results)
    print()
    print(table)
    print()
    print(report.resources_table(results))
    scale_out = report.scale_out_table(results)
    if scale_out:
        print()
        print(scale_out)
    text = report.results_markdown(sizes, results, meta, profiles)
    suffix = "-quick" if args.quick else ("-profile" if profile else "")
    path = report.write_results(text, started, suffix)
    log(f"results written to {path.relative_to(report.ROOT)}")
    full_run = not args.quick and set(servers) == set(ALL_SERVERS) and set(workloads) == set(ALL_WORKLOADS)
    if full_run and not args.no_readme and report.update_readme(table, path, started):
        log("README.md's Benchmarks table updated")
    return 0


def hold_run_lock() -> Any:
    """One benchmark at a time on this machine: two would drop each other's databases
    (fixed names), share bench/.work and fight for the cores. The lock goes with the
    process."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    lock = open(WORK_DIR / "run.lock", "a+")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        raise SystemExit(f"another `python -m bench` is running (pid {holder}); wait for it") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _lock = hold_run_lock()  # noqa: F841 - kept open for the run
    ensure_generator_packages(args.no_install)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
