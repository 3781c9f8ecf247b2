"""W1's and W3's load phase, split over several generator processes ("shards").

One asyncio process at ~0.1 ms of CPU per message sent and received keeps up with
one server process, but not with two of them on the same machine. So the load
phase of W1 and W3 runs as shards: each has its own users (W1: whole DMs, so a
message and its receipt stay in one shard; W3: a slice of the members and of the
senders) and talks to the parent by a short script of JSON messages:

    parent -> shard: the spec            shard -> parent: {"ready": true} once its long-polls run
    parent -> shard: {"go": end_wall}    shard -> parent: W1: its tally; W3: {"acked": [...]}
    W3: parent -> shard: {"expected": [...], every shard's acked ids}
                                         shard -> parent: its tally once its members have them

With one shard the script runs in the parent's own event loop (no process, no
JSON: what `python -m bench` always did); with more, each shard is
`python -m bench.loadgen` with the script on its stdin and stdout. A shard's
tally carries its own CPU-seconds over the load (from "go" on), so the generator's
CPU beside each figure counts every process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.httpclient import HttpClient, HttpError
from bench.matrix import Matrix, ReceiverStats, SyncReceiver, User, message_content, message_filter_definition
from bench.stats import gather_limited

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Priming (filter upload + a since token per receiver) at most this many at once per shard.
PRIME_CONCURRENCY = 16


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clients:
    """One Matrix client per server port; a user always talks to the same port (its index picks
    it), as a client behind a sticky balancer would."""

    def __init__(self, host: str, ports: list[int]) -> None:
        self.https = [HttpClient(host, port) for port in ports]
        self.mxs = [Matrix(http) for http in self.https]

    def of(self, user: User) -> Matrix:
        return self.mxs[user.index % len(self.mxs)]

    def close(self) -> None:
        for http in self.https:
            http.close()


def _user(data: dict[str, Any]) -> User:
    return User(data["index"], data["localpart"], data["user_id"], data["token"], data["device_id"])


def user_data(user: User) -> dict[str, Any]:
    return {k: v for k, v in asdict(user).items() if k != "extra_tokens"}


def _sum_stats(receivers: list[SyncReceiver]) -> dict[str, Any]:
    stats = [r.stats for r in receivers]
    last = [s.last_error for s in stats if s.errors]
    return {
        "responses": sum(s.responses for s in stats),
        "errors": sum(s.errors for s in stats),
        "gaps": sum(s.gaps for s in stats),
        "last_error": last[-1] if last else "",
    }


def stats_of(tally: Message) -> ReceiverStats:
    s = tally["sync"]
    return ReceiverStats(
        responses=s["responses"], errors=s["errors"], gaps=s["gaps"], last_error=s["last_error"]
    )


async def _start_receivers(
    clients: Clients, pairs: list[tuple[User, list[str]]], on_message: Callable[[User], Any]
) -> list[SyncReceiver]:
    receivers = [
        SyncReceiver(clients.of(u), u, message_filter_definition(rooms), on_message(u)) for u, rooms in pairs
    ]
    await gather_limited((r.prime() for r in receivers), PRIME_CONCURRENCY)
    for r in receivers:
        r.start()
    # Let every long-poll reach the server before the load starts (timing only: the since
    # tokens cover everything after them).
    await asyncio.sleep(0.5)
    return receivers


async def _stop_receivers(receivers: list[SyncReceiver]) -> None:
    await asyncio.gather(*(r.stop() for r in receivers))


def _monotonic_at(wall: float) -> float:
    return time.monotonic() + (wall - time.time())


async def run_w1(spec: Message, receive: Receive, send: Send) -> None:
    """W1's shard: every user of its DMs sends, one request in flight each, until the end time;
    then waits (up to `grace` s, while deliveries still arrive) for its acknowledged messages."""
    clients = Clients(spec["host"], spec["ports"])
    senders = [(_user(u), room) for u, room in spec["senders"]]
    delivered: dict[str, float] = {}
    latencies: list[float] = []
    dups = 0
    # Per receiver, its slowest delivery: (latency s, room, arrival wall time, bench id).
    slowest: dict[str, tuple[float, str, float, str]] = {}

    def on_message(user: User) -> Callable[[str, str, dict[str, Any], float], None]:
        def handle(room_id: str, sender: str, content: dict[str, Any], now: float) -> None:
            nonlocal dups
            if sender == user.user_id:
                return  # our own echo
            bid = content["bench_id"]
            if bid in delivered:
                dups += 1
                return
            delivered[bid] = now
            latency = now - content["bench_ts"] / 1e6
            latencies.append(latency)
            if latency > slowest.get(user.user_id, (0.0,))[0]:
                slowest[user.user_id] = (latency, room_id, now, bid)

        return handle

    try:
        receivers = await _start_receivers(clients, [(u, [room]) for u, room in senders], on_message)
        await send({"ready": True})
        go = await receive()
        cpu0 = own_cpu_seconds()
        end = _monotonic_at(go["go"])
        acked: list[str] = []
        acked_in_window = 0
        errors = 0
        last_error = ""

        async def sender(user: User, room: str) -> None:
            nonlocal acked_in_window, errors, last_error
            mx = clients.of(user)
            seq = 0
            while time.monotonic() < end:
                bid = f"w1.{user.index}.{seq}"
                seq += 1
                try:
                    response = await mx.send(user, room, message_content(bid))
                except (HttpError, TimeoutError) as e:
                    errors += 1
                    last_error = str(e) or type(e).__name__
                    await asyncio.sleep(0.1)
                    continue
                if response.status == 200:
                    acked.append(bid)
                    if time.monotonic() <= end:
                        acked_in_window += 1
                else:
                    errors += 1
                    last_error = f"HTTP {response.status} {response.text()}"
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(sender(u, r) for u, r in senders))
        missing = await drain(set(acked), delivered, spec["grace"])
        cpu = own_cpu_seconds() - cpu0
        await _stop_receivers(receivers)
        trouble = _w1_trouble(senders, receivers, slowest, missing)
        await send(
            {
                "acked": acked,
                "acked_in_window": acked_in_window,
                "delivered": delivered,
                "latencies": latencies,
                "missing": sorted(missing),
                "duplicates": dups,
                "send_errors": errors,
                "last_error": last_error,
                "sync": _sum_stats(receivers),
                "cpu_s": cpu,
                "trouble": trouble,
            }
        )
    finally:
        clients.close()


# A delivery slower than this is named in the details (with its room and the receiver's worker).
SLOW_S = 2.0


def _w1_trouble(
    senders: list[tuple[User, str]],
    receivers: list[SyncReceiver],
    slowest: dict[str, tuple[float, str, float, str]],
    missing: set[str],
) -> list[dict[str, Any]]:
    """Each receiver that lost a message, saw a gapped timeline or waited over SLOW_S for one:
    which room, the worker its syncs were on, how many were missing, its slowest delivery."""
    room_of = {u.user_id: room for u, room in senders}
    missing_by_sender: dict[int, int] = {}
    for bid in missing:
        index = int(bid.split(".")[1])
        missing_by_sender[index] = missing_by_sender.get(index, 0) + 1
    out = []
    for r in receivers:
        room = room_of[r.user.user_id]
        peer = next((u for u, rm in senders if rm == room and u.user_id != r.user.user_id), None)
        lost = missing_by_sender.get(peer.index, 0) if peer is not None else 0
        slow = slowest.get(r.user.user_id)
        if not lost and not r.stats.gapped and (slow is None or slow[0] < SLOW_S):
            continue
        out.append(
            {
                "receiver": r.user.user_id,
                "room": room,
                "worker": r.stats.worker,
                "lost": lost,
                "gapped": r.stats.gapped,
                "slowest": slow,
            }
        )
    return out


async def drain(expected: set[str], delivered: dict[str, Any], grace_s: float) -> set[str]:
    """Wait (while deliveries still come in, up to grace_s) until every expected id arrived; the missing."""
    deadline = time.monotonic() + grace_s
    last_count, last_progress = -1, time.monotonic()
    while True:
        missing = expected - delivered.keys()
        if not missing:
            return missing
        now = time.monotonic()
        if len(delivered) != last_count:
            last_count, last_progress = len(delivered), now
        if now > deadline or now - last_progress > 10:
            return missing
        await asyncio.sleep(0.1)


async def run_w3(spec: Message, receive: Receive, send: Send) -> None:
    """W3's shard: its slice of the members long-poll the room, its slice of the senders send
    one message at a time; then it waits until its members have every shard's acknowledged
    messages (while they still arrive, up to max(grace, 300) s)."""
    clients = Clients(spec["host"], spec["ports"])
    room = spec["room"]
    members = [_user(u) for u in spec["members"]]
    senders = [_user(u) for u in spec["senders"]]
    count: dict[str, int] = {}
    last_at: dict[str, float] = {}
    sent_at: dict[str, float] = {}
    deliveries = 0
    dups = 0

    def on_message(user: User) -> Callable[[str, str, dict[str, Any], float], None]:
        seen: set[str] = set()

        def handle(room_id: str, sender: str, content: dict[str, Any], now: float) -> None:
            nonlocal deliveries, dups
            bid = content["bench_id"]
            if bid in seen:
                dups += 1
                return
            seen.add(bid)
            deliveries += 1
            count[bid] = count.get(bid, 0) + 1
            last_at[bid] = now
            sent_at.setdefault(bid, content["bench_ts"] / 1e6)

        return handle

    try:
        receivers = await _start_receivers(clients, [(u, [room]) for u in members], on_message)
        await send({"ready": True})
        await receive()  # go
        cpu0 = own_cpu_seconds()
        acked: list[str] = []
        errors = 0
        last_error = ""

        async def sender(user: User) -> None:
            nonlocal errors, last_error
            mx = clients.of(user)
            for seq in range(spec["messages"]):
                bid = f"w3.{user.index}.{seq}"
                try:
                    response = await mx.send(user, room, message_content(bid))
                except (HttpError, TimeoutError) as e:
                    errors += 1
                    last_error = str(e) or type(e).__name__
                    continue
                if response.status == 200:
                    acked.append(bid)
                else:
                    errors += 1
                    last_error = f"HTTP {response.status} {response.text()}"

        await asyncio.gather(*(sender(u) for u in senders))
        await send({"acked": acked, "send_errors": errors, "last_error": last_error})
        expected = (await receive())["expected"]
        n_members = len(members)
        deadline = time.monotonic() + max(spec["grace"], 300.0)
        last_progress, last_deliveries = time.monotonic(), -1
        while n_members:
            now = time.monotonic()
            if deliveries != last_deliveries:
                last_deliveries, last_progress = deliveries, now
            if all(count.get(b, 0) >= n_members for b in expected):
                break
            if now > deadline or now - last_progress > 10:
                break
            await asyncio.sleep(0.05)
        cpu = own_cpu_seconds() - cpu0
        await _stop_receivers(receivers)
        await send(
            {
                "count": count,
                "last_at": last_at,
                "sent_at": sent_at,
                "deliveries": deliveries,
                "duplicates": dups,
                "sync": _sum_stats(receivers),
                "cpu_s": cpu,
            }
        )
    finally:
        clients.close()


SCRIPTS = {"w1": run_w1, "w3": run_w3}


# Running shards ----------------------------------------------------------------------------------


class Shard:
    """One shard's script, seen from the parent: `step(message)` sends one message and returns
    the shard's next answer."""

    async def start(self, spec: Message) -> Message:
        raise NotImplementedError

    async def step(self, message: Message) -> Message:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class InlineShard(Shard):
    """The script as a task of the parent's own event loop (one shard: no process, no JSON)."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _answer(self) -> Message:
        assert self._task is not None
        getter = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            self._task.result()  # the script failed: raise its error
            raise RuntimeError("the shard ended without answering")
        return getter.result()

    async def start(self, spec: Message) -> Message:
        self._task = asyncio.create_task(SCRIPTS[spec["kind"]](spec, self._inbox.get, self._outbox.put))
        return await self._answer()

    async def step(self, message: Message) -> Message:
        await self._inbox.put(message)
        return await self._answer()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# A tally with a whole W1 run's ids and times is a few MB: one line of JSON.
_LINE_LIMIT = 1 << 28


class ProcessShard(Shard):
    """The script in its own `python -m bench.loadgen` process."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, spec: Message) -> Message:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
            cwd=Path(__file__).resolve().parent.parent,  # bench/ is a folder of the checkout
        )
        return await self.step(spec)

    async def step(self, message: Message) -> Message:
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            code = await self.process.wait()
            raise RuntimeError(f"generator process exited with code {code} (its stderr is above)")
        answer: Message = json.loads(line)
        return answer

    async def close(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


def shards(count: int) -> list[Shard]:
    return [InlineShard()] if count <= 1 else [ProcessShard() for _ in range(count)]


async def _child_main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    async def receive() -> Message:
        line = await reader.readline()
        if not line:
            raise SystemExit(0)  # the parent went away
        message: Message = json.loads(line)
        return message

    async def send(message: Message) -> None:
        out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        out.flush()

    spec = await receive()
    await SCRIPTS[spec["kind"]](spec, receive, send)


def main() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(_child_main())


if __name__ == "__main__":
    main()
