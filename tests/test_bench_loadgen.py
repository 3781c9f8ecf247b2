"""The load generator counts right: against a fake homeserver that loses, duplicates and refuses
messages on purpose, and for a few seconds against the real server. No timing is asserted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import pytest
from aiohttp import web
from workers_harness import PrivatePostgres, haproxy_binary, system_binary

from bench import half_core
from bench.httpclient import HttpClient
from bench.matrix import Matrix
from bench.servers import Target, prepare_wal, wal_file_names
from bench.stats import percentile
from bench.workloads import Runner, Sizes

T = TypeVar("T")


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """asyncio.run in its own thread: the test process may have a reactor on this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=120)  # type: ignore[arg-type]


class FakeHomeserver:
    """Register, createRoom, join, send and long-poll /sync, in memory, with faults on request.

    `drop`: (receiver user id, bench_id) pairs never shown to that receiver.
    `duplicate`: bench_ids sent twice in the same sync response (to every receiver but the sender).
    `fail`: bench_ids whose send is answered 500 (and not stored); by id, not by count, so
    which message fails does not depend on how the senders interleave on a busy machine.
    Sync responses are chunked, to exercise that path of the HTTP client.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.members: dict[str, set[str]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.drop: set[tuple[str, str]] = set()
        self.duplicate: set[str] = set()
        self.fail: set[str] = set()
        self.sends = 0
        self.stored = 0
        self.failed = 0
        self.dropped_seen = 0
        self.duplicated_sent = 0

    def app(self) -> web.Application:
        app = web.Application()
        base = "/_matrix/client/v3"
        app.router.add_get("/_matrix/client/versions", self.versions)
        app.router.add_post(f"{base}/register", self.register)
        app.router.add_post(f"{base}/createRoom", self.create_room)
        app.router.add_post(base + "/join/{room}", self.join)
        app.router.add_put(base + "/rooms/{room}/send/{type}/{txn}", self.send)
        app.router.add_get(f"{base}/sync", self.sync)
        app.router.add_post(base + "/user/{user}/filter", self.upload_filter)
        return app

    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1.11"]})

    def _user(self, request: web.Request) -> str:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            raise web.HTTPUnauthorized()
        return self.tokens[token]

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        user_id = f"@{body['username']}:fake"
        token = f"tok-{body['username']}"
        self.tokens[token] = user_id
        return web.json_response({"user_id": user_id, "access_token": token, "device_id": "DEV"})

    async def upload_filter(self, request: web.Request) -> web.Response:
        self._user(request)
        return web.json_response({"filter_id": "7"})

    async def create_room(self, request: web.Request) -> web.Response:
        user = self._user(request)
        room_id = f"!r{len(self.members)}:fake"
        self.members[room_id] = {user}
        return web.json_response({"room_id": room_id})

    async def join(self, request: web.Request) -> web.Response:
        user = self._user(request)
        self.members[request.match_info["room"]].add(user)
        return web.json_response({"room_id": request.match_info["room"]})

    async def send(self, request: web.Request) -> web.Response:
        user = self._user(request)
        self.sends += 1
        room = request.match_info["room"]
        content = await request.json()
        if content.get("bench_id") in self.fail:
            self.failed += 1
            return web.json_response({"errcode": "M_UNKNOWN", "error": "injected"}, status=500)
        event = {"type": "m.room.message", "sender": user, "content": content, "event_id": f"$e{self.stored}"}
        self.stored += 1
        self.events.append((len(self.events) + 1, room, event))
        self.changed.set()
        self.changed = asyncio.Event()
        return web.json_response({"event_id": event["event_id"]})

    async def sync(self, request: web.Request) -> web.StreamResponse:
        user = self._user(request)
        since = request.query.get("since")
        timeout = int(request.query.get("timeout", "0")) / 1000
        rooms: dict[str, Any] = {}
        if since is not None:
            after = int(since)
            if len(self.events) <= after and timeout:
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout)
                except TimeoutError:
                    pass
            for _pos, room, event in self.events[after:]:
                if user not in self.members[room]:
                    continue
                bench_id = event["content"]["bench_id"]
                if (user, bench_id) in self.drop:
                    self.dropped_seen += 1
                    continue
                timeline = rooms.setdefault(room, {"timeline": {"events": [], "limited": False}})
                timeline["timeline"]["events"].append(event)
                if bench_id in self.duplicate and event["sender"] != user:
                    self.duplicated_sent += 1
                    timeline["timeline"]["events"].append(event)
        body = json.dumps({"next_batch": str(len(self.events)), "rooms": {"join": rooms}}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            # Two chunks, so the client has to join them.
            await response.write(body[: len(body) // 2])
            await response.write(body[len(body) // 2 :])
            await response.write_eof()
        except ConnectionResetError:
            pass  # a long-poll the generator stopped
        return response


async def _with_fake(fake: FakeHomeserver, body: Callable[[Target, Runner], Awaitable[T]], sizes: Sizes) -> T:
    runner_app = web.AppRunner(fake.app(), handler_cancellation=True, shutdown_timeout=1)
    await runner_app.setup()
    site = web.TCPSite(runner_app, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    target = Target("fake", "fake", "127.0.0.1", port)
    runner = Runner(target, sizes, lambda _: None)
    try:
        await runner.setup_users(sizes.pool_size())
        return await body(target, runner)
    finally:
        runner.close()
        await runner_app.cleanup()


def tiny_sizes() -> Sizes:
    return Sizes(
        w1_users=4,
        w1_seconds=1.0,
        w2_rates=[40],
        w2_rates_ours=[40],
        w2_seconds=1.0,
        w3_members=6,
        w3_senders=2,
        w3_messages=3,
        w4_syncs=4,
        w4_ws=[],
        w6_members=6,
        w6_joins=1,
        sr_messages=40,
        sr_repeats=2,
        grace_s=1.5,
        generators=1,
    )


def test_w1_counts_acks_losses_duplicates_and_errors() -> None:
    fake = FakeHomeserver()
    # Users 0 and 1 share the first DM: user 1 never sees user 0's 2nd message; user 0 sees
    # user 1's 1st twice; the first sends of users 2 and 3 fail. Early messages only: under
    # load a sender may get through few sends in the one-second window.
    fake.drop = {("@bench1:fake", "w1.0.1")}
    fake.duplicate = {"w1.1.0"}
    fake.fail = {"w1.2.0", "w1.3.0"}

    async def body(target: Target, runner: Runner) -> Any:
        return await runner.w1()

    result = run_async(lambda: _with_fake(fake, body, tiny_sizes()))
    d = result.details
    assert fake.dropped_seen >= 1 and fake.duplicated_sent >= 1
    assert d["acked"] == fake.stored
    assert d["send_errors"] == fake.failed == 2
    assert d["lost"] == 1
    assert d["duplicates"] == fake.duplicated_sent
    assert d["delivered_total"] == fake.stored - 1
    assert d["acked_in_window"] <= d["acked"]
    assert result.metrics["w1.acked"].value == pytest.approx(d["acked_in_window"] / d["duration_s"])
    assert result.metrics["w1.delivered"].value == pytest.approx(d["delivered_in_window"] / d["duration_s"])
    assert "1 lost" in result.metrics["w1.delivered"].note
    assert any("never reached" in p for p in result.problems)


def test_w2_sends_on_schedule_and_measures_every_message() -> None:
    fake = FakeHomeserver()

    async def body(target: Target, runner: Runner) -> Any:
        return await runner.w2(40)

    result = run_async(lambda: _with_fake(fake, body, tiny_sizes()))
    d = result.details
    assert d["scheduled"] == 40 == d["acked"] == d["delivered"]
    # Before the clock, one warm-up message per sender: delivered, and counted apart.
    warmup = d["warmup"]
    assert warmup["messages"] == warmup["delivered"] > 0
    assert fake.stored == 40 + warmup["messages"]
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["send_errors"] == 0
    p50, p99, top = (result.metrics[f"w2.40.{q}"].value for q in ("p50", "p99", "max"))
    assert p50 is not None and p99 is not None and top is not None
    assert 0 <= p50 <= p99 <= top
    assert result.problems == [] or all("behind its send schedule" in p for p in result.problems)


def test_w3_counts_every_member_delivery() -> None:
    fake = FakeHomeserver()
    fake.drop = {("@bench5:fake", "w3.0.1")}

    async def body(target: Target, runner: Runner) -> Any:
        return await runner.w3()

    result = run_async(lambda: _with_fake(fake, body, tiny_sizes()))
    d = result.details
    assert d["messages_acked"] == 6 == fake.stored
    assert d["deliveries_expected"] == 6 * 6
    assert d["deliveries"] == 6 * 6 - 1
    assert d["missing_deliveries"] == 1
    assert d["messages_not_at_every_member"] == 1
    assert result.metrics["w3.rate"].value is not None


def test_http_client_reuses_connections_and_reads_chunked_bodies() -> None:
    fake = FakeHomeserver()

    async def main() -> tuple[int, int, Any]:
        runner_app = web.AppRunner(fake.app(), handler_cancellation=True, shutdown_timeout=1)
        await runner_app.setup()
        site = web.TCPSite(runner_app, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        http = HttpClient("127.0.0.1", port)
        try:
            mx = Matrix(http)
            reg = await mx.call("POST", "/_matrix/client/v3/register", {"username": "a", "password": "x"})
            for _ in range(20):
                response = await http.request(
                    "GET", "/_matrix/client/v3/sync?since=0", token=reg["access_token"]
                )
                assert response.status == 200
            return http.connections_opened, http.requests, response.json()
        finally:
            http.close()
            await runner_app.cleanup()

    opened, requests, body = run_async(main)
    assert opened == 1 and requests == 21
    assert body == {"next_batch": "0", "rooms": {"join": {}}}


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 50) is None


def test_against_our_server_for_a_few_seconds(start_server: Callable[..., Any]) -> None:
    """W1, W3 and SR with tiny numbers against the real server: nothing lost, duplicated or
    refused; search finds every hit."""
    server = start_server({"rate_limits": {"enabled": False}, "logging": {"access_log": False}})
    sizes = tiny_sizes()

    async def main() -> tuple[Any, Any, Any]:
        target = Target("ours", "ours", "127.0.0.1", server.port, process=server.process, is_ours=True)
        runner = Runner(target, sizes, lambda _: None)
        try:
            await runner.setup_users(sizes.pool_size())
            return await runner.w1(), await runner.w3(), await runner.sr()
        finally:
            runner.close()

    w1, w3, sr = run_async(main)
    assert sr.problems == [] and sr.details["count_and_page"]["rank"] == (2, 2)
    assert sr.metrics["sr.rank"].value is not None
    assert w1.details["acked"] > 0
    assert w1.details["lost"] == 0 and w1.details["duplicates"] == 0, w1.problems
    assert w1.details["send_errors"] == 0 and w1.details["sync_errors"] == 0, w1.problems
    assert w1.details["delivered_total"] == w1.details["acked"]
    assert w3.details["deliveries"] == w3.details["deliveries_expected"] == 6 * 6, w3.problems
    assert w1.resources is not None and w1.resources.server_cpu_s >= 0


def test_a_second_benchmark_run_is_refused_while_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.cli

    monkeypatch.setattr(bench.cli, "WORK_DIR", tmp_path)
    first = bench.cli.hold_run_lock()
    with pytest.raises(SystemExit, match=f"running \\(pid {os.getpid()}\\)"):
        bench.cli.hold_run_lock()
    first.close()  # the first run ends: the next one may start
    bench.cli.hold_run_lock().close()


def test_half_core_pins_the_server_beside_a_busy_loop_and_then_restores_it() -> None:
    if not half_core.available():
        pytest.skip("needs two cores and sched_setaffinity")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{server.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        threads = [int(t) for t in os.listdir(f"/proc/{server.pid}/task")]
        before = os.sched_getaffinity(server.pid)
        assert len(threads) == 2 and len(before) >= 2

        squeeze = half_core.HalfCore(server.pid)
        squeeze.start()
        hog = squeeze.hog
        assert hog is not None
        assert all(os.sched_getaffinity(t) == {half_core.CORE} for t in threads)
        # Pinned before it runs a line (preexec_fn): set by the time Popen returned, no wait.
        assert hog.poll() is None and os.sched_getaffinity(hog.pid) == {half_core.CORE}

        squeeze.stop()
        assert hog.poll() is not None
        assert all(os.sched_getaffinity(t) == before for t in threads)
    finally:
        server.kill()
        server.wait()


def test_w2_on_half_a_core_reports_its_own_rows() -> None:
    fake = FakeHomeserver()

    async def body(target: Target, runner: Runner) -> Any:
        return await runner.w2(40, half_core=True)  # the fake has no pid: nothing is pinned

    result = run_async(lambda: _with_fake(fake, body, tiny_sizes()))
    assert result.name == "W2@40 half core"
    assert set(result.metrics) == {"w2h.40.p50", "w2h.40.p99", "w2h.40.max", "w2h.40.cpu"}
    assert result.details["acked"] == 40


def test_w1_from_two_generator_processes_counts_the_same_faults() -> None:
    """The load split over two `python -m bench.loadgen` processes (a DM each): the merged
    tallies count every ack, loss, duplicate and error, and the generator's CPU includes theirs."""
    fake = FakeHomeserver()
    fake.drop = {("@bench1:fake", "w1.0.1")}
    fake.duplicate = {"w1.3.0"}
    fake.fail = {"w1.2.0"}
    sizes = tiny_sizes()
    sizes.generators = 2

    async def body(target: Target, runner: Runner) -> Any:
        return await runner.w1()

    result = run_async(lambda: _with_fake(fake, body, sizes))
    d = result.details
    assert d["generator_processes"] == 3  # the bench's own and two shards
    assert d["acked"] == fake.stored
    assert d["send_errors"] == fake.failed == 1
    assert d["lost"] == 1
    assert d["duplicates"] == fake.duplicated_sent >= 1
    assert d["delivered_total"] == fake.stored - 1
    assert result.resources is not None
    assert result.resources.generator_processes == 3
    # The shards' own CPU (they sent and synced for a second) is counted in the generator's.
    assert d["generator_shards_cpu_s"] > 0
    assert result.resources.generator_cpu_s >= d["generator_shards_cpu_s"]


def test_w3_from_two_generator_processes_waits_for_every_member() -> None:
    fake = FakeHomeserver()
    fake.drop = {("@bench5:fake", "w3.0.1")}
    sizes = tiny_sizes()
    sizes.generators = 2

    async def body(target: Target, runner: Runner) -> Any:
        return await runner.w3()

    result = run_async(lambda: _with_fake(fake, body, sizes))
    d = result.details
    assert d["generator_processes"] == 3
    assert d["messages_acked"] == 6 == fake.stored
    assert d["deliveries"] == 6 * 6 - 1
    assert d["missing_deliveries"] == 1
    assert d["messages_not_at_every_member"] == 1


def test_a_generator_process_that_dies_fails_the_workload_instead_of_hanging() -> None:
    """A shard whose spec it cannot run exits; the parent raises instead of waiting forever."""
    from bench.loadgen import ProcessShard

    async def main() -> str:
        shard = ProcessShard()
        try:
            await shard.start({"kind": "no-such-workload"})
        except RuntimeError as e:
            return str(e)
        finally:
            await shard.close()
        return "no error"

    assert "exited with code" in run_async(main)


def test_scale_out_rows_run_through_haproxy_from_two_generator_processes(tmp_path: Path) -> None:
    """The scale-out plumbing end to end, tiny: ours on PostgreSQL as two worker processes (one
    while this checkout cannot run several event writers) behind HAProxy, W1 and W3 from two generator
    processes: nothing lost, duplicated or refused; every process's CPU is counted."""
    from bench.servers import drop_database, start_ours_workers, workers_supported

    haproxy_binary()  # these two installed with apt-get when missing
    system_binary("redis-server", "redis-server")
    instances = 2 if workers_supported() else 1
    database = f"bench_test_{os.getpid()}_{secrets.token_hex(4)}"
    sizes = tiny_sizes()
    sizes.generators = 2

    async def main() -> tuple[Any, Any, Target]:
        target = await start_ours_workers(instances, workdir=tmp_path / "workers", database=database)
        runner = Runner(target, sizes, lambda _: None)
        try:
            await runner.setup_users(sizes.pool_size(["W1", "W3"]))
            return await runner.w1(), await runner.w3(), target
        finally:
            runner.close()
            target.stop()

    try:
        w1, w3, target = run_async(main)
    finally:
        drop_database(database)
    # The balancer, and with two instances Redis and the second worker, are the server's too.
    assert len(target.more_pids) == (1 if instances == 1 else 3)
    assert w1.details["generator_processes"] == 3 == w3.details["generator_processes"]
    assert w1.details["acked"] > 0
    assert w1.details["lost"] == 0 and w1.details["duplicates"] == 0, w1.problems
    assert w1.details["send_errors"] == 0 and w1.details["sync_errors"] == 0, w1.problems
    assert w1.details["delivered_total"] == w1.details["acked"]
    assert w3.details["deliveries"] == w3.details["deliveries_expected"] == 6 * 6, w3.problems
    assert w1.resources is not None and w1.resources.server_cpu_s > 0


def _write_into_next_segments(url: str, count: int) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for _ in range(count):
                cur.execute("SELECT pg_logical_emit_message(false, 'test', 'wal')")
                cur.execute("SELECT pg_switch_wal()")
    finally:
        conn.close()


def test_latency_rows_start_with_wal_segments_ready_ahead() -> None:
    """On a fresh cluster every next 16 MB WAL segment is created and zero-filled while commits
    wait (30-110 ms each on this VM). A W2 row starts after prepare_wal: the WAL it writes then
    goes into segments renamed ahead of time, and no file is created during the row."""
    postgres = PrivatePostgres()
    try:
        before = wal_file_names(postgres.url)
        assert before is not None
        _write_into_next_segments(postgres.url, 2)
        created = wal_file_names(postgres.url)
        assert created is not None and created - before, "a fresh cluster creates segments"

        prepared = prepare_wal(ready=4, url=postgres.url)
        assert prepared is not None and prepared["ready_before"] < 4 and prepared["ready"] >= 4
        before = wal_file_names(postgres.url)
        assert before is not None
        _write_into_next_segments(postgres.url, 3)
        after = wal_file_names(postgres.url)
        assert after is not None
        assert after - before == set(), "a segment was created after prepare_wal"
    finally:
        postgres.close()


def test_results_say_how_fast_the_databases_disk_flushes(tmp_path: Path) -> None:
    # W2's tail sits on this floor (docs/latency.md): a results file from another VM is only
    # comparable with it. 50 real flushes of the disk tmp_path is on.
    from bench import fsync_probe, report

    fsync = fsync_probe.summary(str(tmp_path / "probe.tmp"), rate=500, seconds=0.1)
    assert fsync is not None and fsync["flushes"] == 50
    assert 0 < fsync["p50_ms"] <= fsync["p99_ms"]
    assert not (tmp_path / "probe.tmp").exists()
    assert fsync_probe.summary(str(tmp_path / "missing" / "probe.tmp")) is None
    section = report.machine_section({"fsync": fsync})
    assert f"p99 {fsync['p99_ms']:.2f} ms" in section and "50 flushes" in section
    assert "PostgreSQL's disk" not in report.machine_section({"fsync": None})
