"""Registration tokens an admin creates, limits and revokes (Synapse's shapes and rules).

A token is 1-64 characters of `[A-Za-z0-9._~-]`, made at random (of `length`, default 16)
when not given. It is valid while it has uses left (`pending` + `completed` <
`uses_allowed`, or no limit) and has not expired (`expiry_time`, ms). Sign-ups hold a
use from the token stage until they finish (core/uia.py, core/registration.py).
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Any

from homeserver.core.clock import Clock
from homeserver.errors import MatrixError, NotFound
from homeserver.storage.registration_tokens import RegistrationToken, RegistrationTokenStore, TokenExists

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_ALPHABET = string.ascii_letters + string.digits + "._~-"
_MAX_INT = 2**53  # JSON numbers clients can hold exactly
_MAX_USES = 2**31  # uses_allowed is a 32-bit column: past it PostgreSQL refuses the row (a 500)


def check_token(token: object) -> str:
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise MatrixError(
            "'token' must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '~', '-'", "M_INVALID_PARAM"
        )
    return token


def _whole(value: object, key: str, limit: int = _MAX_INT) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
        raise MatrixError(f"'{key}' must be an integer from 0 to {limit - 1}, or null", "M_INVALID_PARAM")
    return value


class RegistrationTokens:
    def __init__(self, store: RegistrationTokenStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def _expiry(self, value: object) -> int | None:
        expiry = _whole(value, "expiry_time")
        if expiry is not None and expiry <= self.clock.time_ms():
            raise MatrixError("'expiry_time' must be in the future", "M_INVALID_PARAM")
        return expiry

    async def list(self, valid: bool | None) -> list[RegistrationToken]:
        return await self.store.list(valid, self.clock.time_ms())

    async def get(self, token: str) -> RegistrationToken:
        found = await self.store.get(check_token(token))
        if found is None:
            raise NotFound("No such registration token")
        return found

    async def create(self, body: dict[str, Any]) -> RegistrationToken:
        uses_allowed = _whole(body.get("uses_allowed"), "uses_allowed", _MAX_USES)
        expiry = self._expiry(body.get("expiry_time"))
        if "token" in body:
            if "length" in body:
                raise MatrixError("Give 'token' or 'length', not both", "M_INVALID_PARAM")
            token = check_token(body["token"])
        else:
            length = body.get("length", 16)
            if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 64:
                raise MatrixError("'length' must be an integer from 1 to 64", "M_INVALID_PARAM")
            token = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        try:
            await self.store.create(token, uses_allowed, expiry)
        except TokenExists:
            raise MatrixError(f"Token already exists: {token}", "M_INVALID_PARAM") from None
        return await self.get(token)

    async def update(self, token: str, body: dict[str, Any]) -> RegistrationToken:
        changes: dict[str, int | None] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _whole(body["uses_allowed"], "uses_allowed", _MAX_USES)
        if "expiry_time" in body:
            changes["expiry_time"] = self._expiry(body["expiry_time"])
        if not await self.store.update(check_token(token), changes):
            raise NotFound("No such registration token")
        return await self.get(token)

    async def delete(self, token: str) -> None:
        if not await self.store.delete(check_token(token)):
            raise NotFound("No such registration token")

    async def is_valid(self, token: str) -> bool:
        return bool(_TOKEN_RE.fullmatch(token)) and await self.store.is_valid(token, self.clock.time_ms())

    async def hold(self, token: str, session_id: str) -> bool:
        return bool(_TOKEN_RE.fullmatch(token)) and await self.store.hold(
            token, session_id, self.clock.time_ms()
        )

    async def complete(self, token: str) -> None:
        await self.store.complete(token)
