"""Replay: what a group commit of a few messages costs, on PostgreSQL and in our process.

    .venv/bin/python -m bench.commit_replay [--url ADMIN_URL] [--commits 2000] [--batch 1]

Creates a scratch database, stores a room, then commits `commits` times `batch` messages
(each built on the one before, with a transaction id, as a client's /send makes them) through
`EventStore.persist_events` and the writer connection, one commit at a time, as the group
commit does at a steady 500 msg/s. Per commit it reports the CPU of the writer's backend
(utime + stime from /proc/PID/stat, 10 ms ticks), of this process (the reactor included),
and of composing the transaction alone (`persist_events_txn` against the collecting cursor);
per message, the bytes its tables hold afterwards (indexes and TOAST included, before VACUUM).
Run on the database's own machine (`--url` may name a Unix socket:
`postgresql://postgres@/postgres?host=/var/run/postgresql`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from twisted.internet import defer, task

from homeserver.storage import Storage
from homeserver.storage.database import Txn, _CollectingCursor
from homeserver.storage.events import PersistItem, StoredEvent, persist_events_txn
from homeserver.storage.migrations import migrate

ROOM = "!bench:example.org"
USER = "@alice:example.org"


def backend_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def message(position: int, prev: str, auth: list[str]) -> PersistItem:
    event_id = "$" + secrets.token_urlsafe(32)
    pdu = {
        "auth_events": auth,
        "content": {"body": f"message {position}", "msgtype": "m.text"},
        "depth": position,
        "hashes": {"sha256": secrets.token_urlsafe(32)},
        "origin": "example.org",
        "origin_server_ts": 1_700_000_000_000 + position,
        "prev_events": [prev],
        "room_id": ROOM,
        "sender": USER,
        "signatures": {"example.org": {"ed25519:a": secrets.token_urlsafe(64)}},
        "type": "m.room.message",
    }
    event = StoredEvent(event_id, ROOM, position, pdu)
    return PersistItem(event, "10", txn=(USER, "DEVICE", f"t{position}"), now_ms=position)


def create(position: int) -> PersistItem:
    pdu = {
        "auth_events": [],
        "content": {"creator": USER, "room_version": "10"},
        "depth": 1,
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": [],
        "room_id": ROOM,
        "sender": USER,
        "state_key": "",
        "type": "m.room.create",
    }
    return PersistItem(StoredEvent("$create", ROOM, position, pdu), "10", is_create=True)


async def replay(url: str, commits: int, batch: int) -> dict[str, float]:
    storage = Storage.from_url(url, 1, 2)
    try:
        await migrate(storage.db)
        await storage.events.persist_events([create(1)])
        auth = ["$create", "$" + secrets.token_urlsafe(32), "$" + secrets.token_urlsafe(32)]
        prev, position = "$create", 1
        batches = []
        for _ in range(commits + 20):
            items = []
            for _ in range(batch):
                position += 1
                items.append(message(position, prev, auth))
                prev = items[-1].event.event_id
            batches.append(items)
        for items in batches[:20]:  # the first of each shape looks up its column types
            await storage.events.persist_events(items)
        writer: Any = storage.db._writer
        pid = writer.backend_pid()
        backend, ours, wall = backend_cpu_s(pid), time.process_time(), time.perf_counter()
        for items in batches[20:]:
            await storage.events.persist_events(items)
        user, system = (after - before for after, before in zip(backend_cpu_s(pid), backend, strict=True))
        ours, wall = time.process_time() - ours, time.perf_counter() - wall
        # Composing alone, on the same batches (nothing is sent).
        compose = time.process_time()
        for items in batches[20:]:
            persist_events_txn(Txn(_CollectingCursor(), storage.db.engine), items)
        compose = time.process_time() - compose
        assert writer.backend_pid() == pid, "the writer reconnected during the run"
        stored = await storage.db.query("count", "SELECT count(*) FROM events")
        assert int(stored[0][0]) == 1 + (commits + 20) * batch
        return {
            "backend_ms": (user + system) / commits * 1000,
            "system_ms": system / commits * 1000,
            "ours_ms": ours / commits * 1000,
            "compose_ms": compose / commits * 1000,
            "wall_ms": wall / commits * 1000,
        }
    finally:
        storage.close()


def stored_bytes(url: str) -> int:
    """The scratch database's tables with their indexes and TOAST, before any VACUUM."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


async def main(args: argparse.Namespace) -> None:
    admin = psycopg2.connect(args.url)
    admin.autocommit = True
    name = f"hs_replay_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" LC_COLLATE "C" LC_CTYPE "C" TEMPLATE template0')
    try:
        url = urlunsplit(urlsplit(args.url)._replace(path=f"/{name}"))
        for run in range(args.runs):
            figures = await replay(url, args.commits, args.batch)
            stored = stored_bytes(url) / (args.commits * args.batch)
            print(
                f"run {run + 1}: {args.commits} commits of {args.batch} message(s), per commit:"
                f" backend {figures['backend_ms']:.3f} ms CPU ({figures['system_ms']:.3f} system),"
                f" this process {figures['ours_ms']:.3f} ms CPU (composing {figures['compose_ms']:.3f}),"
                f" wall {figures['wall_ms']:.3f} ms; stored {stored:,.0f} bytes a message"
            )
            with admin.cursor() as cur:  # a fresh schema for the next run
                cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}" LC_COLLATE "C" LC_CTYPE "C" TEMPLATE template0')
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    task.react(lambda _reactor: defer.ensureDeferred(main(arguments)))
