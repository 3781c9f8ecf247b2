"""Signing up: the Matrix `/register` (user-interactive auth) and the simple API's
email accounts, and proving the address of a new account.

Both APIs share the rules here; their handlers only parse and render.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from homeserver.config import Config
from homeserver.core import uia
from homeserver.core.accounts import AccountService, LoginResult
from homeserver.core.clock import Clock
from homeserver.core.email_validation import EmailValidator
from homeserver.core.ratelimit import RateLimiter
from homeserver.errors import Forbidden, MatrixError, MissingParam, ThreepidInUse
from homeserver.storage import Storage

_MAX_DEVICE_ID = 255


@dataclass(frozen=True)
class Registration:
    """A parsed `POST /register` body (types already checked)."""

    kind: str
    username: str | None
    password: str | None
    auth: Any
    inhibit_login: bool
    device_id: str | None
    display_name: str | None
    refreshable: bool
    ip: str


@dataclass(frozen=True)
class EmailSignUp:
    """What `POST /api/auth/register` returns: a session, or none until the address is proven."""

    user_id: str
    session: LoginResult | None


class RegistrationService:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: Clock,
        accounts: AccountService,
        auth: uia.InteractiveAuth,
        email: EmailValidator,
        ratelimiter: RateLimiter,
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.accounts = accounts
        self.uia = auth
        self.email = email
        self.ratelimiter = ratelimiter

    def flows(self) -> list[list[str]]:
        reg = self.config.registration
        stages = []
        if reg.tokens or reg.requires_token:
            stages.append(uia.REGISTRATION_TOKEN)
        if reg.require_email_verification:
            stages.append(uia.EMAIL)
        return [stages or [uia.DUMMY]]

    # The Matrix API -------------------------------------------------------------------------

    async def register(self, req: Registration) -> LoginResult | str:
        """Create the account once a flow is complete; its session, or its user id with
        `inhibit_login`.

        @raise InteractiveAuthRequired: the 401 with the flows and the session to continue.
        """
        if req.kind != "user":
            raise MatrixError("Guest access is not enabled", "M_GUEST_ACCESS_FORBIDDEN", status=403)
        if not self.config.registration.enabled:
            raise Forbidden("Registration has been disabled")
        # Check what we can before any auth stage, so the client learns early (spec).
        username = req.username.lower() if req.username is not None else None
        if username is not None:
            await self.accounts.is_username_available(username)
        if req.device_id is not None and not 0 < len(req.device_id) <= _MAX_DEVICE_ID:
            raise MatrixError("'device_id' must be 1 to 255 characters", "M_INVALID_PARAM")
        if req.password is None:
            # Sign-up forms (matrix-js-sdk, Element, Cinny) first send `{}` to learn the flows:
            # they get them with a session (401), then send the password with `auth`.
            if req.auth is None:
                await self.uia.authenticate(None, "/register", self.flows())
            raise MissingParam("Missing 'password'")
        self.accounts.check_password(req.password)
        result = await self.uia.authenticate(req.auth, "/register", self.flows())
        self.ratelimiter.check_address("register", req.ip, self.config.rate_limits.register_per_ip)
        user_id = await self.accounts.register(
            username, req.password, email=result.email, email_validated=True
        )
        if result.email_session:
            await self.email.consume(result.email_session)
        if result.registration_token is not None and self.uia.managed_tokens is not None:
            await self.uia.managed_tokens.complete(result.registration_token)
        if req.inhibit_login:
            return user_id
        return await self.accounts.create_session(
            user_id, req.device_id, req.display_name, refreshable=req.refreshable, ip=req.ip
        )

    async def registration_token_valid(self, token: str, ip: str) -> bool:
        """`/v1/register/m.login.registration_token/validity`: whether `token` would pass the
        registration token stage. Rate-limited like sign-up, so it is no faster an oracle."""
        self.ratelimiter.check_address("register", ip, self.config.rate_limits.register_per_ip, cost=0.2)
        return await self.uia.registration_token_valid(token)

    async def check_username(self, username: str, ip: str) -> None:
        """`/register/available`: M_USER_IN_USE or M_INVALID_USERNAME, else nothing."""
        self.ratelimiter.check_address("register", ip, self.config.rate_limits.register_per_ip, cost=0.2)
        # /register lower-cases the name it is given, so the check does too.
        await self.accounts.is_username_available(username.lower())

    async def request_email_token(self, email: str, client_secret: str, send_attempt: int, ip: str) -> str:
        """Mail a link and a code proving an address for a new account; the session id."""
        self.ratelimiter.check_address("email_request", ip, self.config.rate_limits.password_reset_per_ip)
        if await self.storage.accounts.user_for_email(email) is not None:
            raise ThreepidInUse("Email address is already in use")
        return await self.email.request_token("register", email, client_secret, send_attempt)

    async def confirm_email(self, session_id: str, client_secret: str, token: str) -> None:
        """The mail's link or code: validates the session; an account waiting for it may log in."""
        session = await self.email.submit_token(session_id, client_secret, token)
        if session.purpose == "verify_account":
            await self.storage.accounts.mark_email_validated(session.address, self.clock.time_ms())

    # The simple API ----------------------------------------------------------------------------

    async def register_with_email(self, email: str, password: str, ip: str) -> EmailSignUp:
        self.accounts.check_password(password)
        reg = self.config.registration
        if not reg.enabled or reg.tokens or reg.requires_token:
            raise Forbidden("Registration through the simple API is disabled on this server")
        self.ratelimiter.check_address("register", ip, self.config.rate_limits.register_per_ip)
        localpart = await self.accounts.localpart_for_email(email)
        if reg.require_email_verification:
            # Mail first: when it cannot be sent, no account is left holding the address.
            # The account then cannot log in until the mail's link or code is used.
            if await self.storage.accounts.user_for_email(email) is not None:
                raise ThreepidInUse("Email address is already in use")
            await self.email.request_token("verify_account", email, secrets.token_urlsafe(16), 1)
            user_id = await self.accounts.register(localpart, password, email=email, email_validated=False)
            return EmailSignUp(user_id, None)
        user_id = await self.accounts.register(localpart, password, email=email, email_validated=False)
        session = await self.accounts.create_session(user_id, None, "simple API", refreshable=False, ip=ip)
        return EmailSignUp(user_id, session)

    async def verify_email_code(self, email: str, code: str, ip: str) -> None:
        self.ratelimiter.check_address("email_code", ip, self.config.rate_limits.password_reset_per_ip)
        session = await self.email.submit_code_for_address("verify_account", email, code)
        await self.storage.accounts.mark_email_validated(session.address, self.clock.time_ms())

    async def resend_verification(self, email: str, ip: str) -> None:
        """A new mail, only for an account still waiting for verification (the caller answers
        the same either way, so the answer does not tell which addresses have accounts)."""
        limits = self.config.rate_limits
        self.ratelimiter.check_address("password_reset", ip, limits.password_reset_per_ip)
        self.ratelimiter.check("password_reset_account", email, limits.password_reset_per_account)
        owner = await self.storage.accounts.user_for_email(email)
        if owner is not None and not owner[1]:
            await self.email.request_token("verify_account", email, secrets.token_urlsafe(16), 1)
