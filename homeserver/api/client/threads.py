"""GET /_matrix/client/v1/rooms/{roomId}/threads (spec: Client-Server API, "Threading")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def threads(request: ApiRequest, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.messages.threads(
            requester.user_id,
            room_id,
            request.query_param("include") or "all",
            request.query_param("from") or None,
            request.int_param("limit", 50),
        )

    router.add("GET", "/_matrix/client/v1/rooms/{room_id}/threads", threads)
