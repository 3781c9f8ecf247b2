"""/account/whoami, /account/password, /account/deactivate, /account/3pid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core import uia
from homeserver.errors import MatrixError

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def whoami(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False}

    async def change_password(request: ApiRequest, version: str) -> dict[str, Any]:
        body = request.json_body()
        new_password = required(body, "new_password", str)
        hs.accounts.check_password(new_password)
        logout_devices = optional(body, "logout_devices", bool, True)
        if request.bearer_token() is not None:
            # Logged in: prove it is really the owner with the current password.
            requester = await require_user(hs, request)
            await hs.uia.authenticate(
                body.get("auth"), "/account/password", [[uia.PASSWORD]], expected_user=requester.user_id
            )
            user_id, keep = requester.user_id, requester.device_id
        else:
            # Forgotten password: the mailed link proves control of the account's address.
            result = await hs.uia.authenticate(
                body.get("auth"), "/account/password", [[uia.EMAIL]], email_purpose="password_reset"
            )
            assert result.email is not None
            owner = await hs.storage.accounts.user_for_email(result.email)
            if owner is None:
                raise MatrixError("No account has this email address", "M_THREEPID_NOT_FOUND")
            user_id, keep = owner[0], None
            if result.email_session:
                await hs.email.consume(result.email_session)
        await hs.accounts.set_password(user_id, new_password, keep, bool(logout_devices))
        return {}

    async def deactivate(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        await hs.uia.authenticate(
            body.get("auth"), "/account/deactivate", [[uia.PASSWORD]], expected_user=requester.user_id
        )
        await hs.accounts.deactivate(requester.user_id)
        return {"id_server_unbind_result": "no-support"}

    async def threepids(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        rows = await hs.storage.accounts.get_threepids(requester.user_id)
        return {
            "threepids": [
                {"medium": m, "address": a, "added_at": added, "validated_at": validated}
                for m, a, added, validated in rows
                if validated is not None
            ]
        }

    router.add("GET", f"{CLIENT}/account/whoami", whoami)
    router.add("POST", f"{CLIENT}/account/password", change_password)
    router.add("POST", f"{CLIENT}/account/deactivate", deactivate)
    router.add("GET", f"{CLIENT}/account/3pid", threepids)
