"""The simple API's accounts: /api/auth/* (docs/api.md).

Same accounts and tokens as the Matrix API: a `token` from here is a Matrix
access token and the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import required
from homeserver.core.accounts import check_email

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def register_account(request: ApiRequest) -> Response:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        password = required(body, "password", str)
        result = await hs.registration.register_with_email(email, password, request.client_ip())
        if result.session is None:
            # The account cannot log in until the mail's link or code is used.
            return Response({"userId": result.user_id, "verificationRequired": True}, 201)
        return Response({"userId": result.user_id, "token": result.session.tokens.access_token}, 201)

    async def login(request: ApiRequest) -> dict[str, Any]:
        body = request.json_body()
        email = required(body, "email", str)
        password = required(body, "password", str)
        session = await hs.accounts.password_login(
            ("email", email), password, request.client_ip(), display_name="simple API", refreshable=True
        )
        return _session_json(hs, session.user_id, session.device_id, session.tokens)

    async def refresh(request: ApiRequest) -> dict[str, Any]:
        body = request.json_body()
        session = await hs.accounts.refresh(required(body, "refreshToken", str))
        return _session_json(hs, session.user_id, session.device_id, session.tokens)

    async def logout(request: ApiRequest) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.accounts.logout(requester.user_id, requester.device_id)
        return {}

    async def verify_email(request: ApiRequest) -> dict[str, Any]:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        code = required(body, "code", str)
        await hs.registration.verify_email_code(email, code, request.client_ip())
        return {"verified": True}

    async def resend_verification(request: ApiRequest) -> Response:
        email = check_email(required(request.json_body(), "email", str))
        await hs.registration.resend_verification(email, request.client_ip())
        # Always 202: the answer must not reveal which addresses have accounts.
        return Response({}, 202)

    async def reset_request(request: ApiRequest) -> Response:
        email = check_email(required(request.json_body(), "email", str))
        await hs.password_reset.request_reset(email, request.client_ip())
        # Always 202: the answer must not reveal which addresses have accounts.
        return Response({}, 202)

    async def reset_confirm(request: ApiRequest) -> dict[str, Any]:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        code = required(body, "code", str)
        new_password = required(body, "newPassword", str)
        await hs.password_reset.confirm_reset(email, code, new_password, request.client_ip())
        return {}

    router.add("POST", "/api/auth/register", register_account)
    router.add("POST", "/api/auth/login", login)
    router.add("POST", "/api/auth/refresh", refresh)
    router.add("POST", "/api/auth/logout", logout)
    router.add("POST", "/api/auth/verify-email", verify_email)
    router.add("POST", "/api/auth/verify-email/resend", resend_verification)
    router.add("POST", "/api/auth/password-reset/request", reset_request)
    router.add("POST", "/api/auth/password-reset/confirm", reset_confirm)


def _session_json(hs: "HomeServer", user_id: str, device_id: str, tokens: Any) -> dict[str, Any]:
    return {
        "userId": user_id,
        "deviceId": device_id,
        "token": tokens.access_token,
        "refreshToken": tokens.refresh_token,
        "expiresInMs": max(0, tokens.expires_ts - hs.clock.time_ms()),
    }
