"""The admin dashboard's numbers: per-day sign-ups, active users, messages and calls over a
window, active users now (DAU/MAU) and the connections open now.

Asked by an admin's page, never on the hot path, and cheap: a finished day never changes
(until a retention purge or an erasure, which the next restart picks up), so it is counted
once and kept in memory; each request recounts only today (and the last 24 hours and 30
days of active users, core/activity.py). Each count is one index range
(storage/daily_stats.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from homeserver.core.activity import ActivityStats
from homeserver.core.clock import Clock
from homeserver.storage.daily_stats import DAY_MS, DailyStatsStore, DayCounts

# The longest window one request may ask for.
MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class DayStats:
    date: str  # YYYY-MM-DD (UTC)
    signups: int
    active_users: int
    messages: int
    calls: int


@dataclass(frozen=True, slots=True)
class Connections:
    websocket_streams: int
    long_polls: int


@dataclass(frozen=True, slots=True)
class ServerStats:
    days: list[DayStats]  # oldest first, today last
    accounts: int
    daily_active_users: int
    monthly_active_users: int
    connections: Connections


class DailyStatsService:
    def __init__(
        self,
        store: DailyStatsStore,
        clock: Clock,
        activity: ActivityStats,
        server_name: str,
        connections: Callable[[], Connections],
    ) -> None:
        self.store = store
        self.clock = clock
        self.activity = activity
        self.server_name = server_name
        self.connections = connections
        self._finished: dict[int, DayCounts] = {}  # days before today, counted once
        self._counted_through = -1  # every day up to this one is in _finished (or had nothing)
        self._first_counted = -1
        self._today: tuple[int, DayCounts] | None = None

    async def stats(self, days: int) -> ServerStats:
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be 1 to {MAX_DAYS}")
        now = self.clock.time_ms()
        today = now // DAY_MS
        first = today - days + 1
        await self._count(first, today)
        counts = [self._day(d, today) for d in range(first, today + 1)]
        await self.activity.refresh()
        return ServerStats(
            days=[_render(c) for c in counts],
            accounts=await self.store.account_count(),
            daily_active_users=self.activity.daily_active_users,
            monthly_active_users=self.activity.monthly_active_users,
            connections=self.connections(),
        )

    async def _count(self, first: int, today: int) -> None:
        """Count today, and the days of the window not counted yet."""
        covered = self._first_counted != -1 and self._first_counted <= first
        start = min(self._counted_through + 1, today) if covered else first
        found = await self.store.days_since(start, self.server_name)
        for day, counts in found.items():
            if day < today:
                self._finished[day] = counts
        if not covered:
            self._first_counted = first
        self._counted_through = today - 1
        self._today = (today, found.get(today, DayCounts(today, 0, 0, 0, 0)))

    def _day(self, day: int, today: int) -> DayCounts:
        if day == today and self._today is not None and self._today[0] == today:
            return self._today[1]
        return self._finished.get(day, DayCounts(day, 0, 0, 0, 0))


def _render(counts: DayCounts) -> DayStats:
    date = datetime.fromtimestamp(counts.day * DAY_MS / 1000, UTC).strftime("%Y-%m-%d")
    return DayStats(date, counts.signups, counts.active_users, counts.messages, counts.calls)
