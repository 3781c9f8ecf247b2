"""OpenID tokens (spec: Client-Server API, OpenID; Server-Server API, OpenID).

A client asks for a token and hands it to a third party (an integration manager, a
widget); the third party proves who the user is by asking this server's
`/_matrix/federation/v1/openid/userinfo`. The token proves nothing else: it is not an
access token, lives an hour, and only its hash is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from homeserver.core.clock import Clock
from homeserver.errors import Forbidden, UnknownToken
from homeserver.storage import Storage

TOKEN_LIFETIME_S = 3600


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OpenIdService:
    def __init__(self, server_name: str, storage: Storage, clock: Clock) -> None:
        self.server_name = server_name
        self.storage = storage
        self.clock = clock

    async def request_token(self, requester: str, user_id: str) -> dict[str, Any]:
        """A new token for the requester's own user id (403 for anyone else's)."""
        if requester != user_id:
            raise Forbidden("You may only request an OpenID token for yourself")
        now = self.clock.time_ms()
        # Expired tokens are useless: clear them as new ones are issued, no job needed.
        await self.storage.openid.delete_expired(now)
        token = secrets.token_urlsafe(32)
        await self.storage.openid.add_token(_hash(token), user_id, now + TOKEN_LIFETIME_S * 1000)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name,
            "expires_in": TOKEN_LIFETIME_S,
        }

    async def userinfo(self, token: str | None) -> dict[str, Any]:
        """`{"sub": user_id}` for a live token; M_UNKNOWN_TOKEN (401) otherwise."""
        user_id = (
            await self.storage.openid.user_for_token(_hash(token), self.clock.time_ms()) if token else None
        )
        if user_id is None:
            raise UnknownToken("Unknown or expired OpenID token")
        return {"sub": user_id}
