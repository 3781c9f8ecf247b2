"""Accounts a server admin restricted: locked, suspended or shadow-banned.

The sets live in memory (read once at start-up, changed only through `set`), so the
checks on every request and every send cost a set lookup, not a query. With several
processes, a change on one makes the others read the table again (`on_change`).
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import MatrixError
from homeserver.storage.admin import RESTRICTION_FLAGS, AdminStore


class UserLocked(MatrixError):
    status = 401
    errcode = "M_USER_LOCKED"


class UserSuspended(MatrixError):
    status = 403
    errcode = "M_USER_SUSPENDED"


class AccountRestrictions:
    def __init__(self, store: AdminStore) -> None:
        self.store = store
        self._users: dict[str, set[str]] = {flag: set() for flag in RESTRICTION_FLAGS}
        # Called after each change here, so other processes reload theirs
        # (homeserver/workers/invalidation.py).
        self.on_change: Any = None

    async def start(self) -> None:
        self._users = await self.store.restricted_users()

    def has(self, flag: str, user_id: str) -> bool:
        return user_id in self._users[flag]

    async def set(self, user_id: str, flag: str, value: bool) -> None:
        await self.store.set_flag(user_id, flag, value)
        if value:
            self._users[flag].add(user_id)
        else:
            self._users[flag].discard(user_id)
        if self.on_change is not None:
            self.on_change()

    def check_not_locked(self, user_id: str) -> None:
        """Every authenticated request: a locked account's tokens stop working (soft logout,
        so clients keep their data and can log in again once it is unlocked)."""
        if user_id in self._users["locked"]:
            raise UserLocked("This account has been locked", soft_logout=True)

    def check_may_send(self, user_id: str) -> None:
        if user_id in self._users["suspended"]:
            raise UserSuspended("This account is suspended: it may read but not send")

    def is_shadow_banned(self, user_id: str) -> bool:
        return user_id in self._users["shadow_banned"]
