"""GET /user/devices/{userId}, POST /user/keys/query and /user/keys/claim (Server-Server API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.federation.auth import FEDERATION, require_origin
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def devices(request: ApiRequest, user_id: str) -> dict[str, Any]:
        await require_origin(hs, request)
        return await hs.federation_user_keys.devices(user_id)

    async def query(request: ApiRequest) -> dict[str, Any]:
        await require_origin(hs, request)
        return await hs.federation_user_keys.query(request.json_body())

    async def claim(request: ApiRequest) -> dict[str, Any]:
        await require_origin(hs, request)
        return await hs.federation_user_keys.claim(request.json_body())

    router.add("GET", f"{FEDERATION}/v1/user/devices/{{user_id}}", devices)
    router.add("POST", f"{FEDERATION}/v1/user/keys/query", query)
    router.add("POST", f"{FEDERATION}/v1/user/keys/claim", claim)
