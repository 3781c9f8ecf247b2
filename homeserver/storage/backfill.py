"""Backfilled history (sql/097_backfill.sql): where a room's history we hold begins, the
positions below it for older events, and the history visibility marks of each batch."""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.database import Database
from homeserver.storage.events import PersistItem, persist_events_txn


class BackfillStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def lowest_position(self) -> int:
        """The lowest stream position in use (events and marks), or 0 when none is below it:
        the next backfilled event takes the one below (0 itself is never an event's)."""
        rows = await self.db.query(
            "backfill_lowest_position",
            "SELECT MIN(p) FROM (SELECT MIN(stream_ordering) AS p FROM events"
            " UNION ALL SELECT MIN(stream_ordering) AS p FROM backfill_visibility) x",
        )
        lowest = rows[0][0] if rows and rows[0][0] is not None else 0
        return min(int(lowest), 0)

    async def backward_extremities(self, room_id: str, limit: int) -> list[tuple[str, int]]:
        """prev_events of the room's events that we hold neither in the timeline nor as a
        rejected or soft-failed event: where its history we hold begins. Each with the
        depth of the deepest event naming it, those first (the gap a client paging back
        reaches first)."""
        rows = await self.db.query(
            "backfill_backward_extremities",
            "SELECT g.prev_event_id, MAX(e.depth) AS d FROM event_edges g"
            " JOIN events e ON e.event_id = g.event_id"
            " WHERE e.room_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM events x WHERE x.event_id = g.prev_event_id)"
            " AND NOT EXISTS (SELECT 1 FROM remote_event_outcomes o"
            "  WHERE o.event_id = g.prev_event_id AND o.status <> 'outlier')"
            " GROUP BY g.prev_event_id ORDER BY d DESC, g.prev_event_id LIMIT ?",
            room_id,
            limit,
        )
        return [(r[0], int(r[1])) for r in rows]

    async def write(
        self, room_id: str, items: Sequence[PersistItem], marks: Sequence[tuple[int, str]]
    ) -> None:
        """The visibility marks, then the events (historical items). A mark without its
        events (a crash between) is harmless: it sits below them, where nothing else is."""
        await self.db.run_interaction(
            "backfill_marks",
            lambda txn: txn.executemany(
                "INSERT INTO backfill_visibility (room_id, stream_ordering, visibility) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(room_id, position, visibility) for position, visibility in marks],
            ),
        )
        await self.db.run_write("backfill_events", persist_events_txn, items)

    async def visibility_marks(self, room_id: str) -> list[tuple[int, str]]:
        rows = await self.db.query(
            "backfill_visibility_marks",
            "SELECT stream_ordering, visibility FROM backfill_visibility WHERE room_id = ?"
            " ORDER BY stream_ordering",
            room_id,
        )
        return [(int(r[0]), r[1]) for r in rows]
