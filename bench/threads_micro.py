"""Micro-benchmark: one page of GET /rooms/{roomId}/threads in a room with many thread replies.

    .venv/bin/python -m bench.threads_micro [--url URL] [--replies 100000] [--threads 1000]

Fills one room with `threads` thread roots and `replies` replies spread over them (one in a
hundred redacted), stored through the server's own write path, then times the storage step
of a page (`EventStore.thread_roots`, 51 rows: the default page and one to tell if there is
a next), the first page and one deep into the list, `include=all` and `participated`, beside
the aggregate over every reply that served the list before sql/104 (its SQL is kept here).
Without `--url`, a SQLite file in a temporary directory; with a PostgreSQL URL, a scratch
schema in that database, dropped afterwards (analysed after the fill: fresh tables' guessed
statistics made PostgreSQL sort the whole list instead of reading its index). Reports the median ms of each.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import tempfile
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from homeserver.storage.database import Database, engine_from_url
from homeserver.storage.events import EventStore, PersistItem, StoredEvent
from homeserver.storage.migrations import migrate

ROOM = "!bench:example.org"
START_MS = 1_700_000_000_000
USERS = [f"@user{i}:example.org" for i in range(50)]
PAGE = 51


def make_items(threads: int, replies: int) -> list[PersistItem]:
    rng = random.Random(1)
    items: list[PersistItem] = []
    ids: list[str] = []
    roots: list[str] = []

    def add(pdu: dict[str, Any], is_create: bool = False) -> str:
        event_id = "$" + secrets.token_urlsafe(32)
        position = len(items) + 1
        pdu.update(
            room_id=ROOM,
            depth=position,
            origin_server_ts=START_MS + position,
            prev_events=ids[-1:],
            auth_events=ids[:1],
        )
        items.append(PersistItem(StoredEvent(event_id, ROOM, position, pdu), "10", is_create=is_create))
        ids.append(event_id)
        return event_id

    add({"type": "m.room.create", "state_key": "", "sender": USERS[0], "content": {}}, is_create=True)
    for i in range(threads):
        content: dict[str, Any] = {"msgtype": "m.text", "body": f"root {i}"}
        roots.append(add({"type": "m.room.message", "sender": rng.choice(USERS), "content": content}))
    for i in range(replies):
        relates = {"rel_type": "m.thread", "event_id": rng.choice(roots)}
        content = {"msgtype": "m.text", "body": f"reply {i}", "m.relates_to": relates}
        reply = add({"type": "m.room.message", "sender": rng.choice(USERS), "content": content})
        if i % 100 == 99:
            add({"type": "m.room.redaction", "sender": USERS[0], "redacts": reply, "content": {}})
    return items


async def aggregate(
    db: Database, room_id: str, upto: int, before: int | None, limit: int, participant: str | None
) -> list[tuple[str, int]]:
    """The thread list before sql/104: a GROUP BY over every reply of the room, each page."""
    sql = (
        "SELECT x.relates_to, MAX(x.stream_ordering) FROM event_relations x"
        " JOIN events p ON p.event_id = x.relates_to"
        " LEFT JOIN redactions r ON r.redacts = x.event_id"
        " WHERE x.room_id = ? AND x.rel_type = 'm.thread' AND r.event_id IS NULL"
        " AND x.stream_ordering <= ? GROUP BY x.relates_to, p.sender HAVING 1 = 1"
    )
    args: list[Any] = [room_id, upto]
    if before is not None:
        sql += " AND MAX(x.stream_ordering) < ?"
        args.append(before)
    if participant is not None:
        sql += " AND (p.sender = ? OR SUM(CASE WHEN x.sender = ? THEN 1 ELSE 0 END) > 0)"
        args += [participant, participant]
    sql += " ORDER BY MAX(x.stream_ordering) DESC LIMIT ?"
    args.append(limit)
    return [(r[0], int(r[1])) for r in await db.query("aggregate", sql, *args)]


async def median_ms(fetch: Any, *args: Any, repeat: int) -> tuple[float, list[tuple[str, int]]]:
    times, rows = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        rows = await fetch(*args)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2), rows


async def run(url: str, threads: int, replies: int, repeat: int) -> dict[str, Any]:
    db = Database(engine_from_url(url, 2, 4))
    try:
        await migrate(db)
        store = EventStore(db)
        items = make_items(threads, replies)
        for start in range(0, len(items), 1000):
            await store.persist_events(items[start : start + 1000])
        if db.dialect == "postgres":  # statistics as autovacuum's ANALYZE leaves them
            await db.run_interaction("analyze", lambda txn: txn.execute("ANALYZE"))
        upto = len(items)
        first = await store.thread_roots(ROOM, upto, None, PAGE, None)
        deep = first[-1][1]  # the second page's `from`
        for _ in range(threads // PAGE // 2):  # half way down the list
            deep = (await store.thread_roots(ROOM, upto, deep, PAGE, None))[-1][1]
        result: dict[str, Any] = {"engine": db.dialect, "threads": threads, "replies": replies}
        cases = {
            "first_page": (None, None),
            "deep_page": (deep, None),
            "participated": (None, USERS[7]),
        }
        for name, (before, participant) in cases.items():
            args = (ROOM, upto, before, PAGE, participant)
            table_ms, rows = await median_ms(store.thread_roots, *args, repeat=repeat)
            old_ms, old_rows = await median_ms(aggregate, db, *args, repeat=repeat)
            assert rows == old_rows, name  # the same page either way
            result[f"{name}_ms"] = table_ms
            result[f"{name}_aggregate_ms"] = old_ms
        return result
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="postgresql://... (a scratch schema is made in it; default: SQLite)")
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--replies", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    def go(_reactor: Any) -> Deferred[None]:
        async def body() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                if args.url:
                    import psycopg2

                    schema = f"threads_micro_{secrets.token_hex(4)}"
                    conn = psycopg2.connect(args.url)
                    conn.autocommit = True
                    conn.cursor().execute(f"CREATE SCHEMA {schema}")
                    sep = "&" if "?" in args.url else "?"
                    url = f"{args.url}{sep}options=-csearch_path%3D{schema}"
                else:
                    url = f"sqlite:///{tmp}/bench.db"
                try:
                    print(json.dumps(await run(url, args.threads, args.replies, args.repeat)))
                finally:
                    if args.url:
                        conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
                        conn.close()

        return Deferred.fromCoroutine(body())

    task.react(go)


if __name__ == "__main__":
    main()
