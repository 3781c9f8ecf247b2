"""Authenticating a request: the bearer token -> a Requester, or the spec's 401."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.api.http import ApiRequest
from homeserver.core.tokens import Requester
from homeserver.errors import MissingToken

if TYPE_CHECKING:
    from homeserver.server import HomeServer


async def require_user(hs: "HomeServer", request: ApiRequest) -> Requester:
    """The requester behind the access token, or M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    token = request.bearer_token()
    if token is None:
        raise MissingToken("Missing access token")
    requester = await hs.tokens.get_requester(token)
    hs.device_activity.seen(requester.user_id, requester.device_id, request.client_ip())
    return requester
