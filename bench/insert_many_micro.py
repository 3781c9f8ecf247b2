"""Micro-benchmark: PostgreSQL insert_many before (execute_values) and after (JSON rows).

    .venv/bin/python -m bench.insert_many_micro [--url URL] [--rows 200] [--calls 300]

Inserts `rows` rows of 8 events-like columns per call into a scratch table, each call in
its own transaction rolled back afterwards (so the table never grows). It also times the
`unnest(%s::type[], ...)` form (one list per column) that was considered instead. Per call, it
reports the median and p90 of wall time and of this thread's CPU time: the CPU time is
the part that holds the GIL (psycopg2 releases it while waiting on the server), which is
what starves the reactor thread in the server.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
from psycopg2.extras import execute_values

from homeserver.storage.database import PostgresEngine

TABLE = "bench_events"
COLUMNS = (
    "event_id",
    "room_id",
    "stream_ordering",
    "type",
    "state_key",
    "sender",
    "origin_server_ts",
    "json",
)
DDL = f"""CREATE TABLE {TABLE} (
    event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, stream_ordering BIGINT NOT NULL,
    type TEXT NOT NULL, state_key TEXT, sender TEXT NOT NULL, origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL)"""


def make_rows(n: int) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(n):
        event_id = "$" + secrets.token_urlsafe(32)
        room_id = f"!room{i % 7}:example.org"
        body = {"msgtype": "m.text", "body": f'message {i} with some "quoted" text \\ and ünïcödé'}
        pdu = {
            "type": "m.room.message",
            "room_id": room_id,
            "sender": f"@user{i % 50}:example.org",
            "content": body,
            "origin_server_ts": 1_700_000_000_000 + i,
            "hashes": {"sha256": secrets.token_urlsafe(32)},
            "signatures": {"example.org": {"ed25519:a": secrets.token_urlsafe(64)}},
            "prev_events": ["$" + secrets.token_urlsafe(32)],
            "auth_events": ["$" + secrets.token_urlsafe(32) for _ in range(3)],
            "depth": i,
        }
        state_key = "" if i % 10 == 0 else None  # mostly NULL, as in a message stream
        rows.append(
            (
                event_id,
                room_id,
                i,
                "m.room.message",
                state_key,
                pdu["sender"],
                pdu["origin_server_ts"],
                json.dumps(pdu),
            )
        )
    return rows


def old_insert_many(
    cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str
) -> None:
    """The implementation this replaces (homeserver/storage/database.py before the change)."""
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s {suffix.replace('%', '%%')}"
    execute_values(cursor, sql, [tuple(r) for r in rows], page_size=1000)


def unnest_insert_many(cursor: Any, rows: Sequence[Sequence[Any]]) -> None:
    """The alternative: one array per column; psycopg2 still adapts each element on its own."""
    casts = ", ".join(
        f"%s::{t}[]" for t in ("text", "text", "bigint", "text", "text", "text", "bigint", "text")
    )
    sql = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT * FROM unnest({casts})"
    cursor.execute(sql, [list(col) for col in zip(*rows, strict=True)])


def measure(
    conn: Any, fns: Sequence[Callable[[Any], None]], calls: int
) -> list[tuple[list[float], list[float]]]:
    """(wall times, CPU times) per function; the functions take turns call by call, so
    that other load on the machine falls on all of them alike."""
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in fns]
    with conn.cursor() as cur:
        for _ in range(calls):
            for fn, (walls, cpus) in zip(fns, times, strict=True):
                w0, c0 = time.perf_counter(), time.thread_time()
                fn(cur)
                c1, w1 = time.thread_time(), time.perf_counter()
                conn.rollback()
                walls.append(w1 - w0)
                cpus.append(c1 - c0)
    return times


def summary(label: str, walls: list[float], cpus: list[float]) -> str:
    def ms(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=10)[q - 1] * 1000 if q < 10 else max(xs) * 1000

    return (
        f"{label:<22} wall median {statistics.median(walls) * 1000:7.3f} ms  p90 {ms(walls, 9):7.3f} ms   "
        f"CPU (GIL held) median {statistics.median(cpus) * 1000:7.3f} ms  p90 {ms(cpus, 9):7.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    schema = f"bench_{secrets.token_hex(4)}"
    admin = psycopg2.connect(args.url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        conn = psycopg2.connect(args.url, options=f"-csearch_path={schema}")
        with conn.cursor() as cur:
            cur.execute(DDL)
        conn.commit()
        rows = make_rows(args.rows)
        engine = PostgresEngine(args.url, 1, 1)

        # The first call on an engine also looks the column types up (once per table).
        with conn.cursor() as cur:
            w0 = time.perf_counter()
            engine.insert_many(cur, TABLE, COLUMNS, rows, "")
            first = time.perf_counter() - w0
        conn.rollback()

        def old(cur: Any) -> None:
            old_insert_many(cur, TABLE, COLUMNS, rows, "")

        def unnest(cur: Any) -> None:
            unnest_insert_many(cur, rows)

        def new(cur: Any) -> None:
            engine.insert_many(cur, TABLE, COLUMNS, rows, "")

        print(
            f"{args.rows} rows x {len(COLUMNS)} columns, {args.calls} calls of each per round (interleaved)"
        )
        print(f"first new call (with the once-per-statement type lookup): {first * 1000:.3f} ms wall")
        variants = {"old execute_values": old, "unnest (not taken)": unnest, "new JSON rows": new}
        for r in range(args.rounds):
            times = measure(conn, list(variants.values()), args.calls)
            for label, (walls, cpus) in zip(variants, times, strict=True):
                print(f"round {r + 1}  " + summary(label, walls, cpus))
        conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


if __name__ == "__main__":
    main()
