"""Account data, push rules and presence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.push_rules import default_push_rules
from homeserver.errors import Forbidden, MatrixError, NotFound

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# Written by the server only (spec: m.fully_read via /read_markers, m.push_rules via /pushrules).
SERVER_MANAGED = ("m.fully_read", "m.push_rules")


def register(router: Router, hs: "HomeServer") -> None:
    def own(requester_id: str, user_id: str) -> None:
        if requester_id != user_id:
            raise Forbidden("You may only access your own account data")

    async def put_global(request: ApiRequest, version: str, user_id: str, data_type: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        own(requester.user_id, user_id)
        if data_type in SERVER_MANAGED:
            raise MatrixError(
                f"Cannot set {data_type} through the account_data API", "M_BAD_JSON", status=405
            )
        await hs.account_data.put(user_id, "", data_type, request.json_body())
        return {}

    async def get_global(request: ApiRequest, version: str, user_id: str, data_type: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        own(requester.user_id, user_id)
        content = await hs.account_data.get(user_id, "", data_type)
        if content is None:
            raise NotFound("Account data not found")
        return content

    async def put_room(
        request: ApiRequest, version: str, user_id: str, room_id: str, data_type: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        own(requester.user_id, user_id)
        if data_type in SERVER_MANAGED:
            raise MatrixError(
                f"Cannot set {data_type} through the account_data API", "M_BAD_JSON", status=405
            )
        if await hs.room_heads.get(room_id) is None:
            raise MatrixError("Unknown room", "M_INVALID_PARAM")
        await hs.account_data.put(user_id, room_id, data_type, request.json_body())
        return {}

    async def get_room(
        request: ApiRequest, version: str, user_id: str, room_id: str, data_type: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        own(requester.user_id, user_id)
        content = await hs.account_data.get(user_id, room_id, data_type)
        if content is None:
            raise NotFound("Account data not found")
        return content

    async def push_rules(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        stored = await hs.account_data.get(requester.user_id, "", "m.push_rules")
        return stored if stored is not None else default_push_rules(requester.user_id)

    async def set_presence(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if requester.user_id != user_id:
            raise Forbidden("You may only set your own presence")
        body = request.json_body()
        state = required(body, "presence", str)
        status_msg = optional(body, "status_msg", str)
        await hs.presence.set_state(user_id, state, status_msg)
        return {}

    async def get_presence(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        await require_user(hs, request)
        if not await hs.storage.accounts.user_exists(user_id):
            raise NotFound("Unknown user")
        return hs.presence.to_json(user_id)

    user = f"{CLIENT}/user/{{user_id}}"
    router.add("PUT", f"{user}/account_data/{{data_type}}", put_global)
    router.add("GET", f"{user}/account_data/{{data_type}}", get_global)
    router.add("PUT", f"{user}/rooms/{{room_id}}/account_data/{{data_type}}", put_room)
    router.add("GET", f"{user}/rooms/{{room_id}}/account_data/{{data_type}}", get_room)
    router.add("GET", f"{CLIENT}/pushrules/", push_rules)
    router.add("GET", f"{CLIENT}/pushrules", push_rules)
    router.add("PUT", f"{CLIENT}/presence/{{user_id}}/status", set_presence)
    router.add("GET", f"{CLIENT}/presence/{{user_id}}/status", get_presence)
