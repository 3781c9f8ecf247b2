"""Micro-benchmark: how fast the retention purge deletes a room's expired history.

    .venv/bin/python -m bench.retention_purge_micro [--url URL] [--events 20000] [--batch 500]

Fills one room with `events` messages (each with its edge, auth links, a transaction id
and a reply relation for one in ten), stored through the server's own write path, then
times the purge's storage steps (storage/retention.py): moving the floor, and the
batches that delete the events with every row naming them. Without `--url`, a SQLite
file in a temporary directory; with a PostgreSQL URL, the database must be empty.
Reports events deleted per second and the median and p90 time of one batch.
"""

from __future__ import annotations

import argparse
import json
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
from homeserver.storage.retention import RetentionStore

ROOM = "!bench:example.org"
START_MS = 1_700_000_000_000


def make_items(n: int) -> list[PersistItem]:
    items: list[PersistItem] = []
    create_id = "$" + secrets.token_urlsafe(32)
    create = {"type": "m.room.create", "state_key": "", "sender": "@a:example.org", "content": {}}
    prev = create_id
    for i in range(n + 1):
        event_id = create_id if i == 0 else "$" + secrets.token_urlsafe(32)
        pdu: dict[str, Any] = (
            dict(create)
            if i == 0
            else {
                "type": "m.room.message",
                "sender": f"@user{i % 50}:example.org",
                "content": {"msgtype": "m.text", "body": f"message {i}"},
            }
        )
        if i and i % 10 == 0:
            pdu["content"]["m.relates_to"] = {"rel_type": "m.thread", "event_id": prev}
        pdu.update(
            room_id=ROOM,
            depth=i + 1,
            origin_server_ts=START_MS + i,
            prev_events=[prev] if i else [],
            auth_events=[create_id] if i else [],
        )
        ev = StoredEvent(event_id, ROOM, i + 1, pdu)
        txn = (pdu["sender"], "DEVICE", f"txn{i}") if i else None
        items.append(PersistItem(ev, "10", is_create=i == 0, txn=txn, now_ms=START_MS + i))
        prev = event_id
    return items


async def run(url: str, events: int, batch: int) -> dict[str, Any]:
    db = Database(engine_from_url(url, 2, 4))
    try:
        await migrate(db)
        store = EventStore(db)
        items = make_items(events)
        for start in range(0, len(items), 1000):
            await store.persist_events(items[start : start + 1000])
        retention = RetentionStore(db)
        began = time.perf_counter()
        # Everything but the newest event is expired.
        floor = await retention.raise_floor(ROOM, START_MS + events + 1)
        assert floor is not None
        batches: list[float] = []
        deleted = 0
        while True:
            t = time.perf_counter()
            ids = await retention.purge_batch(ROOM, floor, batch)
            batches.append(time.perf_counter() - t)
            deleted += len(ids)
            if len(ids) < batch:
                break
        elapsed = time.perf_counter() - began
        batches.sort()
        return {
            "engine": db.dialect,
            "events": deleted,
            "batch": batch,
            "seconds": round(elapsed, 3),
            "events_per_s": round(deleted / elapsed),
            "batch_ms_median": round(statistics.median(batches) * 1000, 1),
            "batch_ms_p90": round(batches[int(len(batches) * 0.9)] * 1000, 1),
        }
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="postgresql://... of an empty database (default: a SQLite file)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    def go(_reactor: Any) -> Deferred[None]:
        async def body() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                url = args.url or f"sqlite:///{tmp}/bench.db"
                print(json.dumps(await run(url, args.events, args.batch)))

        return Deferred.fromCoroutine(body())

    task.react(go)


if __name__ == "__main__":
    main()
