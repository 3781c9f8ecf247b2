"""The push plugin's own tables (plugins/push/sql): delivery progress per pusher, the
parked notifications and badge updates, and the receipts position badges are settled to.
Each function runs in one transaction through `api.run_db`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.plugins import PluginApi, Txn


@dataclass(frozen=True)
class Parked:
    pusher_id: str
    position: int
    event_id: str
    body: dict[str, Any]
    first_failed_ts: int


class DeliveryStore:
    def __init__(self, api: PluginApi) -> None:
        self.api = api

    async def progress(self) -> dict[str, int]:
        """Every pusher's last settled position."""
        rows = await self.api.run_db(
            "load_progress", _query_txn, "SELECT pusher_id, position FROM push_progress"
        )
        return {r[0]: int(r[1]) for r in rows}

    async def save_progress(self, positions: dict[str, int]) -> None:
        await self.api.run_db("save_progress", _save_progress_txn, positions)

    async def park(self, parked: Parked) -> None:
        """Keep a notification to retry, and count it settled for its pusher, in one go."""
        await self.api.run_db("park", _park_txn, parked)

    async def parked(self, pusher_id: str, limit: int) -> list[Parked]:
        rows = await self.api.run_db(
            "parked",
            _query_txn,
            "SELECT pusher_id, position, event_id, body, first_failed_ts FROM push_parked"
            " WHERE pusher_id = ? ORDER BY position LIMIT ?",
            (pusher_id, limit),
        )
        return [Parked(r[0], int(r[1]), r[2], json.loads(r[3]), int(r[4])) for r in rows]

    async def parked_pushers(self) -> list[str]:
        """The pushers with parked notifications or a parked badge update."""
        rows = await self.api.run_db(
            "parked_pushers",
            _query_txn,
            "SELECT pusher_id FROM push_parked UNION SELECT pusher_id FROM push_badge_parked",
        )
        return [r[0] for r in rows]

    async def park_badge(self, pusher_id: str, now_ms: int) -> None:
        """Keep a badge update to send after the pusher's parked notifications (the first
        failure's time stays: it is given up `give_up_after` from there)."""
        await self.api.run_db(
            "park_badge",
            _execute_txn,
            "INSERT INTO push_badge_parked (pusher_id, first_failed_ts) VALUES (?, ?)"
            " ON CONFLICT (pusher_id) DO NOTHING",
            (pusher_id, now_ms),
        )

    async def parked_badge(self, pusher_id: str) -> int | None:
        """When the pusher's parked badge update first failed (ms), None without one."""
        rows = await self.api.run_db(
            "parked_badge",
            _query_txn,
            "SELECT first_failed_ts FROM push_badge_parked WHERE pusher_id = ?",
            (pusher_id,),
        )
        return int(rows[0][0]) if rows else None

    async def unpark_badge(self, pusher_id: str) -> None:
        await self.api.run_db(
            "unpark_badge", _execute_txn, "DELETE FROM push_badge_parked WHERE pusher_id = ?", (pusher_id,)
        )

    async def receipts_position(self) -> int | None:
        """The receipts stream position whose badge updates are all settled (None: never saved)."""
        rows = await self.api.run_db(
            "receipts_position",
            _query_txn,
            "SELECT position FROM push_receipts_progress WHERE name = 'badges'",
        )
        return int(rows[0][0]) if rows else None

    async def save_receipts_position(self, position: int) -> None:
        await self.api.run_db(
            "save_receipts_position",
            _execute_txn,
            "INSERT INTO push_receipts_progress (name, position) VALUES ('badges', ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
            " WHERE excluded.position > push_receipts_progress.position",
            (position,),
        )

    async def unpark(self, pusher_id: str, position: int) -> None:
        await self.api.run_db(
            "unpark",
            _execute_txn,
            "DELETE FROM push_parked WHERE pusher_id = ? AND position = ?",
            (pusher_id, position),
        )

    async def forget_pusher(self, pusher_id: str) -> None:
        """The pusher is gone: its parked notifications and progress go too."""
        await self.api.run_db("forget_pusher", _forget_txn, pusher_id)

    async def known_pushers(self) -> list[str]:
        rows = await self.api.run_db(
            "known_pushers",
            _query_txn,
            "SELECT pusher_id FROM push_progress UNION SELECT pusher_id FROM push_parked"
            " UNION SELECT pusher_id FROM push_badge_parked",
        )
        return [r[0] for r in rows]


def _query_txn(txn: Txn, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return txn.query(sql, args)


def _execute_txn(txn: Txn, sql: str, args: tuple[Any, ...]) -> None:
    txn.execute(sql, args)


_UPSERT_PROGRESS = (
    "INSERT INTO push_progress (pusher_id, position) VALUES (?, ?) ON CONFLICT (pusher_id)"
    " DO UPDATE SET position = excluded.position WHERE excluded.position > push_progress.position"
)


def _save_progress_txn(txn: Txn, positions: dict[str, int]) -> None:
    for pusher_id, position in sorted(positions.items()):  # sorted: the same lock order each time
        txn.execute(_UPSERT_PROGRESS, (pusher_id, position))


def _park_txn(txn: Txn, parked: Parked) -> None:
    txn.execute(
        "INSERT INTO push_parked (pusher_id, position, event_id, body, first_failed_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (pusher_id, position) DO NOTHING",
        (parked.pusher_id, parked.position, parked.event_id, json.dumps(parked.body), parked.first_failed_ts),
    )
    txn.execute(_UPSERT_PROGRESS, (parked.pusher_id, parked.position))


def _forget_txn(txn: Txn, pusher_id: str) -> None:
    txn.execute("DELETE FROM push_parked WHERE pusher_id = ?", (pusher_id,))
    txn.execute("DELETE FROM push_badge_parked WHERE pusher_id = ?", (pusher_id,))
    txn.execute("DELETE FROM push_progress WHERE pusher_id = ?", (pusher_id,))
