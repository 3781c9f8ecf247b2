"""The six workloads, run against one target at a time through the Client-Server API.

Every workload measures only its load phase (setup - registering, creating rooms,
joining - is done before the meter starts) and reports its figures as `Metric`s
plus the server's CPU-seconds and peak RSS for that phase (`Resources`). Messages
carry their send time; receivers compute send->sync latency from it. Anything a
server gets wrong - an error status, a message acknowledged but never delivered,
one delivered twice, a gap in a timeline - is counted and reported, never hidden.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from bench import loadgen, server_stages
from bench.cpu_wait import CpuWait, GcPauses
from bench.half_core import HalfCore
from bench.httpclient import HttpClient, HttpError
from bench.loadgen import Shard, user_data
from bench.matrix import (
    CLIENT,
    EMPTY_FILTER,
    Matrix,
    MatrixCallError,
    ReceiverStats,
    SyncReceiver,
    User,
    message_content,
    message_filter_definition,
    sliding_sync_body,
)
from bench.procstats import Meter, Resources, settle, steady_rss
from bench.push_sink import PushSink
from bench.servers import Target, checkpoint_counters, prepare_wal, wal_file_names
from bench.stats import Metric, WorkloadResult, gather_limited, percentile

Log = Callable[[str], None]

# W2's cap on sends in flight (each on its own keep-alive connection).
W2_MAX_CONNECTIONS = 1000
# At most this long waiting for the server to go idle after W2's set-up.
W2_SETTLE_MAX_S = 5.0


@dataclass
class Sizes:
    """Every workload's size and duration (the full run's defaults; `--quick` shrinks them)."""

    w1_users: int = 100
    w1_seconds: float = 30.0
    w2_rates: list[int] = field(default_factory=lambda: [200])
    w2_rates_ours: list[int] = field(default_factory=lambda: [200, 500, 1000])
    # Ours once more at this rate with its core shared with a busy loop (0: not run).
    w2_half_core_rate: int = 1000
    w2_seconds: float = 30.0
    w3_members: int = 500
    w3_senders: int = 10
    w3_messages: int = 20
    w4_syncs: int = 2000
    w4_ws: list[int] = field(default_factory=lambda: [2000, 10000])
    w5_rooms: int = 200
    w5_messages: int = 50
    w5_repeats: int = 3
    w6_members: int = 1000
    w6_joins: int = 3
    sr_messages: int = 2000
    sr_repeats: int = 10
    pg_notifications: int = 3000
    pg_in_flight: int = 20
    # Longest wait for deliveries once the load has stopped, while they still trickle in.
    grace_s: float = 60.0
    # Concurrency of setup requests (registering, joining, filling rooms).
    setup_concurrency: int = 16
    # Processes W1's and W3's load comes from (bench/loadgen.py); 1: the bench's own. Two
    # processes serving W1 need more than one generator core.
    generators: int = 2

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            w1_users=20,
            w1_seconds=5.0,
            w2_rates=[50],
            w2_rates_ours=[50, 200],
            w2_half_core_rate=200,
            w2_seconds=5.0,
            w3_members=50,
            w3_senders=5,
            w3_messages=5,
            w4_syncs=200,
            w4_ws=[200, 1000],
            w5_rooms=20,
            w5_messages=10,
            w5_repeats=2,
            w6_members=100,
            w6_joins=2,
            sr_messages=200,
            sr_repeats=5,
            pg_notifications=300,
            grace_s=20.0,
        )

    def pool_size(self, workloads: list[str] | None = None) -> int:
        """How many users the selected workloads need (W4 and W5 register their own)."""
        needs = {
            "W1": self.w1_users,
            "W2": self.w1_users,
            "W3": self.w3_members,
            "W3P": self.w3_members,
            "W6": self.w6_members + self.w6_joins,
        }
        return max([n for w, n in needs.items() if workloads is None or w in workloads] + [2])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _cpu_per_message(resources: Resources | None, messages: int) -> Metric:
    """Server plus database CPU per message sent and delivered (ms), over the whole workload."""
    if resources is None or not messages:
        return Metric(None, "ms", False)
    cpu = resources.server_cpu_s + (resources.db_cpu_s or 0.0)
    note = "" if resources.db_cpu_s is not None else "server only"
    return Metric(cpu / messages * 1000, "ms", False, note)


def _cpu_by_process(resources: Resources) -> dict[str, float]:
    """Each server process's CPU-seconds (several processes), and the database's, for the details."""
    out = {f"cpu_s_{name}": round(cpu, 2) for name, cpu in sorted(resources.by_process.items())}
    if out and resources.db_cpu_s is not None:
        out["cpu_s_postgresql"] = round(resources.db_cpu_s, 2)
    return out


def _lost_note(lost: int, errors: int, dups: int, gaps: int) -> str:
    parts = []
    if lost:
        parts.append(f"{lost} lost")
    if errors:
        parts.append(f"{errors} errors")
    if dups:
        parts.append(f"{dups} duplicated")
    if gaps:
        parts.append(f"{gaps} gaps")
    return ", ".join(parts)


class Runner:
    """Runs the workloads against one target; keeps users and rooms for the workloads that reuse them."""

    def __init__(self, target: Target, sizes: Sizes, log: Log, profile: Callable[[str], Any] | None = None):
        self.target = target
        self.sizes = sizes
        self.log = log
        self.http = HttpClient(target.host, target.port)
        self.mx = Matrix(self.http)
        self.users: list[User] = []
        self.idle_users: list[User] = []
        self.sinces: dict[str, str] = {}
        self.dms: list[tuple[User, User, str]] = []
        self.big_room: str | None = None
        self.big_room_members = 0
        # profile(name) -> an object with .stop(), started around a workload's load phase.
        self.profile = profile

    def close(self) -> None:
        self.http.close()

    def meter(self) -> Meter:
        return Meter(self.target.pid, self.target.db_pids, self.target.more_pids, self.target.process_names)

    def _profiled(self, name: str) -> Any:
        return self.profile(name) if self.profile is not None else None

    async def _scrape_stages(self) -> server_stages.Histograms | None:
        """Our server's histograms (None for Synapse, or a server without the stage metrics)."""
        if not self.target.metrics_secret:
            return None
        try:
            return await server_stages.scrape(self.http, self.target.metrics_secret)
        except (HttpError, RuntimeError, TimeoutError) as e:
            self.log(f"    (no server stages: {e})")
            return None

    # Setup -----------------------------------------------------------------------------------

    async def setup_users(self, count: int) -> float:
        """Register bench0..bench{count-1}; the seconds it took."""
        t0 = time.monotonic()
        start = len(self.users)

        async def one(i: int) -> User:
            return await self.target.register(self.mx, f"bench{i}", i)

        self.users += await gather_limited(
            (one(i) for i in range(start, count)), self.sizes.setup_concurrency
        )
        return time.monotonic() - t0

    async def ensure_idle_users(self, count: int) -> list[User]:
        """W4's own users, in no room, so that nobody else hears of their presence."""
        start = len(self.idle_users)

        async def one(i: int) -> User:
            return await self.target.register(self.mx, f"idle{i}", 100_000 + i)

        self.idle_users += await gather_limited(
            (one(i) for i in range(start, count)), self.sizes.setup_concurrency
        )
        return self.idle_users[:count]

    async def _tokens(self, users: list[User], count: int) -> list[tuple[User, str]]:
        """`count` (user, access token) pairs, each token a distinct device: more logins as needed."""
        needed_per_user = -(-count // len(users))
        logins = []
        for user in users:
            for _ in range(needed_per_user - 1 - len(user.extra_tokens)):
                logins.append(user)

        async def login(user: User) -> None:
            user.extra_tokens.append(await self.mx.login(user))

        if logins:
            self.log(f"    logging in {len(logins)} more devices")
            await gather_limited((login(u) for u in logins), self.sizes.setup_concurrency)
        out = []
        for i in range(count):
            user = users[i % len(users)]
            k = i // len(users)
            out.append((user, user.token if k == 0 else user.extra_tokens[k - 1]))
        return out

    async def _since_tokens(self, users: list[User]) -> None:
        missing = [u for u in users if u.user_id not in self.sinces]

        async def one(user: User) -> None:
            self.sinces[user.user_id] = await self.mx.since_token(user)

        await gather_limited((one(u) for u in missing), self.sizes.setup_concurrency)

    async def ensure_dms(self, n_users: int) -> list[tuple[User, User, str]]:
        """n_users/2 direct chats between bench0+bench1, bench2+bench3, ..."""
        if len(self.dms) * 2 >= n_users:
            return self.dms[: n_users // 2]
        pairs = [(self.users[2 * i], self.users[2 * i + 1]) for i in range(len(self.dms), n_users // 2)]

        async def make(a: User, b: User) -> tuple[User, User, str]:
            room = await self.mx.create_room(
                a, {"preset": "trusted_private_chat", "is_direct": True, "invite": [b.user_id]}
            )
            await self.mx.join(b, room)
            return a, b, room

        self.dms += await gather_limited((make(a, b) for a, b in pairs), self.sizes.setup_concurrency)
        return self.dms[: n_users // 2]

    async def ensure_big_room(self, members: int) -> str:
        """One public room with `members` joined members (bench0 creates it; the next ones join)."""
        if self.big_room is None:
            self.big_room = await self.mx.create_room(
                self.users[0], {"preset": "public_chat", "name": "bench fan-out"}
            )
            self.big_room_members = 1
        if members > self.big_room_members:
            room = self.big_room
            joiners = self.users[self.big_room_members : members]
            await gather_limited((self.mx.join(u, room) for u in joiners), self.sizes.setup_concurrency)
            self.big_room_members = members
        return self.big_room

    async def _receivers(
        self, pairs: list[tuple[User, list[str]]], on_message: Callable[[User], Any]
    ) -> list[SyncReceiver]:
        receivers = [
            SyncReceiver(self.mx, u, message_filter_definition(rooms), on_message(u)) for u, rooms in pairs
        ]
        await gather_limited((r.prime() for r in receivers), self.sizes.setup_concurrency)
        for r in receivers:
            r.start()
        # Let every long-poll reach the server before the load starts (not needed for
        # correctness - the since tokens cover everything after them - but for timing).
        await asyncio.sleep(0.5)
        return receivers

    @staticmethod
    async def _stop_receivers(receivers: list[SyncReceiver]) -> None:
        await asyncio.gather(*(r.stop() for r in receivers))

    # W1: throughput --------------------------------------------------------------------------

    async def _run_shards(
        self, specs: list[dict[str, Any]], name: str
    ) -> tuple[list[Shard], Meter, Any, float]:
        """Start one shard per spec, wait until every one's long-polls run, start the meter and
        the profile: (the shards, the meter, the profile, the wall time the load starts)."""
        pool = loadgen.shards(len(specs))
        try:
            await asyncio.gather(*(shard.start(spec) for shard, spec in zip(pool, specs, strict=True)))
        except BaseException:
            await asyncio.gather(*(shard.close() for shard in pool))
            raise
        meter = self.meter()
        meter.start()
        return pool, meter, self._profiled(name), time.time()

    def _shard_spec(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "host": self.target.host,
            "ports": self.target.client_ports,
            "grace": self.sizes.grace_s,
            **fields,
        }

    @staticmethod
    def _add_generator_cpu(resources: Resources, tallies: list[dict[str, Any]], pool: list[Shard]) -> float:
        """Generator processes' CPU joins the parent's (an inline shard's is already in it);
        the processes' CPU-seconds."""
        resources.generator_processes = len(pool) + (1 if len(pool) > 1 else 0)
        if not any(isinstance(shard, loadgen.ProcessShard) for shard in pool):
            return 0.0
        children = float(sum(t["cpu_s"] for t in tallies))
        resources.generator_cpu_s += children
        resources.other_cpu_s = max(0.0, resources.other_cpu_s - children)
        return children

    async def w1(self) -> WorkloadResult:
        s = self.sizes
        result = WorkloadResult("W1", f"W1 throughput: {s.w1_users} users in {s.w1_users // 2} DMs")
        dms = await self.ensure_dms(s.w1_users)
        duration = s.w1_seconds
        n = max(1, min(s.generators, len(dms)))
        specs = []
        for k in range(n):
            mine = dms[k::n]
            senders = [(user_data(a), room) for a, b, room in mine] + [
                (user_data(b), room) for a, b, room in mine
            ]
            specs.append(self._shard_spec("w1", senders=senders))
        pool, meter, profile, wall_start = await self._run_shards(specs, "W1")
        try:
            tallies = await asyncio.gather(*(shard.step({"go": wall_start + duration}) for shard in pool))
        finally:
            await asyncio.gather(*(shard.close() for shard in pool))
        if profile is not None:
            profile.stop()
        result.resources = meter.stop()
        shards_cpu = self._add_generator_cpu(result.resources, tallies, pool)
        wall_end = wall_start + duration

        acked = sum(len(t["acked"]) for t in tallies)
        acked_in_window = sum(t["acked_in_window"] for t in tallies)
        delivered_total = sum(len(t["delivered"]) for t in tallies)
        in_window = sum(1 for t in tallies for at in t["delivered"].values() if at <= wall_end)
        missing = {bid for t in tallies for bid in t["missing"]}
        latencies = [x for t in tallies for x in t["latencies"]]
        dups = sum(t["duplicates"] for t in tallies)
        errors = sum(t["send_errors"] for t in tallies)
        last_error = next((t["last_error"] for t in tallies if t["last_error"]), "")
        stats = [loadgen.stats_of(t) for t in tallies]
        gaps = sum(st.gaps for st in stats)
        sync_errors = sum(st.errors for st in stats)
        note = _lost_note(len(missing), errors + sync_errors, dups, gaps)
        result.metrics["w1.acked"] = Metric(acked_in_window / duration, "msg/s", True, note)
        result.metrics["w1.delivered"] = Metric(in_window / duration, "msg/s", True, note)
        result.metrics["w1.cpu"] = _cpu_per_message(result.resources, delivered_total)
        result.details = {
            "duration_s": duration,
            "senders": sum(len(spec["senders"]) for spec in specs),
            "generator_processes": result.resources.generator_processes,
            "generator_shards_cpu_s": shards_cpu,
            **_cpu_by_process(result.resources),
            "acked": acked,
            "acked_in_window": acked_in_window,
            "delivered_in_window": in_window,
            "delivered_total": delivered_total,
            "lost": len(missing),
            "duplicates": dups,
            "send_errors": errors,
            "sync_errors": sync_errors,
            "timeline_gaps": gaps,
            "sync_responses": sum(st.responses for st in stats),
            "latency_p50_ms": _ms(percentile(latencies, 50)),
            "latency_p99_ms": _ms(percentile(latencies, 99)),
        }
        trouble = [t for tally in tallies for t in tally.get("trouble", ())]
        if trouble:
            result.details["receivers_in_trouble"] = self._trouble_note(trouble, wall_start)
        self._problems(result, missing, errors, last_error, stats, dups)
        return result

    def _trouble_note(self, trouble: list[dict[str, Any]], wall_start: float) -> str:
        """One line per receiver that lost, gapped or waited: its room, the room's writer (by
        the workers' CRC-32 rule), the worker its syncs were on, when (s after the load began)."""
        writers = max(1, len(self.target.worker_pids or ()))
        parts = []
        for t in trouble:
            room = t["room"]
            writer = f"w{zlib.crc32(room.encode()) % writers + 1}"
            text = f"{t['receiver']} in {room} (writer {writer}, syncs on {t['worker'] or '?'})"
            if t["lost"]:
                text += f": {t['lost']} lost"
            for _room, at, worker, events in t["gapped"]:
                text += f"; gapped at {at - wall_start:.1f} s on {worker or '?'} ({events} events)"
            if t["slowest"]:
                latency, _room, at, bid = t["slowest"]
                text += f"; slowest {bid} {latency:.1f} s, arrived at {at - wall_start:.1f} s"
            parts.append(text)
        return " | ".join(parts)

    async def _drain(self, expected: set[str], delivered: dict[str, Any]) -> set[str]:
        """Wait (while deliveries still come in, up to grace_s) until every expected id arrived."""
        return await loadgen.drain(expected, delivered, self.sizes.grace_s)

    def _problems(
        self,
        result: WorkloadResult,
        missing: set[str] | int,
        errors: int,
        last_error: str,
        receivers: list[ReceiverStats],
        dups: int,
    ) -> None:
        lost = missing if isinstance(missing, int) else len(missing)
        if lost:
            example = "" if isinstance(missing, int) else f" (e.g. {sorted(missing)[:3]})"
            result.problems.append(f"{lost} acknowledged messages never reached the receiver's sync{example}")
        if errors:
            result.problems.append(f"{errors} send errors; last: {last_error}")
        sync_errors = [st for st in receivers if st.errors]
        if sync_errors:
            total = sum(st.errors for st in sync_errors)
            result.problems.append(f"{total} sync errors; last: {sync_errors[-1].last_error}")
        if dups:
            result.problems.append(f"{dups} messages delivered more than once")
        gaps = sum(st.gaps for st in receivers)
        if gaps:
            result.problems.append(f"{gaps} sync responses had a limited (gapped) timeline")

    # W2: latency at a fixed rate ----------------------------------------------------------------

    async def w2(self, rate: int, half_core: bool = False) -> WorkloadResult:
        s = self.sizes
        name, key = (f"W2@{rate} half core", f"w2h.{rate}") if half_core else (f"W2@{rate}", f"w2.{rate}")
        result = WorkloadResult(name, f"W2 latency: {s.w1_users} users, {rate} msg/s in total")
        squeeze = HalfCore(self.target.pid) if half_core and self.target.pid is not None else None
        dms = await self.ensure_dms(s.w1_users)
        senders = [(a, room) for a, b, room in dms] + [(b, room) for a, b, room in dms]
        duration = s.w2_seconds
        delivered: dict[str, float] = {}
        latencies: dict[str, float] = {}
        sent_wall: dict[str, float] = {}
        dups = 0

        def on_message(user: User) -> Callable[[str, str, dict[str, Any], float], None]:
            def handle(room_id: str, sender: str, content: dict[str, Any], now: float) -> None:
                nonlocal dups
                if sender == user.user_id:
                    return
                bid = content["bench_id"]
                if bid in delivered:
                    dups += 1
                    return
                delivered[bid] = now
                latencies[bid] = now - content["bench_ts"] / 1e6
                sent_wall[bid] = content["bench_ts"] / 1e6

            return handle

        receivers = await self._receivers([(u, [room]) for u, room in senders], on_message)
        acked: set[str] = set()
        ack_latencies: list[float] = []
        errors = 0
        last_error = ""
        lag_max = 0.0
        tasks: set[asyncio.Task[None]] = set()

        # At most this many sends in flight (connections); beyond it a send waits in the generator,
        # its clock already running (the time stamp is taken first). New connections during the
        # run would land in bursts on the server's listen backlog, so they are opened up front.
        connections = min(W2_MAX_CONNECTIONS, rate)
        in_flight = asyncio.Semaphore(connections)

        async def send_one(user: User, room: str, bid: str) -> None:
            nonlocal errors, last_error
            t0 = time.monotonic()
            content = message_content(bid)
            try:
                async with in_flight:
                    response = await self.mx.send(user, room, content)
            except (HttpError, TimeoutError) as e:
                errors += 1
                last_error = str(e) or type(e).__name__
                return
            if response.status == 200:
                acked.add(bid)
                ack_latencies.append(time.monotonic() - t0)
            else:
                errors += 1
                last_error = f"HTTP {response.status} {response.text()}"

        warmup_ms = await self._w2_warm_up(senders, rate, delivered, latencies)
        self.http.close_idle()
        await self.http.preconnect(connections)
        # Set-up (rooms, logins, initial syncs) is not the steady load the row measures: let the
        # server go idle first, so the work set-up left behind (its timer's GC passes over what
        # set-up built) is not charged to the first messages. The first sends are still measured.
        # PostgreSQL first checkpoints with WAL segments ready ahead, as one that has run a while.
        wal_prepared = prepare_wal() if self.target.db_pids is not None else None
        if self.target.pid is not None:
            await settle(self.target.pid, max_s=W2_SETTLE_MAX_S)
        if squeeze is not None:
            squeeze.start()
        stages_before = await self._scrape_stages()
        # The generator's own collector off during the load: a pass over its tens of thousands of
        # tasks and records (up to 64 ms seen at 1,000 msg/s) would stop its sends and receivers.
        gc.collect()
        gc.freeze()
        gc.disable()
        own_gc = GcPauses()  # so none, unless a library forces one
        cpu_wait = CpuWait({"server": self.target.pid}) if self.target.pid is not None else None
        if cpu_wait is not None:
            cpu_wait.start()
        checkpoints_before = checkpoint_counters() if self.target.db_pids is not None else None
        wal_before = wal_file_names() if wal_prepared is not None else None
        meter = self.meter()
        meter.start()
        profile = self._profiled("W2")
        total = int(rate * duration)
        interval = 1.0 / rate
        start = time.monotonic() + 0.05
        start_wall = time.time() + 0.05
        n = 0
        while n < total:
            now = time.monotonic()
            due = start + n * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            lag_max = max(lag_max, now - due)
            user, room = senders[n % len(senders)]
            task = asyncio.create_task(send_one(user, room, f"w2.{rate}.{n}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.gather(*list(tasks))
        missing = await self._drain(acked, delivered)
        result.resources = meter.stop()
        checkpoints_after = checkpoint_counters() if checkpoints_before is not None else None
        wal_after = wal_file_names() if wal_before is not None else None
        waited = cpu_wait.stop()["server"] if cpu_wait is not None else None
        gc.enable()
        gc.unfreeze()
        own_gc.stop()
        if squeeze is not None:
            squeeze.stop()
        if profile is not None:
            profile.stop()
        stages_after = await self._scrape_stages()
        await self._stop_receivers(receivers)
        self.http.close_idle()

        values = [latencies[b] for b in acked if b in latencies]
        gaps = sum(r.stats.gaps for r in receivers)
        sync_errors = sum(r.stats.errors for r in receivers)
        note = _lost_note(len(missing), errors + sync_errors, dups, gaps)
        result.metrics[f"{key}.p50"] = Metric(_ms(percentile(values, 50)), "ms", False, note)
        result.metrics[f"{key}.p99"] = Metric(_ms(percentile(values, 99)), "ms", False, note)
        result.metrics[f"{key}.max"] = Metric(_ms(max(values) if values else None), "ms", False, note)
        result.metrics[f"{key}.cpu"] = _cpu_per_message(result.resources, len(delivered))
        result.details = {
            "rate_offered": rate,
            "duration_s": duration,
            "scheduled": total,
            "acked": len(acked),
            "delivered": len(delivered),
            "lost": len(missing),
            "send_errors": errors,
            "sync_errors": sync_errors,
            "timeline_gaps": gaps,
            "duplicates": dups,
            "ack_p50_ms": _ms(percentile(ack_latencies, 50)),
            "ack_p99_ms": _ms(percentile(ack_latencies, 99)),
            "generator_max_lag_ms": lag_max * 1000,
            "connections": connections,
            # When the slowest messages were sent (s after the start) and how long they took (ms):
            # spikes at regular intervals point at a periodic job or a pause.
            "slowest": [
                (round(sent_wall[b] - start_wall, 2), round(latencies[b] * 1000))
                for b in sorted((b for b in acked if b in latencies), key=latencies.__getitem__)[-8:]
            ],
            "sync_responses": sum(r.stats.responses for r in receivers),
        }
        if checkpoints_before is not None and checkpoints_after is not None:
            # Cluster-wide (other databases' CREATE/DROP DATABASE force one too): a row that ran
            # beside a checkpoint commits slower (docs/latency.md).
            result.details["pg_checkpoints"] = {
                "completed": checkpoints_after[0] - checkpoints_before[0],
                "buffers_written": checkpoints_after[1] - checkpoints_before[1],
            }
        if wal_prepared is not None and wal_before is not None and wal_after is not None:
            # Segment files new in the row: with no checkpoint in it, each was created and
            # zero-filled while commits waited (docs/latency.md), as ready ones are renamed.
            result.details["pg_wal"] = {**wal_prepared, "new_files": len(wal_after - wal_before)}
        # The generator's own collector: its pauses delay sends and the receivers' clocks alike.
        result.details["generator_gc"] = own_gc.summary()
        result.details["warmup"] = warmup_ms
        if values:
            # How much of the tail the first second holds (a start-up cost, not the steady state):
            # the messages sent then that took longer than the run's p99, and the p99 without them.
            p99 = percentile(values, 99) or 0.0
            first = {b for b in acked if b in latencies and sent_wall[b] - start_wall < 1.0}
            result.details["first_second_over_p99"] = sum(1 for b in first if latencies[b] > p99)
            later = [latencies[b] for b in acked if b in latencies and b not in first]
            result.details["p99_after_first_second_ms"] = _ms(percentile(later, 99))
        if waited is not None:
            # The server's reactor thread ready to run but waiting for a CPU (other processes').
            result.details["server_cpu_wait_ms"] = {k: round(v) for k, v in waited.items()}
        if stages_before is not None and stages_after is not None:
            result.details["server_stages"] = server_stages.summarize(stages_before, stages_after)
        if lag_max > 0.1:
            result.problems.append(
                f"the generator fell up to {lag_max * 1000:.0f} ms behind its send schedule"
            )
        self._problems(result, missing, errors, last_error, [r.stats for r in receivers], dups)
        return result

    async def _w2_warm_up(
        self,
        senders: list[tuple[User, str]],
        rate: int,
        delivered: dict[str, float],
        latencies: dict[str, float],
    ) -> dict[str, Any]:
        """One message from each sender, one at a time, before W2's clock starts; not counted.

        W2 measures a steady load (issue 12: "at a steady 500 messages/s"). The first message
        a member receives in a room makes the server load that member's unread counts there
        from the database (core/unread.py: once per member and room, then kept in memory);
        at the rate's start that is a hundred queries at once, and the commits wait behind
        them (up to 100+ ms on this machine, and the first second then held most of the
        messages over the p99). Their latencies are reported here, beside the row."""
        ids = [f"w2warm.{rate}.{i}" for i in range(len(senders))]
        for (user, room), bid in zip(senders, ids, strict=True):
            await self.mx.send(user, room, message_content(bid))
        deadline = time.monotonic() + 30
        while any(b not in delivered for b in ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen = [latencies.pop(b) * 1000 for b in ids if b in latencies]
        for b in ids:
            delivered.pop(b, None)  # not in the row's counts (nor its CPU per message)
        return {"messages": len(ids), "delivered": len(seen), "max_ms": round(max(seen, default=0), 1)}

    # W3: fan-out ---------------------------------------------------------------------------------

    async def w3(self, sink: PushSink | None = None) -> WorkloadResult:
        """W3; with `sink`, every member first sets an http pusher to it (row prefix w3p)."""
        s = self.sizes
        key = "w3p" if sink else "w3"
        with_pushers = ", every member with a pusher" if sink else ""
        result = WorkloadResult(
            key.upper(),
            f"W3 fan-out: {s.w3_members} members, {s.w3_senders} senders x {s.w3_messages} messages"
            + with_pushers,
        )
        room = await self.ensure_big_room(s.w3_members)
        members = self.users[: s.w3_members]
        if sink is not None:
            self.log(f"    {len(members)} pushers")
            await gather_limited(
                [self.mx.set_pusher(u, sink.url) for u in members], self.sizes.setup_concurrency
            )
            sink.reset()
        self.log(f"    {len(members)} long-polls")
        senders = members[: s.w3_senders]
        n = max(1, min(s.generators, len(members)))
        specs = [
            self._shard_spec(
                "w3",
                room=room,
                members=[user_data(u) for u in members[k::n]],
                senders=[user_data(u) for u in senders[k::n]],
                messages=s.w3_messages,
            )
            for k in range(n)
        ]
        pool, meter, profile, first_send = await self._run_shards(specs, "W3")
        try:
            sent = await asyncio.gather(*(shard.step({"go": first_send}) for shard in pool))
            acked = [bid for part in sent for bid in part["acked"]]
            tallies = await asyncio.gather(*(shard.step({"expected": acked}) for shard in pool))
        finally:
            await asyncio.gather(*(shard.close() for shard in pool))
        if profile is not None:
            profile.stop()
        result.resources = meter.stop()
        shards_cpu = self._add_generator_cpu(result.resources, tallies, pool)

        count: dict[str, int] = {}
        last_at: dict[str, float] = {}
        sent_at: dict[str, float] = {}
        for t in tallies:
            for bid, c in t["count"].items():
                count[bid] = count.get(bid, 0) + c
            for bid, at in t["last_at"].items():
                last_at[bid] = max(at, last_at.get(bid, at))
            for bid, at in t["sent_at"].items():
                sent_at.setdefault(bid, at)
        deliveries = sum(t["deliveries"] for t in tallies)
        dups = sum(t["duplicates"] for t in tallies)
        errors = sum(part["send_errors"] for part in sent)
        last_error = next((part["last_error"] for part in sent if part["last_error"]), "")
        stats = [loadgen.stats_of(t) for t in tallies]
        n_members = len(members)
        complete = {bid: last_at[bid] - sent_at[bid] for bid in acked if count.get(bid, 0) >= n_members}
        expected = len(acked) * n_members
        missing = expected - sum(min(count.get(b, 0), n_members) for b in acked)
        span = (max(last_at.values()) - first_send) if last_at else 0.0
        values = list(complete.values())
        incomplete = len(acked) - len(complete)
        gaps = sum(st.gaps for st in stats)
        sync_errors = sum(st.errors for st in stats)
        note = _lost_note(0, errors + sync_errors, dups, gaps)
        if missing:
            note = ", ".join(x for x in (f"{missing} deliveries missing", note) if x)
        result.metrics[f"{key}.p50"] = Metric(_ms(percentile(values, 50)), "ms", False, note)
        result.metrics[f"{key}.p99"] = Metric(_ms(percentile(values, 99)), "ms", False, note)
        result.metrics[f"{key}.rate"] = Metric(
            deliveries / span if span > 0 else None, "deliveries/s", True, note
        )
        result.details = {
            "members": n_members,
            "generator_processes": result.resources.generator_processes,
            "generator_shards_cpu_s": shards_cpu,
            **_cpu_by_process(result.resources),
            "messages_acked": len(acked),
            "deliveries": deliveries,
            "deliveries_expected": expected,
            "missing_deliveries": missing,
            "messages_not_at_every_member": incomplete,
            "span_s": span,
            "send_errors": errors,
            "sync_errors": sync_errors,
            "timeline_gaps": gaps,
            "duplicates": dups,
            "sync_responses": sum(st.responses for st in stats),
        }
        if sink is not None:
            result.details["push_notifications"] = sink.notifications
            result.details["push_devices"] = sink.devices
            result.details["push_malformed"] = sink.malformed
            if sink.malformed:
                result.problems.append(f"{sink.malformed} malformed push notifications")
        if missing:
            result.problems.append(
                f"{missing} of {expected} deliveries missing after the wait "
                f"({incomplete} messages did not reach every member)"
            )
        self._problems(result, 0, errors, last_error, stats, dups)
        return result

    async def w3_with_pushers(self) -> WorkloadResult:
        sink = PushSink()
        await sink.start()
        try:
            return await self.w3(sink)
        finally:
            await sink.stop()

    # W4: idle connections --------------------------------------------------------------------------

    async def w4_sync(self) -> WorkloadResult:
        n = self.sizes.w4_syncs
        result = WorkloadResult("W4 sync", f"W4 idle: {n} long-poll /sync requests held open")
        pid = self.target.pid
        assert pid is not None
        users = await self.ensure_idle_users(n)
        await self._since_tokens(users)
        self.http.close_idle()
        await settle(pid)
        base = await steady_rss(pid)
        http = HttpClient(self.target.host, self.target.port)
        mx = Matrix(http)
        returned = 0
        errors = 0
        last_error = ""
        meter = self.meter()
        meter.start()
        t0 = time.monotonic()
        await http.preconnect(n)

        async def hold(user: User) -> None:
            nonlocal returned, errors, last_error
            since = self.sinces[user.user_id]
            while True:
                try:
                    response = await mx.sync(user, since, 300_000, EMPTY_FILTER)
                except (HttpError, TimeoutError) as e:
                    errors += 1
                    last_error = str(e) or type(e).__name__ or type(e).__name__
                    await asyncio.sleep(1)
                    continue
                returned += 1
                if response.status != 200:
                    errors += 1
                    last_error = f"HTTP {response.status} {response.text()}"
                    await asyncio.sleep(1)
                    continue
                since = json.loads(response.body)["next_batch"]

        tasks = [asyncio.create_task(hold(u)) for u in users]
        opened_s = time.monotonic() - t0
        await asyncio.sleep(2)
        await settle(pid, max_s=30)
        after = await steady_rss(pid)
        result.resources = meter.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        http.close()
        per_conn = (after - base) / n
        note = f"{errors} errors" if errors else ""
        result.metrics["w4.sync"] = Metric(per_conn / 1024, "KiB/conn", False, note)
        result.details = {
            "connections": n,
            "rss_before_mb": base / 2**20,
            "rss_after_mb": after / 2**20,
            "early_returns": returned,
            "errors": errors,
            "open_s": opened_s,
        }
        if errors:
            result.problems.append(f"{errors} errors holding long-polls; last: {last_error}")
        return result

    async def w4_ws(self, n: int) -> WorkloadResult:
        """`n` idle WebSocket streams at /_homeserver/ws (ours only), one device each."""
        import aiohttp

        result = WorkloadResult(f"W4 ws{n}", f"W4 idle: {n} WebSocket streams")
        pid = self.target.pid
        assert pid is not None
        users = await self.ensure_idle_users(self.sizes.w4_syncs)
        pairs = await self._tokens(users, n)
        await self._since_tokens(users[: min(n, len(users))])
        self.http.close_idle()
        await settle(pid)
        base = await steady_rss(pid)
        url = f"ws://{self.target.host}:{self.target.port}/_homeserver/ws"
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        session = aiohttp.ClientSession(connector=connector)
        frames = 0
        errors = 0
        last_error = ""
        readers: list[asyncio.Task[None]] = []
        sockets: list[Any] = []
        semaphore = asyncio.Semaphore(50)
        meter = self.meter()
        meter.start()
        t0 = time.monotonic()

        async def reader(ws: Any) -> None:
            nonlocal frames
            async for _ in ws:
                frames += 1

        async def open_one(user: User, token: str) -> None:
            nonlocal errors, last_error
            try:
                async with semaphore:
                    ws = await session.ws_connect(url, autoping=True, heartbeat=None, max_msg_size=0)
                    await ws.send_str(
                        json.dumps({"type": "auth", "token": token, "since": self.sinces[user.user_id]})
                    )
                    first = await ws.receive(timeout=60)
                if first.type != aiohttp.WSMsgType.TEXT or json.loads(first.data).get("type") != "ready":
                    errors += 1
                    last_error = f"first frame {first.type} {str(first.data)[:200]}"
                    await ws.close()
                    return
                sockets.append(ws)
                readers.append(asyncio.create_task(reader(ws)))
            except Exception as e:
                errors += 1
                last_error = f"{type(e).__name__}: {e}"

        await asyncio.gather(*(open_one(u, tok) for u, tok in pairs))
        opened_s = time.monotonic() - t0
        await asyncio.sleep(2)
        await settle(pid, max_s=30)
        after = await steady_rss(pid)
        open_count = sum(1 for ws in sockets if not ws.closed)
        result.resources = meter.stop()
        for task in readers:
            task.cancel()
        await session.close()
        await asyncio.gather(*readers, return_exceptions=True)
        per_conn = (after - base) / n
        note = f"{errors} failed" if errors else ""
        result.metrics[f"w4.ws{n}"] = Metric(per_conn / 1024, "KiB/conn", False, note)
        result.metrics[f"w4.ws{n}.added"] = Metric((after - base) / 2**20, "MB", False, note)
        result.metrics[f"w4.ws{n}.total"] = Metric(after / 2**20, "MB", False, note)
        result.details = {
            "streams": n,
            "open_at_measurement": open_count,
            "rss_before_mb": base / 2**20,
            "rss_after_mb": after / 2**20,
            "frames_received": frames,
            "errors": errors,
            "open_s": opened_s,
        }
        if errors:
            result.problems.append(f"{errors} of {n} streams failed to open; last: {last_error}")
        if open_count < n - errors:
            result.problems.append(f"only {open_count} streams were still open when measured")
        return result

    # W5: initial sync --------------------------------------------------------------------------------

    async def w5(self) -> WorkloadResult:
        s = self.sizes
        result = WorkloadResult(
            "W5", f"W5 initial sync: one user in {s.w5_rooms} rooms x {s.w5_messages} messages"
        )
        user = await self.target.register(self.mx, "bench_w5", -1)
        t0 = time.monotonic()

        async def fill(i: int) -> str:
            room = await self.mx.create_room(user, {"preset": "private_chat", "name": f"bench room {i}"})
            for seq in range(s.w5_messages):
                response = await self.mx.send(user, room, message_content(f"w5.{i}.{seq}"))
                if response.status != 200:
                    raise MatrixCallError("send (W5 setup)", response)
            return room

        rooms = await gather_limited((fill(i) for i in range(s.w5_rooms)), s.setup_concurrency)
        fill_s = time.monotonic() - t0
        self.log(f"    filled {len(rooms)} rooms in {fill_s:.1f}s")
        if self.target.pid is not None:
            await settle(self.target.pid, max_s=20)
        times: list[float] = []
        sizes: list[int] = []
        meter = self.meter()
        meter.start()
        seen_rooms = 0
        events = 0
        for _ in range(s.w5_repeats):
            t = time.monotonic()
            response = await self.mx.sync(user, None, 0, None)
            times.append(time.monotonic() - t)
            if response.status != 200:
                raise MatrixCallError("initial sync", response)
            sizes.append(len(response.body))
            joined = response.json()["rooms"]["join"]
            seen_rooms = len(joined)
            events = sum(len((r.get("timeline") or {}).get("events", ())) for r in joined.values())
        incremental = await self._w5_incremental_sync(user, rooms)
        sliding, sliding_details = await self._w5_sliding_sync(user, rooms, result)
        result.resources = meter.stop()
        result.metrics.update(incremental)
        result.metrics.update(sliding)
        result.metrics["w5.first"] = Metric(_ms(times[0]), "ms", False)
        result.metrics["w5.time"] = Metric(_ms(statistics.median(times)), "ms", False)
        result.metrics["w5.bytes"] = Metric(statistics.median(sizes) / 1024, "KiB", False)
        result.details = {
            "rooms": len(rooms),
            "rooms_in_response": seen_rooms,
            "timeline_events_in_response": events,
            "times_ms": [round(t * 1000, 1) for t in times],
            "bytes": sizes,
            "setup_fill_s": fill_s,
            "setup_msgs_per_s": s.w5_rooms * s.w5_messages / fill_s if fill_s else None,
            **sliding_details,
        }
        if seen_rooms != len(rooms):
            result.problems.append(f"initial sync listed {seen_rooms} joined rooms, expected {len(rooms)}")
        return result

    async def _w5_incremental_sync(self, user: User, rooms: list[str]) -> dict[str, Metric]:
        """/sync from a token after one new message in one of the rooms (not a long-poll's wake-up:
        the client asks after the message, so it is answered at once)."""
        times = []
        since = await self.mx.since_token(user)
        for i in range(self.sizes.w5_repeats):
            response = await self.mx.send(user, rooms[i % len(rooms)], message_content(f"w5.incr.{i}"))
            if response.status != 200:
                raise MatrixCallError("send (W5 incremental)", response)
            t = time.monotonic()
            response = await self.mx.sync(user, since, 0, None)
            times.append(time.monotonic() - t)
            if response.status != 200:
                raise MatrixCallError("incremental sync", response)
            since = str(response.json()["next_batch"])
        return {"w5.incr": Metric(_ms(statistics.median(times)), "ms", False)}

    async def _w5_sliding_sync(
        self, user: User, rooms: list[str], result: WorkloadResult
    ) -> tuple[dict[str, Metric], dict[str, Any]]:
        """Simplified sliding sync (MSC4186) of the same user: initial (every room in one window,
        the /sync default timeline limit of 10) and incremental after one new message."""
        body = sliding_sync_body(len(rooms), 10)
        times: list[float] = []
        sizes: list[int] = []
        pos = None
        for _ in range(self.sizes.w5_repeats):
            t = time.monotonic()
            response = await self.mx.sliding_sync(user, body)
            times.append(time.monotonic() - t)
            if response.status == 404:
                result.problems.append(
                    "the server has no simplified sliding sync (404): no sliding-sync rows"
                )
                return {}, {}
            if response.status != 200:
                raise MatrixCallError("initial sliding sync", response)
            sizes.append(len(response.body))
            answer = response.json()
            pos = answer["pos"]
            if len(answer["rooms"]) != len(rooms):
                result.problems.append(
                    f"sliding sync sent {len(answer['rooms'])} rooms, expected {len(rooms)}"
                )
        incremental: list[float] = []
        for i in range(self.sizes.w5_repeats):
            response = await self.mx.send(user, rooms[i % len(rooms)], message_content(f"w5.ss.{i}"))
            if response.status != 200:
                raise MatrixCallError("send (W5 sliding sync)", response)
            t = time.monotonic()
            response = await self.mx.sliding_sync(user, body, pos)
            incremental.append(time.monotonic() - t)
            if response.status != 200:
                raise MatrixCallError("incremental sliding sync", response)
            pos = response.json()["pos"]
        details = {
            "times_ms": [round(t * 1000, 1) for t in times],
            "incremental_ms": [round(t * 1000, 1) for t in incremental],
            "bytes": sizes,
        }
        return {
            "w5.ss.first": Metric(_ms(times[0]), "ms", False),
            "w5.ss.time": Metric(_ms(statistics.median(times)), "ms", False),
            "w5.ss.bytes": Metric(statistics.median(sizes) / 1024, "KiB", False),
            "w5.ss.incr": Metric(_ms(statistics.median(incremental)), "ms", False),
        }, {"sliding_sync": details}

    # W6: joining a large room ---------------------------------------------------------------------------

    async def w6(self) -> WorkloadResult:
        s = self.sizes
        result = WorkloadResult("W6", f"W6 join: a room with {s.w6_members} members")
        t0 = time.monotonic()
        room = await self.ensure_big_room(s.w6_members)
        fill_s = time.monotonic() - t0
        self.log(f"    room has {self.big_room_members} members ({fill_s:.1f}s to fill)")
        joiners = self.users[s.w6_members : s.w6_members + s.w6_joins]
        if self.target.pid is not None:
            await settle(self.target.pid, max_s=20)
        times: list[float] = []
        meter = self.meter()
        meter.start()
        for user in joiners:
            t = time.monotonic()
            await self.mx.join(user, room)
            times.append(time.monotonic() - t)
        result.resources = meter.stop()
        self.big_room_members += len(joiners)
        result.metrics["w6.time"] = Metric(_ms(statistics.median(times)), "ms", False)
        result.details = {
            "members_before": s.w6_members,
            "join_times_ms": [round(t * 1000, 1) for t in times],
            "setup_fill_s": fill_s,
        }
        return result

    # SR: full-text search over one room of many messages --------------------------------------------

    async def sr(self) -> WorkloadResult:
        s = self.sizes
        result = WorkloadResult("SR", f"SR search: one room of {s.sr_messages} messages, 1 in 20 a hit")
        user = await self.target.register(self.mx, "bench_sr", -1)
        room = await self.mx.create_room(user, {"preset": "private_chat", "name": "bench search"})
        t0 = time.monotonic()
        for i in range(s.sr_messages):
            word = "quarterly" if i % 20 == 0 else "weekly"
            content = {"msgtype": "m.text", "body": f"status report {i}: the {word} numbers look fine"}
            response = await self.mx.send(user, room, content)
            if response.status != 200:
                raise MatrixCallError("send (SR setup)", response)
        fill_s = time.monotonic() - t0
        expected = len(range(0, s.sr_messages, 20))

        async def search(order_by: str, limit: int | None = None, since: str | None = None) -> dict[str, Any]:
            room_events: dict[str, Any] = {"search_term": "quarterly", "order_by": order_by}
            if limit is not None:
                room_events["filter"] = {"limit": limit}
            path = f"{CLIENT}/search" + (f"?next_batch={quote(since)}" if since else "")
            body = {"search_categories": {"room_events": room_events}}
            found = await self.mx.call("POST", path, body, user.token, "search")
            return dict(found["search_categories"]["room_events"])

        async def all_hits(order_by: str) -> int:
            """Every hit, page after page: `count` is optional, and ours gives it only when one
            page holds every match the user may see (a count would tell a member who left how
            many later messages match)."""
            total, since = 0, None
            while total <= expected:
                page = await search(order_by, 50, since)
                total += len(page.get("results", []))
                since = page.get("next_batch")
                if not since:
                    break
            return total

        # Until the server has indexed everything (ours indexes just after each commit).
        deadline = time.monotonic() + 60
        while await all_hits("recent") != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.target.pid is not None:
            await settle(self.target.pid, max_s=20)
        meter = self.meter()
        meter.start()
        times: dict[str, list[float]] = {"rank": [], "recent": []}
        counts = {}
        for _ in range(s.sr_repeats):
            for order_by, spent in times.items():
                t = time.monotonic()
                found = await search(order_by)
                spent.append(time.monotonic() - t)
                counts[order_by] = (found.get("count"), len(found.get("results", [])))
        hits = {order_by: await all_hits(order_by) for order_by in times}
        result.resources = meter.stop()
        for order_by, spent in times.items():
            result.metrics[f"sr.{order_by}"] = Metric(_ms(statistics.median(spent)), "ms", False)
        result.details = {
            "setup_fill_s": fill_s,
            "times_ms": {k: [round(t * 1000, 1) for t in v] for k, v in times.items()},
            "count_and_page": counts,
            "hits_by_paging": hits,
        }
        for order_by, (count, page) in counts.items():
            if hits[order_by] != expected or count not in (None, expected) or page != min(10, expected):
                result.problems.append(
                    f"{order_by}: {hits[order_by]} hits by paging, count {count}, page {page};"
                    f" expected {expected} hits"
                )
        return result


def resources_of(result: WorkloadResult) -> Resources | None:
    return result.resources
