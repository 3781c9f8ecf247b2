"""/account/whoami, /account/password, /account/deactivate, /account/3pid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def whoami(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False}

    async def change_password(request: ApiRequest, version: str) -> dict[str, Any]:
        body = request.json_body()
        new_password = required(body, "new_password", str)
        logout_devices = optional(body, "logout_devices", bool, True) is not False
        # Without a token this is a forgotten password, proven by the mailed link.
        requester = await require_user(hs, request) if request.bearer_token() is not None else None
        await hs.password_reset.change_password(requester, body.get("auth"), new_password, logout_devices)
        return {}

    async def deactivate(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        # Spec: `erase` asks the server to forget what the user sent (docs/gdpr.md).
        erase = optional(body, "erase", bool, False) is True
        await hs.accounts.deactivate_with_auth(requester.user_id, body.get("auth"), erase)
        return {"id_server_unbind_result": "no-support"}

    async def threepids(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        rows = await hs.accounts.validated_threepids(requester.user_id)
        return {
            "threepids": [
                {"medium": m, "address": a, "added_at": added, "validated_at": validated}
                for m, a, added, validated in rows
            ]
        }

    router.add("GET", f"{CLIENT}/account/whoami", whoami)
    router.add("POST", f"{CLIENT}/account/password", change_password)
    router.add("POST", f"{CLIENT}/account/deactivate", deactivate)
    router.add("GET", f"{CLIENT}/account/3pid", threepids)
