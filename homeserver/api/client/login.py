"""/login, /logout, /logout/all, /refresh (spec: Client-Server API, Login)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.accounts import LoginResult
from homeserver.errors import BadJson, Forbidden, MatrixError

if TYPE_CHECKING:
    from homeserver.server import HomeServer

CLIENT = "/_matrix/client/{version:v3|r0}"
# Endpoints that were served under `unstable` before they were specified keep that alias,
# as Synapse does: Element Web 1.11 (js-sdk 26) still posts cross-signing keys there.
CLIENT_OR_UNSTABLE = "/_matrix/client/{version:v3|r0|unstable}"


def login_response(hs: "HomeServer", result: LoginResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": result.user_id,
        "access_token": result.tokens.access_token,
        "device_id": result.device_id,
        "home_server": hs.config.server_name,
        "well_known": {"m.homeserver": {"base_url": hs.config.public_baseurl}},
    }
    if result.tokens.refresh_token is not None:
        body["refresh_token"] = result.tokens.refresh_token
        body["expires_in_ms"] = max(0, result.tokens.expires_ts - hs.clock.time_ms())
    return body


def register(router: Router, hs: "HomeServer") -> None:
    async def get_flows(request: ApiRequest, version: str) -> dict[str, Any]:
        return {"flows": [{"type": "m.login.password"}]}

    async def login(request: ApiRequest, version: str) -> dict[str, Any]:
        body = request.json_body()
        login_type = required(body, "type", str)
        if login_type != "m.login.password":
            raise MatrixError(f"Unknown login type {login_type}", "M_UNKNOWN")
        password = required(body, "password", str)
        result = await hs.accounts.password_login(
            _identifier(body),
            password,
            request.client_ip(),
            device_id=optional(body, "device_id", str),
            display_name=optional(body, "initial_device_display_name", str),
            refreshable=optional(body, "refresh_token", bool, False) is True,
        )
        return login_response(hs, result)

    async def logout(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.accounts.logout(requester.user_id, requester.device_id)
        return {}

    async def logout_all(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.accounts.logout_all(requester.user_id)
        return {}

    async def refresh(request: ApiRequest, version: str = "v3") -> dict[str, Any]:  # path has no {version}
        body = request.json_body()
        result = await hs.accounts.refresh(body.get("refresh_token"))
        return {
            "access_token": result.tokens.access_token,
            "refresh_token": result.tokens.refresh_token,
            "expires_in_ms": max(0, result.tokens.expires_ts - hs.clock.time_ms()),
        }

    router.add("GET", f"{CLIENT}/login", get_flows)
    router.add("POST", f"{CLIENT}/login", login)
    router.add("POST", f"{CLIENT}/logout", logout)
    router.add("POST", f"{CLIENT}/logout/all", logout_all)
    router.add("POST", "/_matrix/client/v3/refresh", refresh)
    router.add("POST", "/_matrix/client/v1/refresh", refresh)


def _identifier(body: dict[str, Any]) -> tuple[str, str]:
    """Whom a login body names: ("user", name) or ("email", address)."""
    identifier = body.get("identifier")
    if identifier is None:
        # Deprecated top-level forms, still sent by some clients.
        if isinstance(body.get("user"), str):
            return "user", body["user"]
        if body.get("medium") == "email" and isinstance(body.get("address"), str):
            return "email", body["address"]
        raise MatrixError("'identifier' is required", "M_MISSING_PARAM")
    if not isinstance(identifier, dict):
        raise BadJson("'identifier' must be an object")
    kind = identifier.get("type")
    if kind == "m.id.user":
        user = identifier.get("user")
        if not isinstance(user, str) or not user:
            raise BadJson("'identifier.user' must be a string")
        return "user", user
    if kind == "m.id.thirdparty":
        if identifier.get("medium") != "email":
            raise Forbidden("Only email third-party identifiers are supported")
        address = identifier.get("address")
        if not isinstance(address, str):
            raise BadJson("'identifier.address' must be a string")
        return "email", address
    raise MatrixError(f"Unknown identifier type {kind!r}", "M_UNKNOWN")
