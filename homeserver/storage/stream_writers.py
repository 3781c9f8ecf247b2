"""Where each event writer's promise stands (homeserver/workers/event_positions.py)."""

from __future__ import annotations

from homeserver.storage.database import Database, Txn

_UPSERT = (
    "INSERT INTO stream_writers (name, position) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
)


def save_promise_txn(txn: Txn, name: str, position: int) -> None:
    """Part of a batch's commit transaction (storage/events.py): the promise moves with it."""
    txn.execute(_UPSERT, (name, position))


class StreamWriterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def promises(self) -> dict[str, int]:
        rows = await self.db.query("stream_writer_promises", "SELECT name, position FROM stream_writers")
        return {r[0]: int(r[1]) for r in rows}

    async def save(self, name: str, position: int) -> None:
        """A writer's promise outside a batch (at start-up)."""
        await self.db.execute("save_stream_writer", _UPSERT, name, position)
