"""Profiles: display name and avatar URL (spec: Client-Server API, Profiles)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    profiles = hs.profiles

    async def get_profile(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        return await profiles.get(user_id)

    async def get_field(request: ApiRequest, version: str, user_id: str, field: str) -> dict[str, Any]:
        return await profiles.get_field(user_id, field)

    async def set_field(request: ApiRequest, version: str, user_id: str, field: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await profiles.set_field(requester.user_id, user_id, field, request.json_body().get(field))
        return {}

    async def delete_field(request: ApiRequest, version: str, user_id: str, field: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await profiles.delete_field(requester.user_id, user_id, field)
        return {}

    router.add("GET", f"{CLIENT}/profile/{{user_id}}", get_profile)
    router.add("DELETE", f"{CLIENT}/profile/{{user_id}}/{{field}}", delete_field)
    router.add("GET", f"{CLIENT}/profile/{{user_id}}/{{field}}", get_field)
    router.add("PUT", f"{CLIENT}/profile/{{user_id}}/{{field}}", set_field)
