"""Where each event writer's promise stands (homeserver/workers/event_positions.py), and
which writers stopped gracefully (retired: the others carry their promise meanwhile) or
were fenced (force-retired by another writer once dead: ADR 0008)."""

from __future__ import annotations

from homeserver.errors import ServiceUnavailable
from homeserver.storage.database import Database, Txn

# The SQLSTATE stream_writer_save() raises for a fenced writer (sql/099, 100, PostgreSQL only).
FENCED_SQLSTATE = "HSF01"
# The advisory lock of an event writer, held by it on a connection of its own while it lives
# (storage/writer_lock.py). Advisory locks are per database: the key names the schema too.
LOCK_KEY = "hashtext(current_schema() || '/event writer/' || ?)"


class WriterFenced(ServiceUnavailable):
    """Another writer retired this one while it looked dead: it must store nothing more.
    The request's events were rolled back; a retry (same transaction id) is stored once."""

    def __init__(self, name: str = "") -> None:
        super().__init__("This event writer was replaced while it did not answer; try again")
        self.writer = name


def is_fenced(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a fenced writer's refused save."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, WriterFenced) or getattr(seen, "pgcode", None) == FENCED_SQLSTATE:
            return True
        seen = seen.__cause__
    return False


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
    " WHERE stream_writers.retired_at IS NULL"
)
# On PostgreSQL, only the instance started last retires its row (sql/100).
_RETIRE_EPOCH = f"{_RETIRE} AND stream_writers.epoch = ?"


def save_promise_txn(txn: Txn, name: str, position: int, epoch: int = 0) -> None:
    """Part of a batch's commit transaction (storage/events.py): the promise moves with it.
    On PostgreSQL the save raises if the writer was fenced, or started again since `epoch`
    (the start this process made, `rejoin`), and the whole commit rolls back."""
    if txn.engine.name == "postgres":
        txn.execute("SELECT stream_writer_save(?, ?, ?)", (name, position, epoch))
    else:
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


def _fence_txn(txn: Txn, name: str) -> int | None:
    # The writer's own lock, for this transaction: taken only if its process holds it no more
    # (dead, or its connection cut). A writer starting meanwhile waits for it before rejoining.
    # A writer stopped inside a transaction on its row must not hang the fencer: it tries
    # again at its next heartbeat.
    txn.execute("SET LOCAL lock_timeout = '2s'")
    row = txn.query_one(f"SELECT pg_try_advisory_xact_lock({LOCK_KEY})", (name,))
    if not row or not row[0]:
        return None
    # Waits for a commit of the writer that holds the row, then re-reads it: every event the
    # writer stored lies at or below the position it is retired at.
    row = txn.query_one(
        "UPDATE stream_writers SET retired_at = position WHERE name = ? AND retired_at IS NULL"
        " RETURNING retired_at",
        (name,),
    )
    if row is None:  # already retired (by a graceful stop, or another writer's fence)
        row = txn.query_one("SELECT retired_at FROM stream_writers WHERE name = ?", (name,))
    return int(row[0]) if row and row[0] is not None else None


def _rejoin_txn(txn: Txn, name: str) -> int:
    # The update waits for any other writer's `carry` of this row to commit, and after it
    # none can move the row: what `promises()` reads next bounds everything announced for it.
    if txn.engine.name != "postgres":
        txn.execute("UPDATE stream_writers SET retired_at = NULL WHERE name = ?", (name,))
        return 0
    # A new epoch: an earlier instance of this writer still running (fenced while stopped or
    # cut off) saves nothing more, so it cannot commit below where this one starts.
    row = txn.query_one(
        "UPDATE stream_writers SET retired_at = NULL, epoch = epoch + 1 WHERE name = ? RETURNING epoch",
        (name,),
    )
    return int(row[0]) if row else 0


class StreamWriterStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # The epoch each writer of this process started in (`rejoin`), named by its saves.
        self._epochs: dict[str, int] = {}

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
        passed a failed event's position). @raise WriterFenced: another writer retired it."""
        try:
            epoch = self._epochs.get(name, 0)
            await self.db.run_interaction("save_stream_writer", save_promise_txn, name, position, epoch)
        except Exception as error:
            if is_fenced(error):
                raise WriterFenced(name) from error
            raise

    async def retire(self, name: str, position: int) -> None:
        """`name` stopped gracefully with nothing in flight: its promise is `position`.
        @raise WriterFenced: another writer retired it first (its promise is not to be
        announced: what it would claim is saved nowhere)."""
        sql, args = _RETIRE, [name, position, position]
        if self.db.dialect == "postgres":
            sql, args = _RETIRE_EPOCH, [*args, self._epochs.get(name, 0)]
        retired = await self.db.execute("retire_stream_writer", sql, *args)
        if retired == 0:
            raise WriterFenced(name)

    async def fence(self, name: str) -> int | None:
        """Force-retire writer `name` if no process holds its lock; the
        position it is retired at (now or before), or None (alive, or it never wrote)."""
        if self.db.dialect != "postgres":
            return None
        return await self.db.run_interaction("fence_stream_writer", _fence_txn, name)

    async def carry(self, position: int) -> list[tuple[str, int, int]]:
        """Move every retired writer's promise up to `position`; (name, retired_at, promise)
        of each retired writer, as saved now."""
        return await self.db.run_interaction("carry_retired_writers", _carry_txn, position)

    async def rejoin(self, name: str) -> int:
        """`name` writes again: from now on no other writer moves its promise, and no earlier
        instance of it saves anything. The epoch its saves name (PostgreSQL; 0 elsewhere)."""
        epoch: int = await self.db.run_interaction("rejoin_stream_writer", _rejoin_txn, name)
        self._epochs[name] = epoch
        return epoch
