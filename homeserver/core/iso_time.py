"""ISO 8601 UTC timestamps, as the simple API's first spec shows them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(ms: int) -> str:
    """`2023-11-14T22:13:20.123Z`: milliseconds since the epoch, in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
