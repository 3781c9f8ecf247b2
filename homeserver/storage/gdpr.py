"""GDPR: an erased account's rows, and data export jobs (docs/gdpr.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.json_encoding import dumps_text
from homeserver.storage.database import Database, Txn, in_chunks, marks
from homeserver.storage.events import (
    _EVENT_COLUMNS,
    _EVENT_FROM,
    StoredEvent,
    _row_to_event,
    refresh_threads_txn,
)

# Tables holding only the user's own data, keyed by `user_id`: emptied on erasure.
# (users, devices and tokens go through their own stores; events are pruned, not deleted.)
_PERSONAL_TABLES = (
    "account_data",
    "account_data_usage",
    "user_filters",
    "presence",
    "delivery_positions",
    "receipts",
    "cross_signing_keys",
    "room_key_backups",
    "room_key_backup_versions",
    "openid_tokens",
    "forgotten_rooms",
    "user_directory",
    "user_directory_terms",
    "event_txn_ids",
)


@dataclass(frozen=True)
class ExportRow:
    export_id: str
    user_id: str
    state: str  # running | done | failed
    done_steps: int
    total_steps: int
    created_ts: int
    finished_ts: int | None
    size: int | None
    error: str | None


_EXPORT_COLUMNS = "export_id, user_id, state, done_steps, total_steps, created_ts, finished_ts, size, error"


class GdprStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Erasure -------------------------------------------------------------------

    async def mark_erased(self, user_id: str, now_ms: int) -> None:
        await self.db.execute(
            "mark_erased",
            "INSERT INTO erased_users (user_id, erased_ts) VALUES (?, ?) ON CONFLICT (user_id) DO NOTHING",
            user_id,
            now_ms,
        )

    async def is_erased(self, user_id: str) -> bool:
        rows = await self.db.query("is_erased", "SELECT 1 FROM erased_users WHERE user_id = ?", user_id)
        return bool(rows)

    async def events_sent_by(self, user_id: str, after: int, limit: int) -> list[tuple[StoredEvent, str]]:
        """(event, room version) of the user's events past stream position `after`, oldest
        first, at most `limit` (a page of an erasure or an export)."""
        rows = await self.db.query(
            "events_sent_by",
            f"SELECT {_EVENT_COLUMNS}, m.room_version FROM {_EVENT_FROM}"
            " JOIN rooms m ON m.room_id = e.room_id"
            " WHERE e.sender = ? AND e.stream_ordering > ? ORDER BY e.stream_ordering LIMIT ?",
            user_id,
            after,
            limit,
        )
        return [(_row_to_event(r), str(r[6])) for r in rows]

    async def member_events_about(self, user_id: str) -> list[tuple[StoredEvent, str]]:
        """(event, room version) of every m.room.member event whose state key is the user, by
        whoever sent it (an invite carries the invitee's display name and avatar)."""
        rows = await self.db.query(
            "member_events_about",
            f"SELECT {_EVENT_COLUMNS}, m.room_version FROM room_memberships mm"
            " JOIN events e ON e.event_id = mm.event_id LEFT JOIN redactions r ON r.redacts = e.event_id"
            " JOIN rooms m ON m.room_id = e.room_id"
            " WHERE mm.user_id = ? ORDER BY e.stream_ordering",
            user_id,
        )
        return [(_row_to_event(r), str(r[6])) for r in rows]

    async def count_events_sent_by(self, user_id: str) -> int:
        rows = await self.db.query(
            "count_events_sent_by", "SELECT COUNT(*) FROM events WHERE sender = ?", user_id
        )
        return int(rows[0][0]) if rows else 0

    async def prune_events(self, pruned: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """Replace each (event id, pruned PDU, unsigned extras) in one transaction, and drop
        what was derived from the old content: relations (an erased reaction no longer counts)."""

        def prune_txn(txn: Txn) -> None:
            ids = [event_id for event_id, _, _ in pruned]
            roots: set[str] = set()  # the threads of erased replies: recomputed once they no longer relate
            for chunk in in_chunks(ids):
                rows = txn.query(
                    "SELECT relates_to FROM event_relations"
                    f" WHERE rel_type = 'm.thread' AND event_id IN ({marks(len(chunk))})",
                    chunk,
                )
                roots.update(r[0] for r in rows)
            for event_id, pdu, unsigned in pruned:
                txn.execute(
                    "UPDATE events SET json = ?, unsigned_extra = ? WHERE event_id = ?",
                    (dumps_text(pdu), dumps_text(unsigned) if unsigned else None, event_id),
                )
                txn.execute("DELETE FROM event_relations WHERE event_id = ?", (event_id,))
            for chunk in in_chunks(sorted(roots)):
                refresh_threads_txn(txn, marks(len(chunk)), chunk)

        await self.db.run_interaction("prune_events", prune_txn)

    async def delete_personal_rows(self, user_id: str) -> None:
        """Empty every table that holds only this user's own data."""

        def delete_txn(txn: Txn) -> None:
            for table in _PERSONAL_TABLES:
                txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))

        await self.db.run_interaction("delete_personal_rows", delete_txn)

    # Export: what the user asked for ---------------------------------------------

    async def account_data_of(self, user_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(room id or '', type, content) of every account data entry of the user."""
        rows = await self.db.query(
            "account_data_of",
            "SELECT room_id, type, content FROM account_data WHERE user_id = ? ORDER BY room_id, type",
            user_id,
        )
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    async def memberships_of(self, user_id: str) -> list[tuple[str, str, int]]:
        """(room id, membership, position) of each membership change of the user, oldest first."""
        rows = await self.db.query(
            "memberships_of",
            "SELECT room_id, membership, stream_ordering FROM room_memberships WHERE user_id = ?"
            " ORDER BY stream_ordering",
            user_id,
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    # Export jobs -------------------------------------------------------------------

    async def create_export(self, export_id: str, user_id: str, now_ms: int) -> None:
        await self.db.execute(
            "create_export",
            "INSERT INTO user_exports (export_id, user_id, state, created_ts) VALUES (?, ?, 'running', ?)",
            export_id,
            user_id,
            now_ms,
        )

    async def get_export(self, export_id: str) -> ExportRow | None:
        rows = await self.db.query(
            "get_export", f"SELECT {_EXPORT_COLUMNS} FROM user_exports WHERE export_id = ?", export_id
        )
        return ExportRow(*rows[0]) if rows else None

    async def exports_of(self, user_id: str) -> list[ExportRow]:
        rows = await self.db.query(
            "exports_of",
            f"SELECT {_EXPORT_COLUMNS} FROM user_exports WHERE user_id = ? ORDER BY created_ts",
            user_id,
        )
        return [ExportRow(*r) for r in rows]

    async def running_exports(self) -> list[ExportRow]:
        rows = await self.db.query(
            "running_exports", f"SELECT {_EXPORT_COLUMNS} FROM user_exports WHERE state = 'running'"
        )
        return [ExportRow(*r) for r in rows]

    async def set_export_progress(self, export_id: str, done: int, total: int) -> None:
        await self.db.execute(
            "set_export_progress",
            "UPDATE user_exports SET done_steps = ?, total_steps = ? WHERE export_id = ?",
            done,
            total,
            export_id,
        )

    async def finish_export(
        self, export_id: str, state: str, now_ms: int, size: int | None, error: str | None
    ) -> None:
        await self.db.execute(
            "finish_export",
            "UPDATE user_exports SET state = ?, finished_ts = ?, size = ?, error = ? WHERE export_id = ?",
            state,
            now_ms,
            size,
            error,
            export_id,
        )

    async def delete_export(self, export_id: str) -> None:
        await self.db.execute("delete_export", "DELETE FROM user_exports WHERE export_id = ?", export_id)

    async def delete_exports_of(self, user_id: str) -> list[str]:
        """Forget the user's exports; their ids (whose files the caller removes)."""

        def delete_txn(txn: Txn) -> list[str]:
            ids = [
                r[0] for r in txn.query("SELECT export_id FROM user_exports WHERE user_id = ?", (user_id,))
            ]
            txn.execute("DELETE FROM user_exports WHERE user_id = ?", (user_id,))
            return ids

        result: list[str] = await self.db.run_interaction("delete_exports_of", delete_txn)
        return result
