"""Where each durable consumer of the committed-event stream is (core/event_stream.py)."""

from __future__ import annotations

from homeserver.storage.database import Database


class StreamConsumerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, name: str) -> tuple[int, int] | None:
        """(position, handed_upto) of the consumer, or None if it never ran."""
        rows = await self.db.query(
            "load_stream_consumer", "SELECT position, handed_upto FROM stream_consumers WHERE name = ?", name
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    async def save(self, name: str, position: int, handed_upto: int, now_ms: int) -> None:
        await self.db.execute(
            "save_stream_consumer",
            "INSERT INTO stream_consumers (name, position, handed_upto, updated_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
            " handed_upto = excluded.handed_upto, updated_ts = excluded.updated_ts",
            name,
            position,
            handed_upto,
            now_ms,
        )

    async def all(self) -> dict[str, tuple[int, int]]:
        rows = await self.db.query(
            "stream_consumers", "SELECT name, position, handed_upto FROM stream_consumers"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}
