"""Typing notifications: in memory, with timeouts (spec: m.typing)."""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.rooms import RoomService
from homeserver.errors import Forbidden
from homeserver.notifier import Notifier

MAX_TIMEOUT_MS = 120_000


class TypingService:
    def __init__(self, clock: Clock, notifier: Notifier, rooms: RoomService | None = None) -> None:
        self.clock = clock
        self.notifier = notifier
        self.rooms = rooms
        self.position = 0
        # room -> user -> the delayed call that stops their typing
        self._typing: dict[str, dict[str, Any]] = {}
        self._room_position: dict[str, int] = {}
        # Awaited as on_local_typing(room_id, user_id, typing) after a local client's change
        # (the federation sender tells the room's other servers).
        self.on_local_typing: Any = None

    async def set_by_client(
        self, requester: str, room_id: str, user_id: str, typing: bool, timeout_ms: int
    ) -> None:
        """`PUT /rooms/{roomId}/typing/{userId}`: a joined member sets their own typing state."""
        if requester != user_id:
            raise Forbidden("You may only set your own typing state")
        if self.rooms is None:
            raise Forbidden("Typing notifications are not available")
        head = await self.rooms.access_room_as_member(user_id, room_id)
        self.set_typing(room_id, user_id, typing, timeout_ms, head.members("join"))
        if self.on_local_typing is not None:
            await self.on_local_typing(room_id, user_id, typing)

    def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int, members: list[str]
    ) -> None:
        users = self._typing.setdefault(room_id, {})
        previous = users.pop(user_id, None)
        if previous is not None and previous.active():
            previous.cancel()
        if typing:
            timeout = min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
            users[user_id] = self.clock.callLater(timeout, self._expire, room_id, user_id, members)
        elif previous is None:
            return
        if typing and previous is not None:
            return  # still typing: only the timeout moved, nothing to tell anyone
        self._changed(room_id, members)

    def _expire(self, room_id: str, user_id: str, members: list[str]) -> None:
        self._typing.get(room_id, {}).pop(user_id, None)
        self._changed(room_id, members)

    def _changed(self, room_id: str, members: list[str]) -> None:
        self.position += 1
        self._room_position[room_id] = self.position
        self.notifier.wake_users(members)

    def changed_since(self, room_id: str, after: int) -> bool:
        return self._room_position.get(room_id, 0) > after

    def typing_users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, {}))

    def stop_all(self) -> None:
        for users in self._typing.values():
            for call in users.values():
                if call.active():
                    call.cancel()
        self._typing.clear()
