"""Changing a password: logged in (proven by the current password) or forgotten (proven
by the mailed link or code), for the Matrix API and the simple API alike."""

from __future__ import annotations

import secrets
from typing import Any

from homeserver.config import Config
from homeserver.core import uia
from homeserver.core.accounts import AccountService
from homeserver.core.clock import Clock
from homeserver.core.email_validation import EmailValidator
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.tokens import Requester
from homeserver.errors import ThreepidAuthFailed, ThreepidNotFound
from homeserver.storage import Storage


class PasswordResetService:
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

    def _limit(self, ip: str, email: str) -> None:
        limits = self.config.rate_limits
        self.ratelimiter.check_address("password_reset", ip, limits.password_reset_per_ip)
        self.ratelimiter.check("password_reset_account", email, limits.password_reset_per_account)

    # The Matrix API -------------------------------------------------------------------------

    async def request_token(self, email: str, client_secret: str, send_attempt: int, ip: str) -> str:
        """Mail a link and a code for resetting the password of the account with `email`."""
        self._limit(ip, email)
        if await self.storage.accounts.user_for_email(email) is None:
            raise ThreepidNotFound("Email address not found")
        return await self.email.request_token("password_reset", email, client_secret, send_attempt)

    async def change_password(
        self, requester: Requester | None, auth: Any, new_password: str, logout_devices: bool
    ) -> None:
        """`POST /account/password`. Logged in: the current password proves the owner (and the
        requesting device stays logged in). Logged out: the mailed link proves the address."""
        self.accounts.check_password(new_password)
        if requester is not None:
            await self.uia.authenticate(
                auth, "/account/password", [[uia.PASSWORD]], expected_user=requester.user_id
            )
            user_id, keep = requester.user_id, requester.device_id
        else:
            result = await self.uia.authenticate(
                auth, "/account/password", [[uia.EMAIL]], email_purpose="password_reset"
            )
            assert result.email is not None
            owner = await self.storage.accounts.user_for_email(result.email)
            if owner is None:
                raise ThreepidNotFound("No account has this email address")
            user_id, keep = owner[0], None
            if result.email_session:
                await self.email.consume(result.email_session)
        await self.accounts.set_password(user_id, new_password, keep, logout_devices)

    # The simple API ----------------------------------------------------------------------------

    async def request_reset(self, email: str, ip: str) -> None:
        """Mail a code if an account has `email`; the caller answers the same either way."""
        self._limit(ip, email)
        if await self.storage.accounts.user_for_email(email) is not None:
            await self.email.request_token("password_reset", email, secrets.token_urlsafe(16), 1)

    async def confirm_reset(self, email: str, code: str, new_password: str, ip: str) -> None:
        self.accounts.check_password(new_password)
        self.ratelimiter.check_address("email_code", ip, self.config.rate_limits.password_reset_per_ip)
        session = await self.email.submit_code_for_address("password_reset", email, code)
        owner = await self.storage.accounts.user_for_email(email)
        if owner is None:
            raise ThreepidAuthFailed("No account has this email address")
        await self.email.consume(session.session_id)
        await self.accounts.set_password(owner[0], new_password, keep_device=None, logout_devices=True)
        if not owner[1]:
            # Following the reset mail proves the address as well.
            await self.storage.accounts.mark_email_validated(email, self.clock.time_ms())
