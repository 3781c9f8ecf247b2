"""Finding people and messages: POST /user_directory/search and POST /search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def user_directory(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.user_directory.search(requester.user_id, request.json_body())

    async def search(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        next_batch = request.query_param("next_batch")
        return await hs.search.search(requester.user_id, request.json_body(), next_batch)

    router.add("POST", f"{CLIENT}/user_directory/search", user_directory)
    router.add("POST", f"{CLIENT}/search", search)
