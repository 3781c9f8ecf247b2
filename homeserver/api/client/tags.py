"""Room tags: /user/{userId}/rooms/{roomId}/tags[/{tag}]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    tags = hs.tags
    base = f"{CLIENT}/user/{{user_id}}/rooms/{{room_id}}/tags"

    async def get_tags(request: ApiRequest, version: str, user_id: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await tags.get_tags(requester.user_id, user_id, room_id)

    async def put_tag(
        request: ApiRequest, version: str, user_id: str, room_id: str, tag: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await tags.put_tag(requester.user_id, user_id, room_id, tag, request.json_body())
        return {}

    async def delete_tag(
        request: ApiRequest, version: str, user_id: str, room_id: str, tag: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await tags.delete_tag(requester.user_id, user_id, room_id, tag)
        return {}

    router.add("GET", base, get_tags)
    router.add("PUT", f"{base}/{{tag}}", put_tag)
    router.add("DELETE", f"{base}/{{tag}}", delete_tag)
