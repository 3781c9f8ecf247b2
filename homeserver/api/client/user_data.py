"""Account data and presence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    account_data = hs.account_data

    async def put_global(request: ApiRequest, version: str, user_id: str, data_type: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await account_data.put_by_client(requester.user_id, user_id, "", data_type, request.json_body())
        return {}

    async def get_global(request: ApiRequest, version: str, user_id: str, data_type: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await account_data.get_by_client(requester.user_id, user_id, "", data_type)

    async def put_room(
        request: ApiRequest, version: str, user_id: str, room_id: str, data_type: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await account_data.put_by_client(requester.user_id, user_id, room_id, data_type, request.json_body())
        return {}

    async def get_room(
        request: ApiRequest, version: str, user_id: str, room_id: str, data_type: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await account_data.get_by_client(requester.user_id, user_id, room_id, data_type)

    async def set_presence(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        state = required(body, "presence", str)
        await hs.presence.set_by_client(requester.user_id, user_id, state, optional(body, "status_msg", str))
        return {}

    async def get_presence(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.presence.access_presence(requester.user_id, user_id)

    user = f"{CLIENT}/user/{{user_id}}"
    router.add("PUT", f"{user}/account_data/{{data_type}}", put_global)
    router.add("GET", f"{user}/account_data/{{data_type}}", get_global)
    router.add("PUT", f"{user}/rooms/{{room_id}}/account_data/{{data_type}}", put_room)
    router.add("GET", f"{user}/rooms/{{room_id}}/account_data/{{data_type}}", get_room)
    router.add("PUT", f"{CLIENT}/presence/{{user_id}}/status", set_presence)
    router.add("GET", f"{CLIENT}/presence/{{user_id}}/status", get_presence)
