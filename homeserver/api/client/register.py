"""/register, /register/available, email requestToken and the mail's link (spec: Account registration)."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from homeserver.api.client.login import CLIENT, login_response
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import optional, required
from homeserver.core import uia
from homeserver.core.accounts import check_email
from homeserver.core.email_validation import VALIDATE_PATH
from homeserver.errors import Forbidden, MatrixError, ThreepidAuthFailed, ThreepidInUse, ThreepidNotFound

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# Spec: client_secret must match [0-9a-zA-Z.=_-], 1-255 characters.
_CLIENT_SECRET_RE = re.compile(r"[0-9a-zA-Z.=_\-]{1,255}")


def registration_flows(hs: "HomeServer") -> list[list[str]]:
    reg = hs.config.registration
    stages = []
    if reg.tokens:
        stages.append(uia.REGISTRATION_TOKEN)
    if reg.require_email_verification:
        stages.append(uia.EMAIL)
    return [stages or [uia.DUMMY]]


def parse_token_request(body: dict[str, Any]) -> tuple[str, str, int]:
    client_secret = required(body, "client_secret", str)
    if not _CLIENT_SECRET_RE.fullmatch(client_secret):
        raise MatrixError("Invalid client_secret", "M_INVALID_PARAM")
    email = check_email(required(body, "email", str))
    send_attempt = required(body, "send_attempt", int)
    return email, client_secret, send_attempt


def register(router: Router, hs: "HomeServer") -> None:
    async def register_account(request: ApiRequest, version: str) -> dict[str, Any]:
        body = request.json_body()
        if request.query_param("kind", "user") != "user":
            raise MatrixError("Guest access is not enabled", "M_GUEST_ACCESS_FORBIDDEN", status=403)
        if not hs.config.registration.enabled:
            raise Forbidden("Registration has been disabled")
        ip = request.client_ip()
        # Validate what we can before any auth stage, so the client learns early.
        username = optional(body, "username", str)
        if username is not None:
            await hs.accounts.is_username_available(username.lower())
        password = required(body, "password", str)
        hs.accounts.check_password(password)
        # Type-check the login options now: a 400 after the account exists would strand it.
        inhibit_login = optional(body, "inhibit_login", bool, False)
        device_id = optional(body, "device_id", str)
        if device_id is not None and not 0 < len(device_id) <= 255:
            raise MatrixError("'device_id' must be 1 to 255 characters", "M_INVALID_PARAM")
        display_name = optional(body, "initial_device_display_name", str)
        refreshable = optional(body, "refresh_token", bool, False) is True
        result = await hs.uia.authenticate(body.get("auth"), "/register", registration_flows(hs))
        hs.ratelimiter.check("register", ip, hs.config.rate_limits.register_per_ip)
        user_id = await hs.accounts.register(
            username.lower() if username else None, password, email=result.email, email_validated=True
        )
        if result.email_session:
            await hs.email.consume(result.email_session)
        if inhibit_login:
            return {"user_id": user_id, "home_server": hs.config.server_name}
        session = await hs.accounts.create_session(
            user_id, device_id, display_name, refreshable=refreshable, ip=ip
        )
        return login_response(hs, session)

    async def available(request: ApiRequest, version: str) -> dict[str, Any]:
        username = request.query_param("username")
        if not username:
            raise MatrixError("Missing 'username'", "M_MISSING_PARAM")
        hs.ratelimiter.check("register", request.client_ip(), hs.config.rate_limits.register_per_ip, cost=0.2)
        # /register lower-cases the name it is given, so the check does too.
        await hs.accounts.is_username_available(username.lower())
        return {"available": True}

    async def register_request_token(request: ApiRequest, version: str) -> dict[str, Any]:
        email, client_secret, send_attempt = parse_token_request(request.json_body())
        hs.ratelimiter.check(
            "email_request", request.client_ip(), hs.config.rate_limits.password_reset_per_ip
        )
        if await hs.storage.accounts.user_for_email(email) is not None:
            raise ThreepidInUse("Email address is already in use")
        sid = await hs.email.request_token("register", email, client_secret, send_attempt)
        return {"sid": sid, "submit_url": hs.config.base_url + "/_homeserver/email/submit_token"}

    async def password_request_token(request: ApiRequest, version: str) -> dict[str, Any]:
        email, client_secret, send_attempt = parse_token_request(request.json_body())
        limits = hs.config.rate_limits
        hs.ratelimiter.check("password_reset", request.client_ip(), limits.password_reset_per_ip)
        hs.ratelimiter.check("password_reset_account", email, limits.password_reset_per_account)
        if await hs.storage.accounts.user_for_email(email) is None:
            raise ThreepidNotFound("Email address not found")
        sid = await hs.email.request_token("password_reset", email, client_secret, send_attempt)
        return {"sid": sid, "submit_url": hs.config.base_url + "/_homeserver/email/submit_token"}

    async def validate_link(request: ApiRequest) -> Response:
        """The page the mail's link opens: validates the session, says so in HTML."""
        sid = request.query_param("sid") or ""
        secret = request.query_param("client_secret") or ""
        token = request.query_param("token") or ""
        try:
            session = await hs.email.submit_token(sid, secret, token)
            if session.purpose == "verify_account":
                await hs.storage.accounts.mark_email_validated(session.address, hs.clock.time_ms())
            message, status = "Your email address has been verified. You can return to your app.", 200
        except ThreepidAuthFailed as e:
            message, status = f"This link is not valid: {e.message}", 400
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Email verification</title></head>"
            f"<body><p>{html.escape(message)}</p></body></html>"
        )
        return Response(
            page.encode(),
            status,
            b"text/html; charset=utf-8",
            ((b"Content-Security-Policy", b"default-src 'none'"),),
        )

    async def submit_token(request: ApiRequest) -> dict[str, Any]:
        """The spec's `submit_url`: {sid, client_secret, token} where token may be the mailed code."""
        body = request.json_body()
        session = await hs.email.submit_token(
            required(body, "sid", str), required(body, "client_secret", str), required(body, "token", str)
        )
        if session.purpose == "verify_account":
            await hs.storage.accounts.mark_email_validated(session.address, hs.clock.time_ms())
        return {"success": True}

    router.add("POST", f"{CLIENT}/register", register_account)
    router.add("GET", f"{CLIENT}/register/available", available)
    router.add("POST", f"{CLIENT}/register/email/requestToken", register_request_token)
    router.add("POST", f"{CLIENT}/account/password/email/requestToken", password_request_token)
    router.add("GET", VALIDATE_PATH, validate_link)
    router.add("POST", "/_homeserver/email/submit_token", submit_token)
