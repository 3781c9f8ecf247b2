"""Message retention (MSC1763): how long each room keeps its history, and the purge job.

A room's policy is its `m.room.retention` state event (`max_lifetime`, `min_lifetime`,
milliseconds); a room without one, or whose event names no valid `max_lifetime`, takes
the server's default (`retention.default_policy`). A room's own lifetime is raised to its
`min_lifetime` and clamped into `retention.allowed_lifetime_min/max`, so a room cannot
keep history longer (or drop it faster) than the operator allows.

The job, every `retention.purge_interval` on the server's clock, moves each room's history
floor up to its newest expired event and deletes the expired events below it in batches
(storage/retention.py: what is kept, and why a crash leaves whole events). After each
batch, the in-memory caches forget the purged events (`on_purged`, wired by the server)
and plugins are told (`purge_listeners`: the media plugin deletes media that only those
events shared). Plugins are told again after a crash until a call succeeds, so a listener
must not mind hearing of an event twice.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from homeserver.config import RetentionConfig
from homeserver.core.clock import Clock
from homeserver.errors import MatrixError
from homeserver.storage.retention import RetentionStore

log = Logger()

# Purged events told to plugins per call.
_TELL_BATCH = 500

PurgeListener = Callable[[str, list[str]], Awaitable[None] | None]


@dataclass(frozen=True)
class RoomPolicy:
    """An m.room.retention event's content, valid fields only (MSC1763: positive integers)."""

    min_lifetime: int | None = None
    max_lifetime: int | None = None


def _lifetime(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def parse_room_policy(content: Any) -> RoomPolicy:
    if not isinstance(content, dict):
        return RoomPolicy()
    return RoomPolicy(_lifetime(content.get("min_lifetime")), _lifetime(content.get("max_lifetime")))


def check_policy_content(event_type: str, state_key: str | None, content: dict[str, Any]) -> None:
    """Refuse an m.room.retention state event whose lifetimes are not positive integers
    (a policy the purge job would have to guess at)."""
    if event_type != "m.room.retention" or state_key is None:
        return
    for key in ("min_lifetime", "max_lifetime"):
        if key in content and _lifetime(content[key]) is None:
            raise MatrixError(f"m.room.retention '{key}' must be a positive integer (ms)", "M_BAD_JSON")


def effective_max_lifetime(config: RetentionConfig, policy: RoomPolicy | None) -> int | None:
    """How long (ms) a room with `policy` (None: no m.room.retention) keeps its events;
    None: forever."""
    default = config.default_policy.max_lifetime
    if policy is None or policy.max_lifetime is None:
        return int(default) if default is not None else None
    lifetime = max(policy.max_lifetime, policy.min_lifetime or 0)
    if config.allowed_lifetime_min is not None:
        lifetime = max(lifetime, int(config.allowed_lifetime_min))
    if config.allowed_lifetime_max is not None:
        lifetime = min(lifetime, int(config.allowed_lifetime_max))
    return lifetime


@dataclass
class PurgeReport:
    rooms: int = 0
    events: int = 0


class RetentionService:
    def __init__(self, config: RetentionConfig, store: RetentionStore, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # In-process caches: (room id, its new floor, purged event ids), after each batch.
        self.on_purged: list[Callable[[str, int, list[str]], None]] = []
        self.purge_listeners: list[PurgeListener] = []
        self._running = False
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._running

    def stop(self) -> None:
        """Shutting down: a run in progress stops after its current batch."""
        self._stopped = True

    async def purge_expired(self) -> PurgeReport:
        """One run of the job: every room's expired history. A run that finds another one
        still going returns at once (a slow run is never doubled by the next tick)."""
        report = PurgeReport()
        if self._running:
            return report
        self._running = True
        try:
            await self.tell_pending()
            now = self.clock.time_ms()
            for room_id, retention_json in await self.store.retention_states():
                if self._stopped:
                    break
                policy = (
                    parse_room_policy(json.loads(retention_json).get("content")) if retention_json else None
                )
                lifetime = effective_max_lifetime(self.config, policy)
                if lifetime is None:
                    continue
                purged = await self.purge_room(room_id, now - lifetime)
                if purged:
                    report.rooms += 1
                    report.events += purged
        finally:
            self._running = False
        if report.events:
            log.info(
                "retention purged {events} events in {rooms} rooms", events=report.events, rooms=report.rooms
            )
        return report

    async def purge_room(self, room_id: str, before_ts: int) -> int:
        """Delete the room's events sent before `before_ts` (but what the room still needs);
        how many were deleted."""
        floor = await self.store.raise_floor(room_id, before_ts)
        if floor is None:
            # Unmoved; events left below it by a run that died are deleted now.
            floor = await self.store.history_floor(room_id)
            if not floor:
                return 0
        batch = self.config.purge_batch_size
        total = 0
        while True:
            ids = await self.store.purge_batch(room_id, floor, batch)
            total += len(ids)
            for forget in self.on_purged:
                forget(room_id, floor, ids)
            if ids:
                await self._tell(room_id, ids)
            if len(ids) < batch or self._stopped:
                return total

    async def tell_pending(self) -> None:
        """Tell plugins of purged events not yet told: of a run that died before telling
        them, or of an admin's purge of a room (core/admin.py)."""
        while True:
            pending = await self.store.pending_purged(_TELL_BATCH)
            by_room: dict[str, list[str]] = {}
            for event_id, room_id in pending:
                by_room.setdefault(room_id, []).append(event_id)
            for room_id, ids in by_room.items():
                if not await self._tell(room_id, ids):
                    return
            if len(pending) < _TELL_BATCH:
                return

    async def _tell(self, room_id: str, event_ids: list[str]) -> bool:
        """Hand purged events to every listener; forget them once all took them."""
        for listener in self.purge_listeners:
            try:
                result = listener(room_id, event_ids)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.failure("a purge listener failed; it is told again on the next run")
                return False
        await self.store.clear_pending(event_ids)
        return True
