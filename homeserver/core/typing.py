"""Typing notifications: in memory, with timeouts (spec: m.typing)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.rooms import RoomService
from homeserver.errors import Forbidden, LimitExceeded
from homeserver.notifier import Notifier

log = Logger()

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
        # Several processes (homeserver/workers/streams.py): `forward(verb, args)` hands a
        # change to the stream's writer; `replicate(rows)` tells the others of one made here.
        self.forward: Any = None
        self.replicate: Any = None

    async def set_by_client(
        self, requester: str, room_id: str, user_id: str, typing: bool, timeout_ms: int
    ) -> None:
        """`PUT /rooms/{roomId}/typing/{userId}`: a joined member sets their own typing state."""
        if requester != user_id:
            raise Forbidden("You may only set your own typing state")
        if self.rooms is None:
            raise Forbidden("Typing notifications are not available")
        head = await self.rooms.access_room_as_member(user_id, room_id)
        # Each change wakes the syncs of every member: a loop of toggles in a big room made
        # the server do that work at request speed.
        self.rooms.limit_user("typing", user_id)
        if self.forward is not None:
            args = {"room_id": room_id, "user_id": user_id, "typing": typing, "timeout_ms": timeout_ms}
            await self.forward("set", {**args, "members": head.members("join")})
        else:
            self.set_typing(room_id, user_id, typing, timeout_ms, head.members("join"))
        if self.on_local_typing is not None:
            await self.on_local_typing(room_id, user_id, typing)

    def set_by_remote(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int, members: list[str]
    ) -> bool:
        """A remote server's m.typing for its joined `user_id`, held to the rate a local
        client's changes are (`rate_limits.typing_per_user`): each wakes every member's sync,
        and a server could send 100 a transaction. False when dropped past the limit (an EDU
        has no answer to refuse it with)."""
        if self.rooms is not None:
            try:
                self.rooms.limit_user("typing", user_id)
            except LimitExceeded:
                return False
        self.set_typing(room_id, user_id, typing, timeout_ms, members)
        return True

    def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int, members: list[str]
    ) -> None:
        if self.forward is not None:
            # A remote server's typing EDU that reached a process that does not hold typing.
            args = {"room_id": room_id, "user_id": user_id, "typing": typing, "timeout_ms": timeout_ms}
            Deferred.fromCoroutine(self._forward_quietly({**args, "members": members}))
            return
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

    async def _forward_quietly(self, args: dict[str, Any]) -> None:
        try:
            await self.forward("set", args)
        except Exception:
            log.failure("could not hand a typing change to the typing writer")

    def _changed(self, room_id: str, members: list[str]) -> None:
        self.position += 1
        self._room_position[room_id] = self.position
        self.notifier.wake_users(members)
        if self.replicate is not None:
            self.replicate([{"room_id": room_id, "typing": self.typing_users(room_id), "wake": members}])

    def apply(self, rows: list[dict[str, Any]], position: int) -> None:
        """Typing changes the writer process made (homeserver/workers/streams.py). Its timers
        end the typing there; here each room just holds who types, without timers. Positions
        here only move forward (the writer's may start lower than this process's)."""
        self.position = max(self.position + 1, position)
        for row in rows:
            room_id = row["room_id"]
            self._typing[room_id] = dict.fromkeys(row["typing"])
            self._room_position[room_id] = self.position
        for row in rows:
            self.notifier.wake_users(row["wake"])

    def snapshot(self) -> dict[str, Any]:
        """Who types where, for a process that (re)connected (typing lives in memory only)."""
        return {"position": self.position, "rooms": {r: sorted(u) for r, u in self._typing.items() if u}}

    def apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        rooms: dict[str, list[str]] = snapshot["rooms"]
        changed = [r for r in set(rooms) | set(self._typing) if rooms.get(r, []) != self.typing_users(r)]
        rows = [
            {"room_id": r, "typing": rooms.get(r, []), "wake": self.notifier.room_members(r)} for r in changed
        ]
        self.apply(rows, snapshot["position"])

    def changed_since(self, room_id: str, after: int) -> bool:
        return self._room_position.get(room_id, 0) > after

    def typing_users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, {}))

    def stop_all(self) -> None:
        for users in self._typing.values():
            for call in users.values():
                if call is not None and call.active():
                    call.cancel()
        self._typing.clear()
