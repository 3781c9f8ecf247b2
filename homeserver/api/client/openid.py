"""OpenID: a token for a third party, and the federation endpoint that checks it.

`POST /user/{userId}/openid/request_token` (Client-Server API, OpenID) and
`GET /_matrix/federation/v1/openid/userinfo` (Server-Server API, OpenID): the second
is the only use of the first, so both live here. userinfo takes no server signature,
only the token (spec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def request_token(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        request.json_body_or_empty()  # the body is `{}`; anything but a JSON object is refused
        return await hs.openid.request_token(requester.user_id, user_id)

    async def userinfo(request: ApiRequest) -> dict[str, Any]:
        return await hs.openid.userinfo(request.query_param("access_token"))

    router.add("POST", f"{CLIENT}/user/{{user_id}}/openid/request_token", request_token)
    router.add("GET", "/_matrix/federation/v1/openid/userinfo", userinfo)
