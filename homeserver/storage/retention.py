"""Message retention: each room's history floor and the deletion of expired events.

A purge moves a room's floor up first (one transaction), then deletes the expired events
below it in batches, each batch one transaction with every row that names its events
(edges, auth links, relations, redactions of them, transaction ids, the search index), so
a crash between batches leaves whole events, never half of one; the next run finishes
the job. What is kept below the floor: state events (current state and the auth chains
of later events name them), redactions of kept state events (or their content would
come back), and the room's forward extremities (the next event names them).
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.database import Database, Txn, in_chunks
from homeserver.storage.events import refresh_threads_txn

_CHUNK = 500


def _marks(n: int) -> str:
    return ",".join("?" * n)


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def retention_states(self) -> list[tuple[str, str | None]]:
        """(room id, JSON of its current unredacted m.room.retention event or None) of every room."""
        rows = await self.db.query(
            "retention_states",
            "SELECT m.room_id, e.json FROM rooms m"
            " LEFT JOIN current_state_events c ON c.room_id = m.room_id"
            " AND c.type = 'm.room.retention' AND c.state_key = ''"
            " LEFT JOIN events e ON e.event_id = c.event_id"
            " AND NOT EXISTS (SELECT 1 FROM redactions r WHERE r.redacts = e.event_id)"
            " ORDER BY m.room_id",
        )
        return [(r[0], r[1]) for r in rows]

    async def history_floor(self, room_id: str) -> int:
        rows = await self.db.query(
            "history_floor", "SELECT stream_ordering FROM room_history_floor WHERE room_id = ?", room_id
        )
        return int(rows[0][0]) if rows else 0

    async def raise_floor(self, room_id: str, before_ts: int) -> int | None:
        """Move the room's floor up to its newest event sent before `before_ts`, but below its
        forward extremities; the new floor, or None if it did not move."""

        def raise_txn(txn: Txn) -> int | None:
            row = txn.query_one(
                "SELECT MAX(stream_ordering) FROM events WHERE room_id = ? AND origin_server_ts < ?",
                (room_id, before_ts),
            )
            if row is None or row[0] is None:
                return None
            target = int(row[0])
            latest = txn.query_one(
                "SELECT MIN(e.stream_ordering) FROM event_forward_extremities x"
                " JOIN events e ON e.event_id = x.event_id WHERE x.room_id = ?",
                (room_id,),
            )
            if latest is not None and latest[0] is not None:
                target = min(target, int(latest[0]) - 1)
            old = txn.query_one(
                "SELECT stream_ordering FROM room_history_floor WHERE room_id = ?", (room_id,)
            )
            if target <= (int(old[0]) if old else 0):
                return None
            txn.execute(
                "INSERT INTO room_history_floor (room_id, stream_ordering) VALUES (?, ?)"
                " ON CONFLICT (room_id) DO UPDATE SET stream_ordering = excluded.stream_ordering",
                (room_id, target),
            )
            return target

        return await self.db.run_interaction("raise_history_floor", raise_txn)

    async def purge_batch(self, room_id: str, floor: int, limit: int) -> list[str]:
        """Delete up to `limit` of the room's oldest purgeable events at or below `floor`, in one
        transaction; their ids (empty when nothing is left)."""
        return await self.db.run_interaction(
            "purge_history_batch", purge_events_txn, self.db.dialect, room_id, floor, limit
        )

    async def pending_purged(self, limit: int) -> list[tuple[str, str]]:
        """(event id, room id) of purged events plugins have not been told about."""
        rows = await self.db.query(
            "pending_purged",
            "SELECT event_id, room_id FROM purged_events_pending ORDER BY room_id, event_id LIMIT ?",
            limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def clear_pending(self, event_ids: Sequence[str]) -> None:
        def clear_txn(txn: Txn) -> None:
            for start in range(0, len(event_ids), _CHUNK):
                chunk = list(event_ids[start : start + _CHUNK])
                txn.execute(
                    f"DELETE FROM purged_events_pending WHERE event_id IN ({_marks(len(chunk))})", chunk
                )

        await self.db.run_interaction("clear_pending_purged", clear_txn)


def purge_events_txn(txn: Txn, dialect: str, room_id: str, floor: int, limit: int) -> list[str]:
    """Delete up to `limit` of the room's oldest non-state events at or below `floor`, with
    what points at them (search rows, edges, auth links, relations, redactions of them, txn
    ids), keeping the room's forward extremities and redactions of state events; the ids go
    to `purged_events_pending` for plugins (media). Retention and the admin purge share it."""
    rows = txn.query(
        "SELECT e.event_id, e.stream_ordering FROM events e WHERE e.room_id = ? AND e.stream_ordering <= ?"
        " AND e.state_key IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM event_forward_extremities x WHERE x.event_id = e.event_id)"
        # A redaction of a kept (state) event stays: without it the event's content returns.
        " AND NOT EXISTS (SELECT 1 FROM redactions r JOIN events t ON t.event_id = r.redacts"
        " WHERE r.event_id = e.event_id AND t.state_key IS NOT NULL)"
        " ORDER BY e.stream_ordering LIMIT ?",
        (room_id, floor, limit),
    )
    ids = [r[0] for r in rows]
    if not ids:
        return []
    marks = _marks(len(ids))
    if dialect == "postgres":
        txn.execute(f"DELETE FROM event_search WHERE event_id IN ({marks})", ids)
    else:
        positions = [r[1] for r in rows]
        txn.execute(f"DELETE FROM event_search_fts WHERE rowid IN ({marks})", positions)
        txn.execute(f"DELETE FROM event_search WHERE stream_ordering IN ({marks})", positions)
    # The threads these events replied in: their place in the thread list is recomputed below.
    roots = [
        r[0]
        for r in txn.query(
            "SELECT DISTINCT relates_to FROM event_relations"
            f" WHERE rel_type = 'm.thread' AND event_id IN ({marks})",
            ids,
        )
    ]
    for table, column in (
        ("event_edges", "event_id"),
        ("event_auth", "event_id"),
        ("event_relations", "event_id"),
        ("redactions", "redacts"),
        ("event_txn_ids", "event_id"),
        ("events", "event_id"),
    ):
        txn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
    for table in ("threads", "thread_participants"):  # purged roots: no longer listed
        txn.execute(f"DELETE FROM {table} WHERE root_id IN ({marks})", ids)
    for chunk in in_chunks(roots):
        refresh_threads_txn(txn, _marks(len(chunk)), chunk)
    txn.insert_many(
        "purged_events_pending",
        ("event_id", "room_id"),
        [(event_id, room_id) for event_id in ids],
        "ON CONFLICT (event_id) DO NOTHING",
    )
    return ids
