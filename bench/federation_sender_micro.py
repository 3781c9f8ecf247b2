"""Micro-benchmark: events per second the federation sender sends to one destination.

    .venv/bin/python -m bench.federation_sender_micro [--events 5000] [--database sqlite|URL]

An in-process server (SQLite in a temporary directory unless a PostgreSQL URL is given)
with a room shared with one remote server. The destination is a stand-in that answers each
transaction at once, so the figure is the sender's own cost: reading its queue, loading the
PDUs, building the transaction, and recording it answered. The events are committed while
the destination holds its first transaction; the clock starts when it lets go and stops when
the last event was answered (the queue rows were written as the events committed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

from homeserver.config import parse_config
from homeserver.server import HomeServer

REMOTE = "remote.example"


async def _run(reactor: Any, events: int, database: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = database if database != "sqlite" else f"sqlite:///{Path(tmp) / 'hs.db'}"
        raw = {
            "server_name": "bench.example",
            "data_dir": str(Path(tmp) / "data"),
            "database": {"url": url},
            "auth": {"password_hashing": "fast"},
            "rate_limits": {"enabled": False},
            "plugins": [],
        }
        hs = HomeServer(parse_config(raw, "bench.yaml", env={}), reactor)
        gate: Deferred[None] = Deferred()
        sent = {"pdus": 0, "txns": 0}

        async def transport(destination: str, txn_id: str, body: dict[str, Any]) -> Any:
            if not gate.called:
                await gate
            sent["pdus"] += len(body["pdus"])
            sent["txns"] += 1
            return {"pdus": {}}

        hs.federation_sender.transport = transport
        await hs.start()
        try:
            alice = await hs.accounts.register("alice", "correct horse battery")
            room_id = await hs.rooms.create_room(alice, {"preset": "public_chat"})
            bob = f"@bob:{REMOTE}"
            await hs.events.send(bob, room_id, "m.room.member", {"membership": "join"}, state_key=bob)
            content = {"msgtype": "m.text", "body": "x" * 100}
            for start in range(0, events, 100):
                await gatherResults(
                    [
                        Deferred.fromCoroutine(hs.events.send(alice, room_id, "m.room.message", content))
                        for _ in range(start, min(events, start + 100))
                    ]
                )
            consumer = next(c for c in hs.stream.consumers() if c.name == "federation_sender")
            await consumer.reached(hs.stream.position)
            began = time.perf_counter()
            gate.callback(None)
            while sent["pdus"] < events:
                await _sleep(reactor, 0.001)
            elapsed = time.perf_counter() - began
            print(
                f"{events} events to one destination in {elapsed:.2f}s: {events / elapsed:,.0f} events/s,"
                f" {sent['txns']} transactions ({url.split(':')[0]})"
            )
        finally:
            await hs.stop(None)


async def _sleep(reactor: Any, seconds: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a postgresql:// URL")
    args = parser.parse_args()
    react(lambda reactor: Deferred.fromCoroutine(_run(reactor, args.events, args.database)))


if __name__ == "__main__":
    main()
