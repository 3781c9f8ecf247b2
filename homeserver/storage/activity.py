"""Counts behind the activity gauges (active users, messages per day), read by a periodic job.

Nothing here runs per request. `events` has no index on its timestamp, so the start of a
window is found by bisection over `stream_ordering` (its unique index): local events get
their timestamp from the clock as they are built, in stream order, so timestamps grow with
positions. The window's events are then one index range.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Txn

# Event types counted as messages: plain and end-to-end encrypted ones.
MESSAGE_TYPES = ("m.room.message", "m.room.encrypted")


@dataclass(frozen=True, slots=True)
class WindowActivity:
    """Within one window: who sent events, and how many of the events were messages."""

    senders: frozenset[str]
    messages: int


class ActivityStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def events_since(self, since_ms: int) -> WindowActivity:
        """Senders and message count of the events with origin_server_ts >= since_ms."""

        def txn_fn(txn: Txn) -> WindowActivity:
            start = first_position_at_or_after(txn, since_ms)
            if start is None:
                return WindowActivity(frozenset(), 0)
            rows = txn.query(
                "SELECT sender, SUM(CASE WHEN type IN (?, ?) THEN 1 ELSE 0 END) FROM events"
                " WHERE stream_ordering >= ? GROUP BY sender",
                (*MESSAGE_TYPES, start),
            )
            return WindowActivity(frozenset(r[0] for r in rows), sum(int(r[1] or 0) for r in rows))

        return await self.db.run_interaction("activity_events_since", txn_fn)


def first_position_at_or_after(txn: Txn, since_ms: int) -> int | None:
    """The lowest stream position whose event is at or after since_ms (None: no such event)."""
    bounds = txn.query_one("SELECT MIN(stream_ordering), MAX(stream_ordering) FROM events")
    if bounds is None or bounds[0] is None:
        return None
    lo, hi = int(bounds[0]), int(bounds[1])
    if _ts_from(txn, hi) < since_ms:
        return None
    # Invariant: the event at or after `hi` is inside the window; find the first such position.
    while lo < hi:
        mid = (lo + hi) // 2
        if _ts_from(txn, mid) >= since_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _ts_from(txn: Txn, position: int) -> int:
    """The timestamp of the first event at or after `position` (positions have gaps)."""
    row = txn.query_one(
        "SELECT origin_server_ts FROM events WHERE stream_ordering >= ? ORDER BY stream_ordering LIMIT 1",
        (position,),
    )
    assert row is not None  # callers stay at or below the highest position
    return int(row[0])
