"""Profile queries over federation (Server-Server API, "Query: profile"), both ways."""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.discovery import split_server_name
from homeserver.core.profiles import FIELDS
from homeserver.errors import InvalidParam, MatrixError, MissingParam, NotFound
from homeserver.storage import Storage

# Remote profiles are reused this long (a room list shows the same few over and over).
REMOTE_PROFILE_CACHE_S = 60.0
_CACHE_MAX = 10_000


def domain_of(user_id: str) -> str:
    if not user_id.startswith("@") or ":" not in user_id:
        raise InvalidParam(f"{user_id!r} is not a user id")
    domain = user_id.split(":", 1)[1]
    # A malformed server name is the client's mistake (400), not an unreachable server (502).
    try:
        split_server_name(domain)
    except ValueError:
        raise InvalidParam(f"{user_id[:300]!r} is not a user id") from None
    return domain


class ProfileQueries:
    def __init__(self, server_name: str, storage: Storage, client: FederationClient, clock: Clock) -> None:
        self.server_name = server_name
        self.storage = storage
        self.client = client
        self.clock = clock
        self._remote: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}

    async def answer(self, user_id: str | None, field: str | None) -> dict[str, Any]:
        """What another server gets for GET /_matrix/federation/v1/query/profile."""
        if not user_id:
            raise MissingParam("'user_id' is required")
        if domain_of(user_id) != self.server_name:
            raise InvalidParam(f"{user_id} is not a user of this server")
        if field is not None and field not in FIELDS:
            raise InvalidParam(f"'field' must be one of {', '.join(FIELDS)}")
        profile = await self.storage.accounts.get_profile(user_id)
        if profile is None:
            raise NotFound("Profile not found")
        values = {k: v for k, v in zip(FIELDS, profile, strict=True) if v is not None}
        return {field: values[field]} if field is not None and field in values else ({} if field else values)

    async def remote(self, user_id: str, field: str | None = None) -> dict[str, Any]:
        """A remote user's profile, asked of their server (kept REMOTE_PROFILE_CACHE_S).

        Their server's Matrix error is passed on (e.g. 404 M_NOT_FOUND); an unreachable
        server is 502."""
        now = self.clock.seconds()
        cached = self._remote.get((user_id, field))
        if cached is not None and cached[0] > now:
            return cached[1]
        query = {"user_id": user_id, **({"field": field} if field else {})}
        try:
            answer = await self.client.get_json(
                domain_of(user_id), "/_matrix/federation/v1/query/profile", query
            )
        except RemoteError as e:
            if 400 <= e.status < 500:
                raise MatrixError(e.message, e.errcode, status=404 if e.status == 404 else 502) from None
            raise MatrixError(f"{e.server_name} failed: {e.message}", status=502) from None
        if not isinstance(answer, dict):
            raise MatrixError(
                f"{domain_of(user_id)} answered with a profile that is not an object", status=502
            )
        profile = {k: v for k, v in answer.items() if k in FIELDS and isinstance(v, str)}
        if len(self._remote) >= _CACHE_MAX:
            self._remote.clear()
        self._remote[(user_id, field)] = (now + REMOTE_PROFILE_CACHE_S, profile)
        return profile
