"""`m.ignored_user_list` (spec: Client-Server API, Ignoring Users), all of it in memory.

Few users ignore anyone, so every non-empty list is read once at start-up and replaced
whenever a user's m.ignored_user_list account data is written; who ignores whom is then a
dict lookup both ways, with no query. Sync and search ask "whom does this reader ignore";
the unread counts and push decisions, on the send path, ask once per event "who ignores
this sender" (`ignorers_of`), so a message costs no per-recipient read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeserver.core.account_data import AccountDataService
from homeserver.errors import MatrixError

IGNORED_USER_LIST = "m.ignored_user_list"
_EMPTY: frozenset[str] = frozenset()


def check_ignored_user_list(content: dict[str, Any]) -> None:
    """The spec's shape: {"ignored_users": {user id: {}}}."""
    ignored = content.get("ignored_users")
    if not isinstance(ignored, dict) or not all(
        isinstance(k, str) and k.startswith("@") and isinstance(v, dict) for k, v in ignored.items()
    ):
        raise MatrixError("'ignored_users' must map user ids to objects", "M_BAD_JSON")


def ignored_of(content: dict[str, Any] | None) -> frozenset[str]:
    ignored = (content or {}).get("ignored_users")
    return frozenset(k for k in ignored if isinstance(k, str)) if isinstance(ignored, dict) else _EMPTY


class IgnoredUsers:
    def __init__(self, account_data: AccountDataService) -> None:
        self.account_data = account_data
        self._ignores: dict[str, frozenset[str]] = {}  # user -> whom they ignore (non-empty only)
        self._ignored_by: dict[str, set[str]] = {}  # user -> who ignores them
        # Told (user_id) after a user's list changed: counts computed with the old one are stale.
        self.on_change: list[Callable[[str], None]] = []
        account_data.on_put.append(self._on_put)

    async def start(self) -> None:
        """Read every stored list (before the server answers requests)."""
        stored = await self.account_data.storage.user_data.global_account_data_of_type(IGNORED_USER_LIST)
        for user_id, content in stored:
            self._set(user_id, ignored_of(content))

    async def of(self, user_id: str) -> frozenset[str]:
        """The users `user_id` ignores."""
        return self._ignores.get(user_id, _EMPTY)

    def now(self, user_id: str) -> frozenset[str]:
        """The users `user_id` ignores, for callers that may not wait."""
        return self._ignores.get(user_id, _EMPTY)

    def ignorers_of(self, sender: str) -> set[str] | None:
        """The users who ignore `sender` (None: nobody; do not modify)."""
        return self._ignored_by.get(sender)

    def _on_put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        if data_type != IGNORED_USER_LIST or room_id:
            return
        if self._set(user_id, ignored_of(content)):
            for listener in self.on_change:
                listener(user_id)

    def _set(self, user_id: str, ignored: frozenset[str]) -> bool:
        """Replace the user's list; whether it changed."""
        old = self._ignores.get(user_id, _EMPTY)
        if old == ignored:
            return False
        for other in old - ignored:
            by = self._ignored_by.get(other)
            if by is not None:
                by.discard(user_id)
                if not by:
                    del self._ignored_by[other]
        for other in ignored - old:
            self._ignored_by.setdefault(other, set()).add(user_id)
        if ignored:
            self._ignores[user_id] = ignored
        else:
            self._ignores.pop(user_id, None)
        return True
