"""Micro-benchmark: checking a send_join answer for a 1,000-member room (the joining side).

    .venv/bin/python -m bench.join_state_micro [--members 1000] [--version 11] [--rounds 3]

A room of N members whose events are real signed PDUs (the room of tests/fast/test_join_state.py),
its state and whole auth chain checked as `join_state.checked_state` does after send_join: no
HTTP, no database. Times the check on one thread, then with the signatures verified first on the
worker threads (`join_state.verified_signatures`), so that the two can be compared on this machine:
the wall time, and the CPU time of the calling thread (the reactor's, in the server).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fast"))

from test_pdu_checks import ALICE, EVE, Room, key_lookup  # noqa: E402

from homeserver.core.federation.join_state import checked_state, verified_signatures  # noqa: E402
from homeserver.threads import WorkerThreads  # noqa: E402


def big_room(version: str, members: int) -> tuple[Room, dict[str, Any]]:
    room = Room(version)
    for i in range(members - 2):  # Alice and Bob are in already
        user = f"@u{i}:one.org"
        room.add(room.build("m.room.member", user, {"membership": "join"}, user))
    join = room.build("m.room.member", EVE, {"membership": "join"}, EVE)
    return room, join


def answer(room: Room) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The state, and its auth chain as a resident sends it: the events the state's events
    name as auth events, and theirs (a member's join is in the chain only if it is named)."""
    state = [{k: v for k, v in pdu.items() if k != "event_id"} for pdu in room.state.values()]
    chain: set[str] = set()
    todo = [a for pdu in state for a in pdu["auth_events"]]
    while todo:
        event_id = todo.pop()
        if event_id not in chain:
            chain.add(event_id)
            todo.extend(room.events[event_id]["auth_events"])
    return state, [room.events[e] for e in sorted(chain)]


async def timed(reactor: Any, args: argparse.Namespace) -> None:
    room, join = big_room(args.version, args.members)
    state, chain = answer(room)
    print(f"{len(state)} state events, {len(chain)} in the auth chain; load {os.getloadavg()[0]:.1f}")
    for threads in (0, 1, 2):
        pool = WorkerThreads(threads, threads, "verify", reactor) if threads else None
        best = best_cpu = float("inf")
        for _ in range(args.rounds):
            t0, cpu0 = time.perf_counter(), time.thread_time()
            verified: set[int] = set()
            if pool is not None:
                verified = await verified_signatures(
                    args.version, [*chain, *state], key_lookup, pool.run, threads
                )
            got = checked_state(room.room_id, args.version, join, state, chain, key_lookup, verified)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.thread_time() - cpu0)
            assert len(got) == len(room.state), ALICE
        if pool is not None:
            pool.close()
        label = "one thread" if not threads else f"signatures on {threads} worker thread(s)"
        print(
            f"{label}: best of {args.rounds} {best * 1000:.0f} ms, of it {best_cpu * 1000:.0f} ms of CPU"
            f" on the calling (reactor) thread; load {os.getloadavg()[0]:.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--version", default="11")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(timed(reactor, args)))


if __name__ == "__main__":
    main()
