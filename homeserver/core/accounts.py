"""Accounts: registration, login, logout, passwords, deactivation.

Both APIs call these functions: the Matrix Client-Server routes and the simple
`/api/auth/*` routes differ only in how they parse and render.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.logger import Logger

from homeserver.config import Config
from homeserver.core.clock import Clock
from homeserver.core.email_validation import EmailValidator, normalise_email
from homeserver.core.passwords import PasswordHasher
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.tokens import IssuedTokens, TokenService, hash_refresh_token, new_device_id
from homeserver.core.uia import PASSWORD, InteractiveAuth
from homeserver.errors import (
    Forbidden,
    InvalidUsername,
    MatrixError,
    ThreepidInUse,
    UnknownToken,
    UserDeactivated,
    UserInUse,
    WeakPassword,
)
from homeserver.storage import Storage
from homeserver.storage.accounts import ThreepidExists, UserExists

log = Logger()

# Spec: user identifiers, "historical" grammar narrowed to what we allocate.
_LOCALPART_RE = re.compile(r"[a-z0-9._=\-/+]+")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MAX_USER_ID_LENGTH = 255
_MAX_PASSWORD_LENGTH = 512
_MAX_DISPLAY_NAME = 256


@dataclass(frozen=True)
class LoginResult:
    user_id: str
    device_id: str
    tokens: IssuedTokens


def check_email(address: object) -> str:
    if not isinstance(address, str) or len(address) > 320 or not _EMAIL_RE.fullmatch(address.strip()):
        raise MatrixError("Not a valid email address", "M_INVALID_PARAM")
    return normalise_email(address)


class AccountService:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: Clock,
        hasher: PasswordHasher,
        tokens: TokenService,
        email: EmailValidator,
        ratelimiter: RateLimiter,
        auth: InteractiveAuth,
    ) -> None:
        self.config = config
        self.server_name = config.server_name
        self.storage = storage
        self.clock = clock
        self.hasher = hasher
        self.tokens = tokens
        self.email = email
        self.ratelimiter = ratelimiter
        self.uia = auth
        # Called as listener(user_id, device_id) after a login made a device with a new id.
        self.on_new_device: list[Callable[[str, str], None]] = []
        # Called as listener(user_id, device_ids) after devices are deleted.
        self.on_devices_deleted: list[Callable[[str, list[str]], Awaitable[None]]] = []
        # Called with the user id after an account is deactivated and its devices deleted
        # (its remaining end-to-end keys go: KeyService.user_deactivated).
        self.on_deactivated: list[Callable[[str], Awaitable[None]]] = []
        # Called as listener(user_id, kept_device) after a password change.
        self.on_password_changed: list[Callable[[str, str | None], Awaitable[None]]] = []
        # Called with the user id after an account is created or deactivated (the user directory).
        self.on_profile_changed: list[Callable[[str], Awaitable[None]]] = []
        # Erases an account (core/erasure.py, wired by the server): deactivation with `erase`.
        self.erase_user: Callable[[str], Awaitable[None]] | None = None

    # Identifiers -------------------------------------------------------------

    def user_id_for(self, user: str) -> str:
        """A full user id from a localpart or a full id (the domain must be ours)."""
        if user.startswith("@"):
            return user
        return f"@{user.lower()}:{self.server_name}"

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name) and user_id.startswith("@")

    def check_localpart(self, localpart: str) -> str:
        if not localpart or not _LOCALPART_RE.fullmatch(localpart):
            raise InvalidUsername("User ID may only contain a-z, 0-9, and . _ = - / +")
        user_id = f"@{localpart}:{self.server_name}"
        if len(user_id) > _MAX_USER_ID_LENGTH:
            raise InvalidUsername("User ID is too long")
        return user_id

    def check_password(self, password: object) -> str:
        if not isinstance(password, str):
            raise MatrixError("'password' must be a string", "M_BAD_JSON")
        if len(password) < self.config.registration.password_min_length:
            raise WeakPassword(
                f"Password must be at least {self.config.registration.password_min_length} characters"
            )
        if len(password) > _MAX_PASSWORD_LENGTH:
            raise WeakPassword("Password is too long")
        return password

    async def is_username_available(self, localpart: str) -> bool:
        user_id = self.check_localpart(localpart)
        if await self.storage.accounts.user_exists(user_id):
            raise UserInUse("User ID already taken")
        return True

    async def localpart_for_email(self, email: str) -> str:
        """A free localpart derived from an email address (the simple API's accounts)."""
        base = re.sub(r"[^a-z0-9._=\-]", "", email.split("@", 1)[0].lower())[:32] or "user"
        candidate = base
        while await self.storage.accounts.user_exists(f"@{candidate}:{self.server_name}"):
            candidate = f"{base}.{secrets.randbelow(1_000_000):06d}"
        return candidate

    # Registration ------------------------------------------------------------

    async def register(
        self,
        localpart: str | None,
        password: str,
        *,
        email: str | None = None,
        email_validated: bool = False,
        is_admin: bool = False,
        displayname: str | None = None,
    ) -> str:
        """Create an account; return its user id.

        @raise UserInUse / InvalidUsername / WeakPassword / ThreepidInUse
        """
        if localpart is None:
            localpart = await self._generate_localpart()
        user_id = self.check_localpart(localpart)
        self.check_password(password)
        password_hash = await self.hasher.hash(password)
        try:
            await self.storage.accounts.create_user(
                user_id,
                password_hash,
                self.clock.time_ms(),
                is_admin=is_admin,
                email=email,
                email_validated=email_validated,
                displayname=displayname if displayname is not None else localpart,
            )
        except UserExists:
            raise UserInUse("User ID already taken") from None
        except ThreepidExists:
            raise ThreepidInUse("Email address is already in use") from None
        log.info("registered {user_id}", user_id=user_id)
        await self._profile_changed(user_id)
        return user_id

    async def _profile_changed(self, user_id: str) -> None:
        for listener in self.on_profile_changed:
            try:
                await listener(user_id)
            except Exception:
                log.failure("profile listener failed for {user_id}", user_id=user_id)

    async def _generate_localpart(self) -> str:
        while True:
            candidate = "u" + secrets.token_hex(6)
            if not await self.storage.accounts.user_exists(f"@{candidate}:{self.server_name}"):
                return candidate

    # Login ---------------------------------------------------------------------

    async def check_password_login(self, user_id: str, password: str, ip: str) -> str:
        """Verify a password login; return the canonical user id.

        Failed attempts count against the account (so spreading guesses over many
        IPs does not help); the IP limit is taken by the caller for every attempt.
        """
        limits = self.config.rate_limits
        self.ratelimiter.peek("login_failures", user_id, limits.login_failures_per_account)
        user = await self.storage.accounts.get_user(user_id) if self.is_local(user_id) else None
        ok = await self.hasher.verify(user.password_hash if user else None, password)
        # Deactivation drops the password hash, so this comes before the password check.
        if user is not None and user.deactivated:
            raise UserDeactivated("This account has been deactivated")
        if not ok or user is None:
            self.ratelimiter.check("login_failures", user_id, limits.login_failures_per_account)
            raise Forbidden("Invalid username or password")
        if (
            self.config.registration.require_email_verification
            and await self.storage.accounts.has_unvalidated_email(user_id)
        ):
            raise Forbidden(
                "Email address not verified: follow the link in the verification mail, then log in",
                reason="email_not_verified",
            )
        return user.user_id

    async def password_login(
        self,
        who: tuple[str, str],
        password: str,
        ip: str,
        *,
        device_id: str | None = None,
        display_name: str | None = None,
        refreshable: bool = False,
    ) -> LoginResult:
        """Log in with a password: `who` is ("user", localpart or user id) or ("email", address).
        Every attempt counts against the IP's login limit."""
        self.ratelimiter.check_address("login", ip, self.config.rate_limits.login_per_ip)
        kind, name = who
        user_id = await self.user_for_email_login(name) if kind == "email" else self.user_id_for(name)
        user_id = await self.check_password_login(user_id, password, ip)
        return await self.create_session(user_id, device_id, display_name, refreshable, ip)

    async def user_for_email_login(self, email: str) -> str:
        owner = await self.storage.accounts.user_for_email(normalise_email(email))
        if owner is None:
            # Same answer as a wrong password: do not reveal which addresses exist.
            raise Forbidden("Invalid username or password")
        return owner[0]

    async def create_session(
        self,
        user_id: str,
        device_id: str | None,
        display_name: str | None,
        refreshable: bool,
        ip: str | None,
    ) -> LoginResult:
        """Create or reuse a device and mint its tokens."""
        if device_id is not None and (not isinstance(device_id, str) or not 0 < len(device_id) <= 255):
            raise MatrixError("'device_id' must be a non-empty string", "M_INVALID_PARAM")
        if display_name is not None and not isinstance(display_name, str):
            raise MatrixError("'initial_device_display_name' must be a string", "M_INVALID_PARAM")
        new_device = device_id is None
        device_id = device_id or new_device_id()
        issued, refresh_row = self.tokens.new_tokens(user_id, device_id, refreshable)
        await self.storage.devices.login_device(
            user_id,
            device_id,
            (display_name or "")[:_MAX_DISPLAY_NAME] or None,
            issued.token_id,
            issued.expires_ts,
            refresh_row,
            self.clock.time_ms(),
            ip,
        )
        self.tokens.forget_device(user_id, device_id)
        if new_device:
            for listener in self.on_new_device:
                listener(user_id, device_id)
        return LoginResult(user_id, device_id, issued)

    async def refresh(self, refresh_token: object) -> LoginResult:
        if not isinstance(refresh_token, str) or not refresh_token:
            raise MatrixError("'refresh_token' is required", "M_MISSING_PARAM")
        token_hash = hash_refresh_token(refresh_token)
        # The new JWT names the user and device, so read them first; the rotation
        # below re-checks the token inside its transaction (a second use loses).
        row = await self.storage.devices.get_refresh_token(token_hash)
        if row is None or row[2] <= self.clock.time_ms():
            raise UnknownToken("Unknown or expired refresh token")
        user_id, device_id = row[0], row[1]
        issued, new_refresh = self.tokens.new_tokens(user_id, device_id, refreshable=True)
        assert new_refresh is not None
        rotated = await self.storage.devices.rotate_refresh_token(
            token_hash, self.clock.time_ms(), issued.token_id, issued.expires_ts, new_refresh
        )
        if rotated != (user_id, device_id):
            raise UnknownToken("Unknown or expired refresh token")
        self.tokens.forget_device(user_id, device_id)
        return LoginResult(user_id, device_id, issued)

    # Logout, passwords, deactivation ------------------------------------------

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        """Delete devices with their tokens, then tell the listeners (their keys go too)."""
        if not device_ids:
            return
        revoked = await self.storage.devices.delete_devices(user_id, device_ids)
        self.tokens.forget(revoked)
        for device_id in device_ids:
            self.tokens.forget_device(user_id, device_id)
        for listener in self.on_devices_deleted:
            await listener(user_id, device_ids)

    async def delete_all_devices(self, user_id: str, except_device: str | None = None) -> None:
        devices = await self.storage.devices.get_devices(user_id)
        await self.delete_devices(user_id, [d.device_id for d in devices if d.device_id != except_device])

    async def logout(self, user_id: str, device_id: str) -> None:
        """Log out one device: the device and all its tokens go."""
        await self.delete_devices(user_id, [device_id])

    async def logout_all(self, user_id: str) -> None:
        await self.delete_all_devices(user_id)

    async def set_password(
        self, user_id: str, new_password: str, keep_device: str | None, logout_devices: bool
    ) -> None:
        self.check_password(new_password)
        password_hash = await self.hasher.hash(new_password)
        await self.storage.accounts.set_password_hash(user_id, password_hash)
        if logout_devices:
            await self.delete_all_devices(user_id, except_device=keep_device)
        for listener in self.on_password_changed:
            await listener(user_id, keep_device)

    async def deactivate_with_auth(self, user_id: str, auth: object, erase: bool = False) -> None:
        """`POST /account/deactivate`: the account password proves the owner; with `erase`,
        their data is erased too (docs/gdpr.md)."""
        await self.uia.authenticate(auth, "/account/deactivate", [[PASSWORD]], expected_user=user_id)
        if erase:
            assert self.erase_user is not None
            await self.erase_user(user_id)
        else:
            await self.deactivate(user_id)

    async def validated_threepids(self, user_id: str) -> list[tuple[str, str, int, int]]:
        """(medium, address, added_at, validated_at) of the user's proven addresses."""
        rows = await self.storage.accounts.get_threepids(user_id)
        return [(m, a, added, validated) for m, a, added, validated in rows if validated is not None]

    async def deactivate(self, user_id: str) -> None:
        await self.storage.accounts.deactivate(user_id)
        await self.delete_all_devices(user_id)
        for listener in self.on_deactivated:
            await listener(user_id)
        await self._profile_changed(user_id)
        log.info("deactivated {user_id}", user_id=user_id)
