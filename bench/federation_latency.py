"""Federation speed: send → remote sync latency, and joining a 1,000-member remote room.

    make bench-federation   (also the last part of `make bench`), or
    .venv/bin/python -m bench.federation_latency [--rate 20] [--synapse-receive-rate 5]
        [--seconds 30] [--members 1000] [--joins 1] [--pairs ours-ours,ours-synapse,synapse-ours]

Writes bench/results/DATE-federation.md (the table, with the machine's load average).

Two of our servers (SQLite) and one Synapse (the bench's PyPI pin, SQLite), each with its TLS
federation listener on loopback and trusting a throw-away CA: the federation tests' own
set-up (tests/federation_harness.py, tests/synapse.py), so what is measured is what the tests
show working.

Latency, per pair "A→B": a public room made on A, a user of B joins it over federation; B's
user long-polls `/sync` (a filter on that room's timeline) in a thread while A's user sends at
a steady rate. Each message carries its id; latency = the moment B's /sync returned it minus
the moment A's send was started (one process, one monotonic clock); also from the moment
A answered the send (what federation adds to A's own send).

Join: a public room on A with N members (N users registered on A joining it, 16 at a time
through the client API: the same path a real room grows by, only faster), then one user of
B joins it by room id with `server_name=A`; the figure is that `POST /join` round trip (make_join,
send_join with the room's whole state and auth chain, B storing it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from bench.cpu_wait import CpuWait

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import synapse as synapse_harness  # noqa: E402
from federation_harness import make_ca, start_federated_server  # noqa: E402

CLIENT = "/_matrix/client/v3"
PASSWORD = "correct horse battery"
UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


class Client:
    """One user on one server through the client API (its own keep-alive session)."""

    def __init__(self, base: str, user_id: str, token: str) -> None:
        self.base, self.user_id = base.rstrip("/"), user_id
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        r = self.session.request(method, f"{self.base}{CLIENT}{path}", json=body, params=params, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path} on {self.base}: {r.status_code} {r.text[:300]}")
        answer: Any = r.json()
        return answer


class Server:
    def __init__(
        self, label: str, base: str, server_name: str, register: Callable[[str], Client], pid: int
    ) -> None:
        self.label, self.base, self.server_name, self.register = label, base, server_name, register
        self.pid = pid


def ours(tmp: Path, ca: Any, name: str) -> tuple[Server, Any]:
    overrides = {
        "rate_limits": {"enabled": False},
        "logging": {"access_log": bool(os.environ.get("FEDBENCH_ACCESS_LOG"))},
        "plugins": [],
    }
    hs = start_federated_server(tmp / name, ca, overrides)

    def register(localpart: str) -> Client:
        body = {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        r = requests.post(hs.process.url(f"{CLIENT}/register"), json=body, timeout=60)
        r.raise_for_status()
        return Client(hs.process.url(""), r.json()["user_id"], r.json()["access_token"])

    return Server(f"ours ({name})", hs.process.url(""), hs.server_name, register, hs.process.process.pid), hs


def synapse(tmp: Path, ca: Any) -> tuple[Server, Any]:
    # The tests' Synapse config, with the client-side rate limits out of the way of 20 msg/s
    # from one user and 1,000 joins to one room.
    original = synapse_harness.synapse_federation_config

    def config(*args: Any) -> dict[str, Any]:
        out: dict[str, Any] = original(*args)
        for key in ("rc_message", "rc_registration", "rc_joins_per_room", "rc_invites"):
            out[key] = UNLIMITED
        out["rc_joins"] = {"local": UNLIMITED, "remote": UNLIMITED}
        return out

    synapse_harness.synapse_federation_config = config  # type: ignore[assignment]
    try:
        syn = synapse_harness.start_synapse(tmp / "synapse", ca)
    finally:
        synapse_harness.synapse_federation_config = original  # type: ignore[assignment]

    def register(localpart: str) -> Client:
        result = syn.register(localpart)
        return Client(syn.url(""), result["user_id"], result["access_token"])

    return Server("Synapse", syn.url(""), syn.server_name, register, syn.process.pid), syn


def join_remote(user: Client, room_id: str, via: str) -> float:
    t0 = time.perf_counter()
    user.call("POST", f"/join/{quote(room_id)}", {}, server_name=via)
    return time.perf_counter() - t0


def latency(sender_server: Server, receiver_server: Server, rate: float, seconds: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    sender = sender_server.register(f"lat_s_{tag}")
    receiver = receiver_server.register(f"lat_r_{tag}")
    room_id = sender.call("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    join_remote(receiver, room_id, sender_server.server_name)
    filter_body = {
        "room": {"rooms": [room_id], "timeline": {"types": ["m.room.message"], "limit": 1000}},
        "presence": {"types": []},
        "account_data": {"types": []},
    }
    filter_id = receiver.call("POST", f"/user/{quote(receiver.user_id)}/filter", filter_body)["filter_id"]
    since = receiver.call("GET", "/sync", filter=filter_id, timeout=0)["next_batch"]
    # Warm-up: the first message may open the federation connection and fetch keys.
    sender.call(
        "PUT", f"/rooms/{quote(room_id)}/send/m.room.message/warm", {"msgtype": "m.text", "body": "w"}
    )

    sent: dict[str, float] = {}
    wall: dict[str, float] = {}
    arrived: dict[str, float] = {}
    acked: dict[str, float] = {}
    total = int(rate * seconds)
    stop = threading.Event()
    state = {"since": since}

    def receive() -> None:
        while not stop.is_set():
            body = receiver.call("GET", "/sync", filter=filter_id, since=state["since"], timeout=5000)
            now = time.perf_counter()
            state["since"] = body["next_batch"]
            room = body.get("rooms", {}).get("join", {}).get(room_id, {})
            for event in room.get("timeline", {}).get("events", []):
                bench_id = event.get("content", {}).get("bench_id")
                if bench_id is not None:
                    arrived.setdefault(bench_id, now)
            if len(arrived) >= total:
                return

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    time.sleep(0.5)  # the receiver's long-poll is parked
    cpu_wait = CpuWait({"sender": sender_server.pid, "receiver": receiver_server.pid})
    cpu_wait.start()
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        bench_id = f"{tag}-{i}"
        sent[bench_id] = time.perf_counter()
        wall[bench_id] = time.time()
        content = {"msgtype": "m.text", "body": f"message {i}", "bench_id": bench_id}
        sender.call("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/{bench_id}", content)
        acked[bench_id] = time.perf_counter()
    thread.join(timeout=30)
    stop.set()
    waited = cpu_wait.stop()
    by_id = {k: (arrived[k] - sent[k]) * 1000 for k in sent if k in arrived}
    ms = sorted(by_id.values())
    # From the sending server's answer to the send on: what federation itself adds.
    after_ack = sorted((arrived[k] - acked[k]) * 1000 for k in acked if k in arrived)
    return {
        "after_ack_p50": statistics.median(after_ack) if after_ack else None,
        "cpu_wait": waited,
        "slowest": [
            (k, round(v), round(wall[k], 3), round((acked[k] - sent[k]) * 1000))
            for k, v in sorted(by_id.items(), key=lambda kv: -kv[1])[:12]
        ],
        "sent": total,
        "delivered": len(ms),
        "p50": statistics.median(ms) if ms else None,
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None,
        "max": ms[-1] if ms else None,
    }


def big_room_join(host: Server, joiner_server: Server, members: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    owner = host.register(f"big_o_{tag}")
    room_id = owner.call("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    t0 = time.perf_counter()

    def add(i: int) -> None:
        user = host.register(f"big_{tag}_{i}")
        user.call("POST", f"/rooms/{quote(room_id)}/join", {})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(add, range(members - 1)))
    built = time.perf_counter() - t0
    joiner = joiner_server.register(f"big_j_{tag}")
    took = join_remote(joiner, room_id, host.server_name)
    count = len(joiner.call("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"])
    return {"members": count, "join_s": took, "built_s": built}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Every row as (what, figure); the servers are stopped before it returns."""
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    rows: list[tuple[str, str]] = []
    stops: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="fedbench-"))
    print(f"working directory: {tmp}", flush=True)
    try:
        ca = make_ca(tmp / "ca")
        servers: dict[str, Server] = {}
        a, a_proc = ours(tmp, ca, "a")
        stops.append(a_proc)
        b, b_proc = ours(tmp, ca, "b")
        stops.append(b_proc)
        servers["ours"] = a
        if any("synapse" in p for p in pairs):
            s, s_proc = synapse(tmp, ca)
            stops.append(s_proc)
            servers["synapse"] = s

        def ends(pair: str) -> tuple[Server, Server]:
            left, right = pair.split("-")
            # ours-ours: our first server to our second.
            return servers[left], (b if right == "ours" and left == "ours" else servers[right])

        for pair in pairs:
            sender, receiver = ends(pair)
            # Synapse handles a room's inbound PDUs one at a time after answering the
            # transaction; on this machine it keeps up with a few per second, not 20.
            rate = args.synapse_receive_rate if receiver.label == "Synapse" else args.rate
            result = latency(sender, receiver, rate, args.seconds)
            what = f"send → remote sync, {sender.label} → {receiver.label} at {rate:g} msg/s"
            rows.append((f"{what}: p50 (ms)", _ms(result["p50"])))
            rows.append((f"{what}: p99 (ms)", _ms(result["p99"])))
            rows.append((f"{what}: max (ms)", _ms(result["max"])))
            rows.append((f"{what}: p50 from the send's answer on (ms)", _ms(result["after_ack_p50"])))
            if result["delivered"] != result["sent"]:
                rows.append((f"{what}: delivered", f"{result['delivered']} of {result['sent']}"))
            for side in ("sender", "receiver"):
                w = result["cpu_wait"][side]
                rows.append(
                    (
                        f"{what}: {side}'s reactor thread's wait for a CPU, all / worst second (ms)",
                        f"{w['main_wait_ms']:,.0f} / {w['main_worst_second_wait_ms']:,.0f}",
                    )
                )
            print(
                f"{rows[-6:]} slowest (id, ms, sent at, send answered after ms): {result['slowest']};"
                f" cpu wait {result['cpu_wait']}; load {os.getloadavg()}",
                flush=True,
            )
        if not args.skip_join:
            for pair in pairs:
                host, joiner = ends(pair)
                # Each join into its own room (a second one into the same room would find
                # the joining server in it already).
                results = [big_room_join(host, joiner, args.members) for _ in range(args.joins)]
                before = results[0]["members"] - 1  # the joiner is counted once it is in
                took = [r["join_s"] for r in results]
                figure = f"{statistics.median(took):.2f}"
                if len(took) > 1:
                    figure += " (" + ", ".join(f"{t:.2f}" for t in took) + ")"
                rows.append(
                    (f"join a {before:,}-member room on {host.label} from {joiner.label} (s)", figure)
                )
                print(f"{rows[-1]}; load {os.getloadavg()}", flush=True)
    finally:
        for proc in stops:
            proc.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--synapse-receive-rate", type=float, default=5.0, help="msg/s when Synapse receives")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--pairs", default="ours-ours,ours-synapse,synapse-ours")
    parser.add_argument("--skip-join", action="store_true")
    parser.add_argument(
        "--joins", type=int, default=1, help="rooms joined per pair (the median is the figure)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' directory (logs)")
    parser.add_argument("--no-save", action="store_true", help="print the table, write no results file")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    started = datetime.now()
    rows = run(args)
    load_after = os.getloadavg()
    lines = [
        f"# Federation speed, {started:%Y-%m-%d %H:%M}",
        "",
        f"`python -m bench.federation_latency` ({sys.argv[1:] or 'defaults'}), {args.seconds:g} s "
        f"per pair, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} "
        f"before and {load_after[0]:.1f} after (other work on the machine).",
        "",
        "| what | figure |",
        "|---|---:|",
        *(f"| {what} | {figure} |" for what, figure in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        out = ROOT / "bench" / "results" / f"{started:%Y-%m-%d-%H%M}-federation.md"
        out.write_text(text)
        print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
