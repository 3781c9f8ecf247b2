"""Micro-benchmark: a group of 1,000 members through the simple API, stage by stage.

    .venv/bin/python -m bench.big_group_micro [--engine sqlite|postgres] [--members 1000]
                                             [--parallel 16]

Starts ours with the bench config (bench/servers.py `start_ours`: rate limits off, fast
password hashing, no plugins) on a fresh database (PostgreSQL: `bench_homeserver` at
127.0.0.1:5432, as `python -m bench`, dropped afterwards), then times what
tests/test_message_status.py's `test_group_of_a_thousand_members` does (the test checks
the answers, this the time they take):

- register: `members` users through `POST /register`, `parallel` at a time;
- create: one `POST /api/groups` naming every other user (`members` - 1 invites);
- join: each invited user's `POST /join`, `parallel` at a time (and the median of one);
- send: one `POST /api/messages/send` into the group, and until a member's `/sync`
  long-poll, waiting from before the send, holds it;
- status: `GET .../status`, a breakdown of `members` - 1 recipients;
- list: `GET /api/messages/{chatId}`, the newest page.

Prints one JSON line: the seconds of each stage, the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any
from urllib.parse import quote

from bench.httpclient import HttpClient
from bench.matrix import CLIENT, Matrix, User
from bench.servers import Target, drop_database, start_ours


async def _bounded(parallel: int, jobs: list[Any]) -> list[Any]:
    """Await `jobs` (coroutines), at most `parallel` at once, in order of the list."""
    gate = asyncio.Semaphore(parallel)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def _timed(job: Any) -> float:
    started = time.perf_counter()
    await job
    return time.perf_counter() - started


async def _simple(http: HttpClient, method: str, path: str, body: Any, token: str, status: int) -> Any:
    response = await http.request(method, path, body, token, 120.0)
    if response.status != status:
        raise RuntimeError(f"{method} {path}: HTTP {response.status} {response.text()}")
    return response.json()


async def run(target: Target, members: int, parallel: int) -> dict[str, Any]:
    http = HttpClient(target.host, target.port)
    mx = Matrix(http)
    result: dict[str, Any] = {"members": members, "parallel": parallel, "load_before": os.getloadavg()[0]}
    try:
        started = time.perf_counter()
        users: list[User] = await _bounded(
            parallel, [target.register(mx, f"g{i:05}", i) for i in range(members)]
        )
        result["register_s"] = time.perf_counter() - started

        admin, others = users[0], users[1:]
        body = {"name": "Everyone", "members": [u.user_id for u in others]}
        started = time.perf_counter()
        chat_id = (await _simple(http, "POST", "/api/groups", body, admin.token, 201))["chatId"]
        result["create_s"] = time.perf_counter() - started

        started = time.perf_counter()
        joins = await _bounded(parallel, [_timed(mx.join(u, chat_id)) for u in others])
        result["join_s"] = time.perf_counter() - started
        result["join_one_median_ms"] = statistics.median(joins) * 1000

        reader = others[len(others) // 2]
        since = (await mx.call("GET", f"{CLIENT}/sync?timeout=0", token=reader.token))["next_batch"]
        poll = asyncio.ensure_future(
            mx.call("GET", f"{CLIENT}/sync?timeout=30000&since={quote(since, safe='')}", token=reader.token)
        )
        started = time.perf_counter()
        send = {"chatId": chat_id, "content": "hello, everyone"}
        message_id = (await _simple(http, "POST", "/api/messages/send", send, admin.token, 201))["messageId"]
        result["send_s"] = time.perf_counter() - started
        while True:
            got = await poll
            events = got["rooms"]["join"].get(chat_id, {}).get("timeline", {}).get("events", [])
            if any(e["event_id"] == message_id for e in events):
                break
            path = f"{CLIENT}/sync?timeout=30000&since={quote(got['next_batch'], safe='')}"
            poll = asyncio.ensure_future(mx.call("GET", path, token=reader.token))
        result["send_to_sync_s"] = time.perf_counter() - started

        started = time.perf_counter()
        status = await _simple(
            http, "GET", f"/api/messages/{quote(chat_id)}/{quote(message_id)}/status", None, admin.token, 200
        )
        result["status_s"] = time.perf_counter() - started
        assert len(status["recipients"]) == members - 1, len(status["recipients"])

        started = time.perf_counter()
        await _simple(http, "GET", f"/api/messages/{quote(chat_id)}", None, admin.token, 200)
        result["list_s"] = time.perf_counter() - started
    finally:
        http.close()
    result["load_after"] = os.getloadavg()[0]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


async def main_async(args: argparse.Namespace) -> None:
    target = await start_ours(args.engine)
    try:
        print(json.dumps({"engine": args.engine, **await run(target, args.members, args.parallel)}))
    finally:
        target.stop()
        if args.engine == "postgres":
            drop_database("bench_homeserver")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=16)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
