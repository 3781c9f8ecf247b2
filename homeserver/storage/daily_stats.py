"""Per-day counts for the admin dashboard: sign-ups, active senders, messages and calls.

Days are UTC days numbered from the epoch (`ts // 86400000`). Events have no index on
their timestamp: the window's first event is found by bisection over `stream_ordering`
(storage/activity.py), and the window is then one index range. Sign-ups read
`users_by_created_ts` (sql/075).
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.activity import MESSAGE_TYPES, first_position_at_or_after
from homeserver.storage.database import Database, Txn

DAY_MS = 24 * 3600 * 1000
# A call is counted when it is offered: the invite of a 1:1 call (clear-text rooms only;
# in encrypted rooms the invite is an m.room.encrypted event the server cannot read).
CALL_INVITE = "m.call.invite"


@dataclass(frozen=True, slots=True)
class DayCounts:
    day: int  # days since the epoch (UTC)
    signups: int
    active_users: int  # local accounts that sent an event that day
    messages: int
    calls: int


class DailyStatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def days_since(self, first_day: int, server_name: str) -> dict[int, DayCounts]:
        """Counts for every day from `first_day` on that had anything; absent days had nothing."""
        since_ms = first_day * DAY_MS
        local = f"%:{server_name}"

        def txn_fn(txn: Txn) -> dict[int, DayCounts]:
            signups = {
                int(day): int(count)
                for day, count in txn.query(
                    f"SELECT created_ts / {DAY_MS}, COUNT(*) FROM users WHERE created_ts >= ? GROUP BY 1",
                    (since_ms,),
                )
            }
            activity: dict[int, tuple[int, int, int]] = {}
            start = first_position_at_or_after(txn, since_ms)
            if start is not None:
                for day, senders, messages, calls in txn.query(
                    f"SELECT origin_server_ts / {DAY_MS},"
                    " COUNT(DISTINCT CASE WHEN sender LIKE ? THEN sender END),"
                    " SUM(CASE WHEN type IN (?, ?) THEN 1 ELSE 0 END),"
                    " SUM(CASE WHEN type = ? THEN 1 ELSE 0 END)"
                    " FROM events WHERE stream_ordering >= ? GROUP BY 1",
                    (local, *MESSAGE_TYPES, CALL_INVITE, start),
                ):
                    activity[int(day)] = (int(senders or 0), int(messages or 0), int(calls or 0))
            out = {}
            for day in set(signups) | set(activity):
                senders, messages, calls = activity.get(day, (0, 0, 0))
                out[day] = DayCounts(day, signups.get(day, 0), senders, messages, calls)
            return out

        result: dict[int, DayCounts] = await self.db.run_interaction("daily_stats_days_since", txn_fn)
        return result

    async def account_count(self) -> int:
        """Accounts that are not deactivated."""
        row = await self.db.run_interaction(
            "daily_stats_accounts",
            lambda txn: txn.query_one("SELECT COUNT(*) FROM users WHERE deactivated = ?", (False,)),
        )
        return int(row[0]) if row else 0
