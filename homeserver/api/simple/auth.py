"""The simple API's accounts: /api/auth/* (docs/api.md).

Same accounts and tokens as the Matrix API: a `token` from here is a Matrix
access token and the other way round.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import required
from homeserver.core.accounts import check_email
from homeserver.errors import Forbidden, ThreepidAuthFailed, ThreepidInUse

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    limits = hs.config.rate_limits

    async def register_account(request: ApiRequest) -> Response:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        password = hs.accounts.check_password(required(body, "password", str))
        if not hs.config.registration.enabled or hs.config.registration.tokens:
            raise Forbidden("Registration through the simple API is disabled on this server")
        ip = request.client_ip()
        hs.ratelimiter.check("register", ip, limits.register_per_ip)
        localpart = await hs.accounts.localpart_for_email(email)
        if hs.config.registration.require_email_verification:
            # Mail first: when it cannot be sent, no account is left holding the address.
            # The account then cannot log in until the mail's link or code is used.
            if await hs.storage.accounts.user_for_email(email) is not None:
                raise ThreepidInUse("Email address is already in use")
            await hs.email.request_token("verify_account", email, secrets.token_urlsafe(16), 1)
            user_id = await hs.accounts.register(localpart, password, email=email, email_validated=False)
            return Response({"userId": user_id, "verificationRequired": True}, 201)
        user_id = await hs.accounts.register(localpart, password, email=email, email_validated=False)
        session = await hs.accounts.create_session(user_id, None, "simple API", refreshable=False, ip=ip)
        return Response({"userId": user_id, "token": session.tokens.access_token}, 201)

    async def login(request: ApiRequest) -> dict[str, Any]:
        body = request.json_body()
        email = required(body, "email", str)
        password = required(body, "password", str)
        ip = request.client_ip()
        hs.ratelimiter.check("login", ip, limits.login_per_ip)
        user_id = await hs.accounts.user_for_email_login(email)
        user_id = await hs.accounts.check_password_login(user_id, password, ip)
        session = await hs.accounts.create_session(user_id, None, "simple API", refreshable=True, ip=ip)
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
        hs.ratelimiter.check("email_code", request.client_ip(), limits.password_reset_per_ip)
        session = await hs.email.submit_code_for_address("verify_account", email, code)
        await hs.storage.accounts.mark_email_validated(session.address, hs.clock.time_ms())
        return {"verified": True}

    async def resend_verification(request: ApiRequest) -> Response:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        hs.ratelimiter.check("password_reset", request.client_ip(), limits.password_reset_per_ip)
        hs.ratelimiter.check("password_reset_account", email, limits.password_reset_per_account)
        # Always 202, and a mail only for an account still waiting for verification.
        owner = await hs.storage.accounts.user_for_email(email)
        if owner is not None and not owner[1]:
            await hs.email.request_token("verify_account", email, secrets.token_urlsafe(16), 1)
        return Response({}, 202)

    async def reset_request(request: ApiRequest) -> Response:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        hs.ratelimiter.check("password_reset", request.client_ip(), limits.password_reset_per_ip)
        hs.ratelimiter.check("password_reset_account", email, limits.password_reset_per_account)
        # Always 202: the answer must not reveal which addresses have accounts.
        if await hs.storage.accounts.user_for_email(email) is not None:
            await hs.email.request_token("password_reset", email, secrets.token_urlsafe(16), 1)
        return Response({}, 202)

    async def reset_confirm(request: ApiRequest) -> dict[str, Any]:
        body = request.json_body()
        email = check_email(required(body, "email", str))
        code = required(body, "code", str)
        new_password = hs.accounts.check_password(required(body, "newPassword", str))
        hs.ratelimiter.check("email_code", request.client_ip(), limits.password_reset_per_ip)
        session = await hs.email.submit_code_for_address("password_reset", email, code)
        owner = await hs.storage.accounts.user_for_email(email)
        if owner is None:
            raise ThreepidAuthFailed("No account has this email address")
        await hs.email.consume(session.session_id)
        await hs.accounts.set_password(owner[0], new_password, keep_device=None, logout_devices=True)
        if not owner[1]:
            # Following the reset mail proves the address as well.
            await hs.storage.accounts.mark_email_validated(email, hs.clock.time_ms())
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
