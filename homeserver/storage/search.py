"""The full-text index of messages: PostgreSQL `tsvector` + GIN, SQLite FTS5.

Both engines index the same rows (core/search_index.py decides which events and what
text) and answer the same query: the events of some rooms whose text holds every
word of the search, each word as a prefix ("meet" finds "meeting"), both engines
stemming English words. Ranked by relevance (`ts_rank_cd`, FTS5's `bm25`) or by
recency; pages by position (recency) or offset (rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.database import Database, Txn, in_list

# Longer texts are indexed by their start (a tsvector is capped at 1 MB).
MAX_INDEXED_CHARS = 65_536
# The indexed type whose content goes when its sender is erased (core/erasure.py; room
# names and topics are the room's and stay). The indexer hands over events as they were
# committed, so a write skips these once the sender is marked erased.
ERASED_WITH_SENDER = "m.room.message"


@dataclass(frozen=True, slots=True)
class SearchRow:
    event_id: str
    room_id: str
    sender: str
    event_type: str
    key: str
    stream_ordering: int
    origin_server_ts: int
    text: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    event_id: str
    room_id: str
    stream_ordering: int
    rank: float


class SearchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def index(self, rows: Sequence[SearchRow], removed: Sequence[str]) -> None:
        """Add `rows` (again: a row already there is replaced) and drop the events `removed`
        (redacted), in one transaction."""
        if not rows and not removed:
            return
        if self.db.dialect == "postgres":
            await self.db.run_interaction("search_index_pg", _index_pg_txn, rows, removed)
        else:
            await self.db.run_interaction("search_index_sqlite", _index_sqlite_txn, rows, removed)

    async def search(
        self,
        words: Sequence[str],
        room_ids: Sequence[str],
        keys: Sequence[str],
        by_rank: bool,
        before: int | None,
        offset: int,
        limit: int,
    ) -> list[SearchHit]:
        """Up to `limit` events of `room_ids` holding every word (as a prefix), best first
        (by rank, or newest first); `before`: only positions below it; `offset`: skip as many."""
        if not words or not room_ids or not keys:
            return []
        sql, args = _query(self.db.dialect, words, room_ids, keys, by_rank, before, offset, limit)
        rows = await self.db.query("search_events", sql, *args)
        return [SearchHit(r[0], r[1], int(r[2]), float(r[3] or 0.0)) for r in rows]


def _index_pg_txn(txn: Txn, rows: Sequence[SearchRow], removed: Sequence[str]) -> None:
    # One statement for the batch (arrays, unnested server-side) and the COMMIT in the same
    # round trip: the indexer runs beside every steady send, and a statement per row cost a
    # round trip each, on a pool thread taking the GIL from the reactor between them.
    latest = list({row.event_id: row for row in rows}.values())  # ON CONFLICT: a row once per statement
    with txn.batched(commit=True):
        if latest:
            txn.execute(
                "INSERT INTO event_search (event_id, room_id, sender, type, key, stream_ordering,"
                " origin_server_ts, vector) SELECT u.event_id, u.room_id, u.sender, u.type, u.key,"
                " u.stream_ordering, u.ts, to_tsvector('english', u.text) FROM unnest(?::text[],"
                " ?::text[], ?::text[], ?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::text[])"
                " AS u(event_id, room_id, sender, type, key, stream_ordering, ts, text)"
                " WHERE NOT (u.type = ? AND EXISTS (SELECT 1 FROM erased_users x WHERE x.user_id = u.sender))"
                " ON CONFLICT (event_id) DO UPDATE SET vector = excluded.vector",
                (
                    [r.event_id for r in latest],
                    [r.room_id for r in latest],
                    [r.sender for r in latest],
                    [r.event_type for r in latest],
                    [r.key for r in latest],
                    [r.stream_ordering for r in latest],
                    [r.origin_server_ts for r in latest],
                    [r.text[:MAX_INDEXED_CHARS] for r in latest],
                    ERASED_WITH_SENDER,
                ),
            )
        if removed:
            txn.execute("DELETE FROM event_search WHERE event_id = ANY(?)", (list(removed),))


def _index_sqlite_txn(txn: Txn, rows: Sequence[SearchRow], removed: Sequence[str]) -> None:
    for row in rows:
        if row.event_type == ERASED_WITH_SENDER and txn.query_one(
            "SELECT 1 FROM erased_users WHERE user_id = ?", (row.sender,)
        ):
            continue
        # Replaced whole when handed over again (a durable consumer's repeat after a crash).
        txn.execute("DELETE FROM event_search_fts WHERE rowid = ?", (row.stream_ordering,))
        txn.execute(
            "INSERT OR REPLACE INTO event_search (stream_ordering, event_id, room_id, sender, type, key,"
            " origin_server_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.stream_ordering,
                row.event_id,
                row.room_id,
                row.sender,
                row.event_type,
                row.key,
                row.origin_server_ts,
            ),
        )
        txn.execute(
            "INSERT INTO event_search_fts (rowid, value) VALUES (?, ?)",
            (row.stream_ordering, row.text[:MAX_INDEXED_CHARS]),
        )
    for event_id in removed:
        found = txn.query_one("SELECT stream_ordering FROM event_search WHERE event_id = ?", (event_id,))
        if found is not None:
            txn.execute("DELETE FROM event_search_fts WHERE rowid = ?", (found[0],))
            txn.execute("DELETE FROM event_search WHERE stream_ordering = ?", (found[0],))


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _query(
    dialect: str,
    words: Sequence[str],
    room_ids: Sequence[str],
    keys: Sequence[str],
    by_rank: bool,
    before: int | None,
    offset: int,
    limit: int,
) -> tuple[str, list[object]]:
    """The search query of `dialect`; both return (event_id, room_id, stream_ordering, rank),
    higher rank better."""
    if dialect == "postgres":
        # Words are \w+ runs (core/search.py), so nothing in them is tsquery syntax.
        text = " & ".join(f"{w}:*" for w in words)
        matches = "s.vector @@ to_tsquery('english', ?)"
        frm = "event_search s"
        rank, rank_args = "ts_rank_cd(s.vector, to_tsquery('english', ?))", [text]
        best_first = "rank DESC"
    else:
        # Each word quoted (a string, never an FTS5 operator) and a prefix.
        text = " AND ".join(f'"{w}"*' for w in words)
        matches = "f.event_search_fts MATCH ?"
        # The matches first (CROSS JOIN keeps SQLite's order): driven by a room's events
        # instead, the planner probes the full-text index once per event of the room.
        frm = "event_search_fts f CROSS JOIN event_search s ON s.stream_ordering = f.rowid"
        # bm25 is lower for better matches: negated, so higher is better on both engines.
        rank, rank_args = "-f.rank", []
        best_first = "f.rank"
    in_rooms, room_args = in_list(dialect, "s.room_id", room_ids)
    where = f"{matches} AND {in_rooms} AND s.key IN ({_marks(len(keys))})"
    args: list[object] = [*rank_args, text, *room_args, *keys]
    if before is not None:
        where += " AND s.stream_ordering < ?"
        args.append(before)
    order = f"{best_first}, s.stream_ordering DESC" if by_rank else "s.stream_ordering DESC"
    sql = (
        f"SELECT s.event_id, s.room_id, s.stream_ordering, {rank} AS rank FROM {frm} WHERE {where}"
        f" ORDER BY {order} LIMIT ? OFFSET ?"
    )
    return sql, [*args, limit, offset]
