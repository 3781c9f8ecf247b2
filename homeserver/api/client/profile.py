"""Profiles: display name and avatar URL (spec: Client-Server API, Profiles)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.errors import BadJson, Forbidden, NotFound, Unrecognized

if TYPE_CHECKING:
    from homeserver.server import HomeServer

FIELDS = ("displayname", "avatar_url")
_MAX_LENGTH = {"displayname": 256, "avatar_url": 1000}


def register(router: Router, hs: "HomeServer") -> None:
    async def _profile(user_id: str) -> dict[str, Any]:
        profile = await hs.storage.accounts.get_profile(user_id)
        if profile is None:
            raise NotFound("Profile not found")
        return {k: v for k, v in zip(FIELDS, profile, strict=True) if v is not None}

    async def get_profile(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        return await _profile(user_id)

    async def get_field(request: ApiRequest, version: str, user_id: str, field: str) -> dict[str, Any]:
        if field not in FIELDS:
            raise Unrecognized("Unknown profile field")
        profile = await _profile(user_id)
        if field not in profile:
            raise NotFound(f"No {field} set")
        return {field: profile[field]}

    async def set_field(request: ApiRequest, version: str, user_id: str, field: str) -> dict[str, Any]:
        if field not in FIELDS:
            raise Unrecognized("Unknown profile field")
        requester = await require_user(hs, request)
        if requester.user_id != user_id:
            raise Forbidden("You may only change your own profile")
        body = request.json_body()
        value = body.get(field)
        if value is not None and not isinstance(value, str):
            raise BadJson(f"'{field}' must be a string")
        if value is not None and len(value) > _MAX_LENGTH[field]:
            raise BadJson(f"'{field}' is too long")
        if field == "avatar_url" and value and not value.startswith("mxc://"):
            raise BadJson("'avatar_url' must be an mxc:// URI")
        await hs.storage.accounts.set_profile_field(user_id, field, value or None)
        return {}

    router.add("GET", f"{CLIENT}/profile/{{user_id}}", get_profile)
    router.add("GET", f"{CLIENT}/profile/{{user_id}}/{{field}}", get_field)
    router.add("PUT", f"{CLIENT}/profile/{{user_id}}/{{field}}", set_field)
