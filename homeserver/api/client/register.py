"""/register, /register/available, email requestToken and the mail's link (spec: Account registration)."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from homeserver.api.client.login import CLIENT, login_response
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import optional, required
from homeserver.core.accounts import check_email
from homeserver.core.email_validation import VALIDATE_PATH
from homeserver.core.registration import Registration
from homeserver.errors import MatrixError, MissingParam, ThreepidAuthFailed

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# Spec: client_secret must match [0-9a-zA-Z.=_-], 1-255 characters.
_CLIENT_SECRET_RE = re.compile(r"[0-9a-zA-Z.=_\-]{1,255}")
SUBMIT_PATH = "/_homeserver/email/submit_token"


def parse_token_request(body: dict[str, Any]) -> tuple[str, str, int]:
    client_secret = required(body, "client_secret", str)
    if not _CLIENT_SECRET_RE.fullmatch(client_secret):
        raise MatrixError("Invalid client_secret", "M_INVALID_PARAM")
    email = check_email(required(body, "email", str))
    send_attempt = required(body, "send_attempt", int)
    if not -(2**31) <= send_attempt < 2**31:
        # Stored in a 32-bit column: a larger one was a 500 on PostgreSQL.
        raise MatrixError("'send_attempt' must fit in 32 bits", "M_INVALID_PARAM")
    return email, client_secret, send_attempt


def register(router: Router, hs: "HomeServer") -> None:
    async def register_account(request: ApiRequest, version: str) -> dict[str, Any]:
        body = request.json_body()
        result = await hs.registration.register(
            Registration(
                kind=request.query_param("kind", "user") or "user",
                username=optional(body, "username", str),
                password=optional(body, "password", str),
                auth=body.get("auth"),
                inhibit_login=optional(body, "inhibit_login", bool, False) is True,
                device_id=optional(body, "device_id", str),
                display_name=optional(body, "initial_device_display_name", str),
                refreshable=optional(body, "refresh_token", bool, False) is True,
                ip=request.client_ip(),
            )
        )
        if isinstance(result, str):  # inhibit_login
            return {"user_id": result, "home_server": hs.config.server_name}
        return login_response(hs, result)

    async def available(request: ApiRequest, version: str) -> dict[str, Any]:
        username = request.query_param("username")
        if not username:
            raise MissingParam("Missing 'username'")
        await hs.registration.check_username(username, request.client_ip())
        return {"available": True}

    async def register_request_token(request: ApiRequest, version: str) -> dict[str, Any]:
        email, client_secret, send_attempt = parse_token_request(request.json_body())
        sid = await hs.registration.request_email_token(
            email, client_secret, send_attempt, request.client_ip()
        )
        return {"sid": sid, "submit_url": hs.config.base_url + SUBMIT_PATH}

    async def password_request_token(request: ApiRequest, version: str) -> dict[str, Any]:
        email, client_secret, send_attempt = parse_token_request(request.json_body())
        sid = await hs.password_reset.request_token(email, client_secret, send_attempt, request.client_ip())
        return {"sid": sid, "submit_url": hs.config.base_url + SUBMIT_PATH}

    async def validate_link(request: ApiRequest) -> Response:
        """The page the mail's link opens: validates the session, says so in HTML."""
        sid = request.query_param("sid") or ""
        secret = request.query_param("client_secret") or ""
        token = request.query_param("token") or ""
        try:
            await hs.registration.confirm_email(sid, secret, token)
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
        await hs.registration.confirm_email(
            required(body, "sid", str), required(body, "client_secret", str), required(body, "token", str)
        )
        return {"success": True}

    async def token_validity(request: ApiRequest) -> dict[str, Any]:
        token = request.query_param("token")
        if not token:
            raise MissingParam("Missing 'token'")
        return {"valid": await hs.registration.registration_token_valid(token, request.client_ip())}

    router.add("POST", f"{CLIENT}/register", register_account)
    router.add("GET", "/_matrix/client/v1/register/m.login.registration_token/validity", token_validity)
    router.add("GET", f"{CLIENT}/register/available", available)
    router.add("POST", f"{CLIENT}/register/email/requestToken", register_request_token)
    router.add("POST", f"{CLIENT}/account/password/email/requestToken", password_request_token)
    router.add("GET", VALIDATE_PATH, validate_link)
    router.add("POST", SUBMIT_PATH, submit_token)
