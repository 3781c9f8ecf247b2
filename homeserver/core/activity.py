"""Daily and monthly active users and messages per day, for the metrics.

Recomputed by a periodic job (`metrics.activity_refresh`), never per request: active users
come from presence held in memory (a sync, a WebSocket stream or a presence change makes a
user active) and from the senders of the last day's events; messages are the last day's
`m.room.message` and `m.room.encrypted` events. Scrapes read the last values.
"""

from __future__ import annotations

from homeserver.core.clock import Clock
from homeserver.core.presence import PresenceService
from homeserver.storage import Storage

DAY_MS = 24 * 3600 * 1000
MONTH_MS = 30 * DAY_MS


class ActivityStats:
    def __init__(self, storage: Storage, clock: Clock, presence: PresenceService, server_name: str) -> None:
        self.storage = storage
        self.clock = clock
        self.presence = presence
        self._local_suffix = ":" + server_name
        self.daily_active_users = 0
        self.monthly_active_users = 0
        self.messages_last_day = 0
        self.refreshed = False

    async def refresh(self) -> None:
        now = self.clock.time_ms()
        day = await self.storage.activity.events_since(now - DAY_MS)
        senders = {s for s in day.senders if s.endswith(self._local_suffix)}
        self.daily_active_users = len(self.presence.active_since(now - DAY_MS) | senders)
        self.monthly_active_users = len(self.presence.active_since(now - MONTH_MS) | senders)
        self.messages_last_day = day.messages
        self.refreshed = True
