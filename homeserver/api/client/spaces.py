"""Spaces and room previews: /v1/rooms/{roomId}/hierarchy and /v1/room_summary/{roomIdOrAlias}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Router
from homeserver.errors import InvalidParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer

V1 = "/_matrix/client/v1"


def _bool_param(request: ApiRequest, name: str) -> bool:
    raw = request.query_param(name)
    # "True"/"False" too: matrix-nio 0.26 sends Python's spelling of its booleans.
    if raw is None or raw in ("false", "False"):
        return False
    if raw in ("true", "True"):
        return True
    raise InvalidParam(f"'{name}' must be true or false")


def register(router: Router, hs: "HomeServer") -> None:
    async def hierarchy(request: ApiRequest, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.spaces.hierarchy(
            requester.user_id,
            room_id,
            suggested_only=_bool_param(request, "suggested_only"),
            limit=request.int_param("limit", None),
            max_depth=request.int_param("max_depth", None),
            from_token=request.query_param("from"),
        )

    async def room_summary(request: ApiRequest, room: str) -> dict[str, Any]:
        # Spec: servers MAY answer without a token, for rooms anyone may preview.
        user_id = None
        if request.bearer_token() is not None:
            user_id = (await require_user(hs, request)).user_id
        return await hs.room_preview.summary(user_id, room)

    router.add("GET", f"{V1}/rooms/{{room_id}}/hierarchy", hierarchy)
    router.add("GET", f"{V1}/room_summary/{{room}}", room_summary)
