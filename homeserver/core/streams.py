"""Sync tokens: one position per stream, serialised as "s<events>_<receipts>_...".

Each stream is an append-only log with a position that only moves forward;
a token says, for each stream, everything up to here has been given to the
client. Pagination tokens ("p<position>") are positions in the event stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from homeserver.errors import MatrixError

# ASCII digits only (\d takes every script's), and few enough for a 64-bit database integer.
_POSITION = r"[0-9]{1,15}"
_TOKEN_RE = re.compile(rf"s({_POSITION}(?:_{_POSITION})*)")
# Negative positions: backfilled history, below everything else (core/federation/backfill.py).
_PAGINATION_RE = re.compile(rf"p(-?{_POSITION})")


@dataclass(frozen=True, slots=True)
class SyncToken:
    events: int = 0
    receipts: int = 0
    typing: int = 0
    account_data: int = 0
    presence: int = 0
    to_device: int = 0
    device_lists: int = 0

    def __str__(self) -> str:
        # Spelled out: this runs for every /sync response.
        return (
            f"s{self.events}_{self.receipts}_{self.typing}_{self.account_data}"
            f"_{self.presence}_{self.to_device}_{self.device_lists}"
        )

    @classmethod
    def parse(cls, text: str) -> "SyncToken":
        # After a wake-up, every member of a room asks with the same token.
        token = _PARSED.get(text)
        if token is None:
            if len(_PARSED) >= 4096:
                _PARSED.clear()
            token = _PARSED[text] = cls._parse(text)
        return token

    @classmethod
    def _parse(cls, text: str) -> "SyncToken":
        m = _TOKEN_RE.fullmatch(text)
        if not m:
            raise MatrixError("Invalid sync token", "M_INVALID_PARAM")
        parts = [int(p) for p in m.group(1).split("_")[:_STREAMS]]
        # Tokens from before a stream existed simply lack it: start it at 0.
        return cls(*parts, *([0] * (_STREAMS - len(parts))))


_STREAMS = len(fields(SyncToken))
_PARSED: dict[str, SyncToken] = {}


def parse_pagination_token(text: str) -> int:
    """A position in the event stream, from a pagination ("p<n>") or sync ("s<n>_...") token."""
    m = _PAGINATION_RE.fullmatch(text)
    if m:
        return int(m.group(1))
    if text.startswith("s"):
        return SyncToken.parse(text).events
    raise MatrixError("Invalid pagination token", "M_INVALID_PARAM")


def pagination_token(position: int) -> str:
    return f"p{position}"


class StreamIdGenerator:
    """Positions for one stream whose writes may finish out of order.

    `allocate()` hands out the next position; `done(pos)` marks its write
    committed (or abandoned). `current` is the highest position below which
    every write has finished: readers never read past it, so a token never
    skips a write that was still in flight.
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start + 1
        self._in_flight: set[int] = set()
        self._current = start

    @property
    def current(self) -> int:
        return self._current

    def allocate(self) -> int:
        position = self._next
        self._next += 1
        self._in_flight.add(position)
        return position

    def done(self, position: int) -> None:
        self._in_flight.discard(position)
        self._current = (min(self._in_flight) - 1) if self._in_flight else self._next - 1

    def advance_to(self, position: int) -> None:
        """Another process writes this stream and has committed up to `position`
        (homeserver/workers/streams.py): readers here may now read that far."""
        if position > self._current:
            self._current = position
            self._next = max(self._next, position + 1)
