"""Account data, global and per room (m.direct, m.fully_read, m.push_rules...)."""

from __future__ import annotations

from typing import Any

from homeserver.core.streams import StreamIdGenerator
from homeserver.notifier import Notifier
from homeserver.storage import Storage

MAX_CONTENT_BYTES = 65536


class AccountDataService:
    def __init__(self, storage: Storage, notifier: Notifier) -> None:
        self.storage = storage
        self.notifier = notifier
        self.stream = StreamIdGenerator()
        self._started_at = 0
        self._last_change: dict[str, int] = {}

    def start(self, current: int) -> None:
        self.stream = StreamIdGenerator(current)
        self._started_at = current

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        position = self.stream.allocate()
        try:
            await self.storage.user_data.put_account_data(user_id, room_id, data_type, content, position)
        finally:
            # The stream is shared by all users: remember whose position it is, so that
            # everyone else's sync can skip the query.
            self._last_change[user_id] = max(position, self._last_change.get(user_id, 0))
            self.stream.done(position)
        self.notifier.wake_users([user_id])
        return position

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        return await self.storage.user_data.get_account_data(user_id, room_id, data_type)

    async def since(self, user_id: str, after: int, upto: int) -> list[tuple[str, str, dict[str, Any]]]:
        if after >= upto:
            return []
        if after >= self._started_at and self._last_change.get(user_id, 0) <= after:
            return []  # nothing of this user's changed since `after`
        return await self.storage.user_data.account_data_since(user_id, after, upto)
