"""`m.ignored_user_list` (spec: Client-Server API, Ignoring Users), read from memory.

The set of users each user ignores, cached (bounded) and replaced whenever the user's
m.ignored_user_list account data is written. Sync and search read it on every request,
so a hit costs a dict lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from homeserver.core.account_data import AccountDataService
from homeserver.errors import MatrixError

IGNORED_USER_LIST = "m.ignored_user_list"
_MAX_CACHED = 100_000
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
        self._cache: OrderedDict[str, frozenset[str]] = OrderedDict()
        account_data.on_put.append(self._on_put)

    async def of(self, user_id: str) -> frozenset[str]:
        """The users `user_id` ignores."""
        cached = self._cache.get(user_id)
        if cached is not None:
            self._cache.move_to_end(user_id)
            return cached
        ignored = ignored_of(await self.account_data.get(user_id, "", IGNORED_USER_LIST))
        self._remember(user_id, ignored)
        return ignored

    def _on_put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        if data_type == IGNORED_USER_LIST and not room_id:
            self._remember(user_id, ignored_of(content))

    def _remember(self, user_id: str, ignored: frozenset[str]) -> None:
        self._cache[user_id] = ignored
        self._cache.move_to_end(user_id)
        if len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
