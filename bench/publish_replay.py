"""Replay: our process's CPU per message at W2's shape, in process, one message per commit.

    PYTHONPATH=. .venv/bin/python -m bench.publish_replay [--pairs 10] [--messages 2000] [--profile N]

Builds the fast tier's in-process server (tests/fast/harness.py: SQLite, test clock, HTTP
through the server's own HttpChannel), makes `pairs` DM rooms whose two members both
long-poll /sync with W2's filter, then sends `messages` messages one at a time, round robin
over the pairs, each waiting until its send and both members' syncs have answered (so each
is its own group commit, as at a steady 500 msg/s), and the two members poll again.
Reports time.process_time() per message over the timed part (all threads, the client side
of the harness included: compare runs of this tool, not with the bench's figures).
`--profile N` adds cProfile's top N functions (by `--sort`; the timing then includes the
profiler's overhead). For a profile without that overhead, run it under `.venv/bin/py-spy record`.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fast"))
from harness import Client, TestClock, make_server, room_path  # noqa: E402

from bench.matrix import message_filter_definition  # noqa: E402
from homeserver import gc_tuning  # noqa: E402

POLL_MS = 30_000
SYNC = "/_matrix/client/v3/sync"


async def replay(reactor: Any, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = TestClock()
        hs = await make_server(Path(tmp), clock, logging={"access_log": False})
        client = Client(hs)
        pairs = []
        for i in range(args.pairs):
            a = await client.register(hs, f"a{i}")
            b = await client.register(hs, f"b{i}")
            created = await client.call("POST", "/createRoom", a["access_token"], {"invite": [b["user_id"]]})
            room = created["room_id"]
            await client.call("POST", f"{room_path(room)}/join", b["access_token"], {})
            pairs.append((room, a, b))
        definition = message_filter_definition([room for room, _, _ in pairs])
        filters = {}  # uploaded once, as W2's receivers do
        for _, a, b in pairs:
            for u in (a, b):
                path = f"/user/{quote(u['user_id'])}/filter"
                uploaded = await client.call("POST", path, u["access_token"], definition)
                filters[u["user_id"]] = uploaded["filter_id"]
        since: dict[str, str] = {}
        polls: dict[str, defer.Deferred[Any]] = {}

        def poll(user: dict[str, str]) -> None:
            params = {"timeout": str(POLL_MS), "filter": filters[user["user_id"]]}
            if user["user_id"] in since:
                params["since"] = since[user["user_id"]]
            polls[user["user_id"]] = client.start("GET", SYNC, user["access_token"], **params)

        for _, a, b in pairs:
            for u in (a, b):
                _, body = await client.start("GET", SYNC, u["access_token"], filter=filters[u["user_id"]])
                since[u["user_id"]] = body["next_batch"]
                poll(u)

        async def send(n: int) -> None:
            room, a, b = pairs[n % len(pairs)]
            sender, receiver = (a, b) if n % 2 == 0 else (b, a)
            path = f"{room_path(room)}/send/m.room.message/{secrets.token_hex(6)}"
            await client.call("PUT", path, sender["access_token"], {"msgtype": "m.text", "body": f"m{n}"})
            for u in (receiver, sender):
                status, body = await polls[u["user_id"]]
                assert status == 200 and room in body["rooms"]["join"], body
                since[u["user_id"]] = body["next_batch"]
                poll(u)

        for n in range(100):  # warm up
            await send(n)
        gc_tuning.tune_after_startup(reactor)  # the collector as `homeserver run` sets it
        profiler = cProfile.Profile() if args.profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for n in range(args.messages):
            await send(n)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        per = 1e3 / args.messages
        print(
            f"{args.messages} messages, {args.pairs} pairs:",
            f"{cpu * per:.3f} ms CPU, {wall * per:.3f} ms wall a message",
        )
        if profiler:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.profile)
        await hs.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key (cumulative, tottime)")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(replay(reactor, args)))


if __name__ == "__main__":
    main()
