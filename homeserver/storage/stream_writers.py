"""Where each event writer's promise stands (homeserver/workers/event_positions.py), and
which writers stopped gracefully (retired: the others carry their promise meanwhile)."""

from __future__ import annotations

from homeserver.storage.database import Database, Txn

# A promise only moves up: a save that lost a race with a later one must not undo it.
_HIGHER = (
    "CASE WHEN stream_writers.position < excluded.position"
    " THEN excluded.position ELSE stream_writers.position END"
)
_UPSERT = (
    "INSERT INTO stream_writers (name, position) VALUES (?, ?)"
    f" ON CONFLICT (name) DO UPDATE SET position = {_HIGHER}"
)
_RETIRE = (
    "INSERT INTO stream_writers (name, position, retired_at) VALUES (?, ?, ?)"
    f" ON CONFLICT (name) DO UPDATE SET position = {_HIGHER}, retired_at = excluded.retired_at"
)


def save_promise_txn(txn: Txn, name: str, position: int) -> None:
    """Part of a batch's commit transaction (storage/events.py): the promise moves with it."""
    txn.execute(_UPSERT, (name, position))


def _carry_txn(txn: Txn, position: int) -> list[tuple[str, int, int]]:
    txn.execute(
        "UPDATE stream_writers SET position = ? WHERE retired_at IS NOT NULL AND position < ?",
        (position, position),
    )
    # Read after the update, in its transaction: a writer whose return (`rejoin`) committed
    # in between is no longer listed, and one still listed reads this position or a later one.
    rows = txn.query("SELECT name, retired_at, position FROM stream_writers WHERE retired_at IS NOT NULL")
    return [(str(name), int(at), int(pos)) for name, at, pos in rows]


def _rejoin_txn(txn: Txn, name: str) -> None:
    # The update waits for any other writer's `carry` of this row to commit, and after it
    # none can move the row: what `promises()` reads next bounds everything announced for it.
    txn.execute("UPDATE stream_writers SET retired_at = NULL WHERE name = ?", (name,))


class StreamWriterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def promises(self) -> dict[str, int]:
        rows = await self.db.query("stream_writer_promises", "SELECT name, position FROM stream_writers")
        return {r[0]: int(r[1]) for r in rows}

    async def retired(self) -> dict[str, int]:
        """The writers stopped gracefully, and their promise when they stopped."""
        rows = await self.db.query(
            "stream_writers_retired",
            "SELECT name, retired_at FROM stream_writers WHERE retired_at IS NOT NULL",
        )
        return {r[0]: int(r[1]) for r in rows}

    async def save(self, name: str, position: int) -> None:
        """A writer's promise outside a batch (at start-up, and before announcing one that
        passed a failed event's position)."""
        await self.db.execute("save_stream_writer", _UPSERT, name, position)

    async def retire(self, name: str, position: int) -> None:
        """`name` stopped gracefully with nothing in flight: its promise is `position`."""
        await self.db.execute("retire_stream_writer", _RETIRE, name, position, position)

    async def carry(self, position: int) -> list[tuple[str, int, int]]:
        """Move every retired writer's promise up to `position`; (name, retired_at, promise)
        of each retired writer, as saved now."""
        return await self.db.run_interaction("carry_retired_writers", _carry_txn, position)

    async def rejoin(self, name: str) -> None:
        """`name` writes again: from now on no other writer moves its promise."""
        await self.db.run_interaction("rejoin_stream_writer", _rejoin_txn, name)
