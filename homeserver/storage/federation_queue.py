"""The federation sender's per-destination queues (sql/087_federation_sender.sql)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Txn

# (destination, seq, event id of a PDU, an EDU, dedupe key)
OutboxRow = tuple[str, int, str | None, dict[str, Any] | None, str | None]


@dataclass(frozen=True, slots=True)
class QueuedItem:
    """One queued row: a PDU (`event_id`) or an EDU (`edu`)."""

    seq: int
    event_id: str | None
    edu: dict[str, Any] | None


@dataclass(slots=True)
class DestinationState:
    destination: str
    sent_upto: int = 0
    txn_id: str | None = None
    txn_upto: int | None = None
    retry_interval_ms: int = 0
    retry_at_ts: int = 0


class FederationQueueStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def last_seq(self) -> int:
        """The highest sequence number ever given (rows are deleted once sent: look at both)."""
        rows = await self.db.query(
            "federation_last_seq",
            "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM federation_outbox"
            " UNION ALL SELECT MAX(sent_upto) AS m FROM federation_destinations"
            " UNION ALL SELECT MAX(txn_upto) AS m FROM federation_destinations) t",
        )
        return int(rows[0][0] or 0) if rows else 0

    async def enqueue(self, rows: list[OutboxRow]) -> dict[str, int]:
        """Queue rows in one transaction; how many were queued per destination. A row whose
        `dedupe_key` is already queued (or was sent) for its destination is skipped: a batch
        handed again after a crash, a client's retry."""

        def txn_fn(txn: Txn) -> dict[str, int]:
            queued: dict[str, int] = {}
            for destination, seq, event_id, edu, key in rows:
                txn.execute(
                    "INSERT INTO federation_outbox (destination, seq, event_id, edu_json, dedupe_key)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (destination, seq, event_id, json.dumps(edu) if edu is not None else None, key),
                )
                queued[destination] = queued.get(destination, 0) + txn.rowcount
            for destination in {r[0] for r in rows}:
                txn.execute(
                    "INSERT INTO federation_destinations (destination) VALUES (?) ON CONFLICT DO NOTHING",
                    (destination,),
                )
            return queued

        return await self.db.run_interaction("federation_enqueue", txn_fn)

    async def destinations(self) -> list[DestinationState]:
        """Every destination with something queued or in flight (to resume them at start)."""
        rows = await self.db.query(
            "federation_destinations",
            "SELECT d.destination, d.sent_upto, d.txn_id, d.txn_upto, d.retry_interval_ms, d.retry_at_ts"
            " FROM federation_destinations d WHERE d.txn_id IS NOT NULL OR EXISTS"
            " (SELECT 1 FROM federation_outbox o"
            " WHERE o.destination = d.destination AND o.seq > d.sent_upto)",
        )
        return [_state(r) for r in rows]

    async def destination(self, destination: str) -> DestinationState:
        rows = await self.db.query(
            "federation_destination",
            "SELECT destination, sent_upto, txn_id, txn_upto, retry_interval_ms, retry_at_ts"
            " FROM federation_destinations WHERE destination = ?",
            destination,
        )
        return _state(rows[0]) if rows else DestinationState(destination)

    async def items(self, destination: str, after: int, upto: int | None, limit: int) -> list[QueuedItem]:
        """The destination's queued rows after `after` (up to `upto` if given), in order."""
        sql = "SELECT seq, event_id, edu_json FROM federation_outbox WHERE destination = ? AND seq > ?"
        args: list[Any] = [destination, after]
        if upto is not None:
            sql += " AND seq <= ?"
            args.append(upto)
        rows = await self.db.query("federation_queued", sql + " ORDER BY seq LIMIT ?", *args, limit)
        return [QueuedItem(int(r[0]), r[1], json.loads(r[2]) if r[2] is not None else None) for r in rows]

    async def start_next_transaction(
        self,
        destination: str,
        after: int,
        limit: int,
        choose: Callable[[list[QueuedItem]], list[QueuedItem]],
        now_ms: int,
    ) -> tuple[str, list[QueuedItem]] | None:
        """The rows after `after` that `choose` keeps, recorded in the same database
        transaction as the transaction about to be sent, so that a retry (after a restart too)
        sends the same rows under the same id. One trip to the database thread, on the path
        of every message (reading and recording were two). Returns the id
        (`{now_ms}-{last row}`) and the rows, or None when nothing is queued."""

        def txn_fn(txn: Txn) -> tuple[str, list[QueuedItem]] | None:
            rows = txn.query(
                "SELECT seq, event_id, edu_json FROM federation_outbox WHERE destination = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (destination, after, limit),
            )
            items = choose(
                [QueuedItem(int(r[0]), r[1], json.loads(r[2]) if r[2] is not None else None) for r in rows]
            )
            if not items:
                return None
            txn_id = f"{now_ms}-{items[-1].seq}"
            txn.execute(
                "UPDATE federation_destinations SET txn_id = ?, txn_upto = ? WHERE destination = ?",
                (txn_id, items[-1].seq, destination),
            )
            return txn_id, items

        result: tuple[str, list[QueuedItem]] | None = await self.db.run_interaction(
            "federation_next_txn", txn_fn
        )
        return result

    async def pending_count(self, destination: str, after: int) -> int:
        rows = await self.db.query(
            "federation_pending_count",
            "SELECT COUNT(*) FROM federation_outbox WHERE destination = ? AND seq > ?",
            destination,
            after,
        )
        return int(rows[0][0])

    async def transaction_answered(self, destination: str, upto: int) -> None:
        """The remote answered: its rows up to `upto` are done, the backoff is over."""

        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "UPDATE federation_destinations SET sent_upto = ?, txn_id = NULL, txn_upto = NULL,"
                " retry_interval_ms = 0, retry_at_ts = 0 WHERE destination = ?",
                (upto, destination),
            )
            # EDUs that may repeat go at once; rows with a dedupe key stay until `prune`, so
            # that a batch handed again after a crash does not queue them again.
            txn.execute(
                "DELETE FROM federation_outbox WHERE destination = ? AND seq <= ? AND dedupe_key IS NULL",
                (destination, upto),
            )

        await self.db.run_interaction("federation_txn_answered", txn_fn)

    async def prune(self, upto_seq: int) -> int:
        """Delete rows up to `upto_seq` that their destination answered; how many."""
        return await self.db.execute(
            "federation_prune",
            "DELETE FROM federation_outbox WHERE seq <= ? AND seq <= (SELECT d.sent_upto FROM"
            " federation_destinations d WHERE d.destination = federation_outbox.destination)",
            upto_seq,
        )

    async def set_backoff(self, destination: str, interval_ms: int, retry_at_ts: int) -> None:
        await self.db.execute(
            "federation_set_backoff",
            "UPDATE federation_destinations SET retry_interval_ms = ?, retry_at_ts = ? WHERE destination = ?",
            interval_ms,
            retry_at_ts,
            destination,
        )


def _state(r: tuple[Any, ...]) -> DestinationState:
    return DestinationState(
        r[0], int(r[1]), r[2], int(r[3]) if r[3] is not None else None, int(r[4]), int(r[5])
    )
