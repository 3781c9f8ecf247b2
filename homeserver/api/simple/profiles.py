"""The simple API's profiles: display name, avatar and last seen (docs/api.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Router
from homeserver.errors import BadJson, MissingParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# Matrix profile fields behind the simple API's names.
_FIELDS = {"displayName": "displayname", "avatarContentUri": "avatar_url"}


def register(router: Router, hs: "HomeServer") -> None:
    base_url = hs.config.base_url

    def render(profile: dict[str, Any]) -> dict[str, Any]:
        """`avatarUrl`: the avatar's authenticated download URL, absolute (fetch it with the token)."""
        mxc = profile["avatarContentUri"]
        url = None
        if isinstance(mxc, str) and mxc.startswith("mxc://"):
            url = f"{base_url}/_matrix/client/v1/media/download/{mxc[len('mxc://') :]}"
        return {**profile, "avatarUrl": url}

    async def own_profile(request: ApiRequest) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return render(await hs.chats.profile(requester.user_id))

    async def user_profile(request: ApiRequest, user_id: str) -> dict[str, Any]:
        await require_user(hs, request)
        return render(await hs.chats.profile(user_id))

    async def update_profile(request: ApiRequest) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        unknown = set(body) - set(_FIELDS)
        if unknown:
            raise BadJson(
                f"Unknown field {sorted(unknown)[0]!r}: give 'displayName' and/or 'avatarContentUri'"
            )
        if not body:
            raise MissingParam("Give 'displayName' and/or 'avatarContentUri'")
        for key, field in _FIELDS.items():
            if key in body:
                await hs.profiles.set_field(requester.user_id, requester.user_id, field, body[key])
        return render(await hs.chats.profile(requester.user_id))

    router.add("GET", "/api/profile", own_profile)
    router.add("PUT", "/api/profile", update_profile)
    router.add("GET", "/api/profile/{user_id}", user_profile)
