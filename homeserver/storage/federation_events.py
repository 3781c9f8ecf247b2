"""Inbound federation rows (sql/084_federation_events.sql): transaction answers, and the
remote events kept out of the timeline (outliers, rejected, soft-failed); plus the state
of a room at a stream position, read from `events` (state is linear in stream order)."""

from __future__ import annotations

import json
from typing import Any

from homeserver.json_encoding import dumps_text
from homeserver.storage.database import Database


class FederationEventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def txn_response(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        rows = await self.db.query(
            "federation_txn_response",
            "SELECT response FROM federation_txns WHERE origin = ? AND txn_id = ?",
            origin,
            txn_id,
        )
        return json.loads(rows[0][0]) if rows else None

    async def store_txn_response(
        self, origin: str, txn_id: str, response: dict[str, Any], now_ms: int
    ) -> None:
        await self.db.execute(
            "federation_store_txn",
            "INSERT INTO federation_txns (origin, txn_id, response, received_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (origin, txn_id) DO NOTHING",
            origin,
            txn_id,
            dumps_text(response),
            now_ms,
        )

    async def prune_txns(self, before_ms: int) -> None:
        """Forget the answers to transactions received before `before_ms`."""
        await self.db.execute(
            "federation_prune_txns", "DELETE FROM federation_txns WHERE received_ts < ?", before_ms
        )

    async def prune_rejected(self, before_ms: int) -> None:
        """Forget rejected remote events received before `before_ms` (sql/085)."""
        await self.db.execute(
            "federation_prune_rejected",
            "DELETE FROM remote_event_outcomes WHERE status = 'rejected' AND received_ts < ?",
            before_ms,
        )

    async def store_outcome(
        self, event_id: str, room_id: str, status: str, reason: str, pdu: dict[str, Any], now_ms: int
    ) -> None:
        """Keep a remote event out of the timeline; an outlier later accepted is replaced."""
        await self.db.execute(
            "federation_store_outcome",
            "INSERT INTO remote_event_outcomes (event_id, room_id, status, reason, json, received_ts)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET status = excluded.status,"
            " reason = excluded.reason WHERE remote_event_outcomes.status = 'outlier'",
            event_id,
            room_id,
            status,
            reason,
            dumps_text(pdu),
            now_ms,
        )

    async def known_status(self, event_id: str) -> tuple[str, str] | None:
        """("accepted", "") for an event in the timeline, else (status, reason) if it is kept
        out of it; None if unknown. One round trip: every received PDU asks."""
        rows = await self.db.query(
            "federation_known_status",
            "SELECT 'accepted', '' FROM events WHERE event_id = ?"
            " UNION ALL SELECT status, reason FROM remote_event_outcomes WHERE event_id = ?",
            event_id,
            event_id,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def outcomes(self, event_ids: list[str]) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """event id -> (status, reason, PDU) of those kept out of the timeline."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self.db.query(
                "federation_outcomes",
                "SELECT event_id, status, reason, json FROM remote_event_outcomes"
                f" WHERE event_id IN ({','.join('?' * len(chunk))})",
                *chunk,
            )
            out.update({r[0]: (r[1], r[2], json.loads(r[3])) for r in rows})
        return out

    async def state_ids_at(self, room_id: str, position: int) -> dict[tuple[str, str], str]:
        """The room's state after the event at stream `position`: per (type, state_key) the
        last state event at or before it."""
        rows = await self.db.query(
            "federation_state_ids_at",
            "SELECT e.type, e.state_key, e.event_id FROM events e JOIN ("
            " SELECT type, state_key, MAX(stream_ordering) AS last FROM events"
            " WHERE room_id = ? AND state_key IS NOT NULL AND stream_ordering <= ?"
            " GROUP BY type, state_key) s ON e.stream_ordering = s.last",
            room_id,
            position,
        )
        return {(r[0], r[1]): r[2] for r in rows}
