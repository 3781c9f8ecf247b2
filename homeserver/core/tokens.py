"""Access tokens (JWTs) and refresh tokens, and turning a token into a requester.

An access token is a JWT (HS256, the server's secret) carrying the user id (`sub`),
the device id (`did`), a token id (`jti`), `iat` and `exp`. It is both the Matrix
access token and the simple API's `token`, so one login works on both APIs. The
signature proves the server made it; the `access_tokens` row proves it has not
been revoked (logout deletes the row). Refresh tokens are opaque random strings,
stored hashed, used once.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from homeserver.core.clock import Clock
from homeserver.errors import UnknownToken
from homeserver.storage import Storage
from homeserver.storage.devices import NewRefreshToken

ALGORITHM = "HS256"
REFRESH_PREFIX = "hsr_"
# Verified tokens kept in memory; revocation on this process evicts at once.
_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class Requester:
    """Who is making a request: the user and device behind a valid access token."""

    user_id: str
    device_id: str
    token_id: str
    expires_ts: int


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    token_id: str
    expires_ts: int
    refresh_token: str | None


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        secret: bytes,
        issuer: str,
        access_lifetime_ms: int,
        non_refreshable_lifetime_ms: int,
        refresh_lifetime_ms: int,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self._secret = secret
        self.issuer = issuer
        self.access_lifetime_ms = access_lifetime_ms
        self.non_refreshable_lifetime_ms = non_refreshable_lifetime_ms
        self.refresh_lifetime_ms = refresh_lifetime_ms
        # Keyed by the token string itself; `_token_of` finds it again from the token id.
        self._cache: OrderedDict[str, Requester] = OrderedDict()
        self._token_of: dict[str, str] = {}
        # Raises for an account that may not use its tokens now (set by the server: a locked
        # account, core/restrictions.py); checked on every request, cached token or not.
        self.check_account: Callable[[str], None] = lambda user_id: None
        # Called as on_revoked(token_ids, devices) after a revocation here, so that other
        # processes drop them from their caches too (homeserver/workers/invalidation.py).
        self.on_revoked: Callable[[list[str], list[tuple[str, str]]], None] | None = None

    def new_tokens(
        self, user_id: str, device_id: str, refreshable: bool
    ) -> tuple[IssuedTokens, NewRefreshToken | None]:
        """Mint an access token (and a refresh token); the caller persists them."""
        now = self.clock.time_ms()
        token_id = secrets.token_urlsafe(16)
        lifetime = self.access_lifetime_ms if refreshable else self.non_refreshable_lifetime_ms
        expires_ts = now + lifetime
        claims = {
            "iss": self.issuer,
            "sub": user_id,
            "did": device_id,
            "jti": token_id,
            "iat": now // 1000,
            "exp": expires_ts // 1000,
        }
        import jwt  # on first use: PyJWT pulls in cryptography's x509, 50 ms off every start

        access = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        refresh_token = None
        refresh_row = None
        if refreshable:
            refresh_token = REFRESH_PREFIX + secrets.token_urlsafe(32)
            refresh_row = NewRefreshToken(hash_refresh_token(refresh_token), now + self.refresh_lifetime_ms)
        return IssuedTokens(access, token_id, (expires_ts // 1000) * 1000, refresh_token), refresh_row

    async def get_requester(self, token: str) -> Requester:
        """Validate an access token.

        @raise UnknownToken: forged, malformed, revoked (soft_logout false) or
            expired (soft_logout true: the client may refresh or log in again).
        """
        # The exact string was verified before and is still live: skip the JWT work.
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_ts <= self.clock.time_ms():
                raise UnknownToken("Access token has expired", soft_logout=True)
            self.check_account(cached.user_id)
            return cached
        # A JWT is ASCII; anything else (a WebSocket auth frame may carry any string, even a lone
        # surrogate that cannot be encoded) is no token of ours.
        if not token.isascii():
            raise UnknownToken("Unrecognised access token")
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                # Expiry is judged on the server's clock below, not on PyJWT's reading of the time.
                options={
                    "require": ["sub", "did", "jti", "exp", "iat", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            raise UnknownToken("Unrecognised access token") from None
        expires_s = claims["exp"]
        if not isinstance(expires_s, int) or isinstance(expires_s, bool):
            raise UnknownToken("Unrecognised access token")
        if expires_s * 1000 <= self.clock.time_ms():
            raise UnknownToken("Access token has expired", soft_logout=True)
        token_id = claims["jti"]
        if not isinstance(token_id, str):
            raise UnknownToken("Unrecognised access token")
        row = await self.storage.devices.get_access_token(token_id)
        if row is None or row.user_id != claims["sub"] or row.device_id != claims["did"]:
            raise UnknownToken("Access token has been revoked")
        cached = Requester(row.user_id, row.device_id, row.token_id, row.expires_ts)
        self._cache[token] = cached
        self._token_of[token_id] = token
        if len(self._cache) > _CACHE_SIZE:
            _, dropped = self._cache.popitem(last=False)
            self._token_of.pop(dropped.token_id, None)
        if cached.expires_ts <= self.clock.time_ms():
            raise UnknownToken("Access token has expired", soft_logout=True)
        self.check_account(cached.user_id)
        return cached

    def forget(self, token_ids: list[str]) -> None:
        """Drop revoked tokens from the cache (call after the revoking commit)."""
        self.drop(token_ids, [])
        if self.on_revoked is not None:
            self.on_revoked(token_ids, [])

    def forget_device(self, user_id: str, device_id: str) -> None:
        self.drop([], [(user_id, device_id)])
        if self.on_revoked is not None:
            self.on_revoked([], [(user_id, device_id)])

    def clear(self) -> None:
        """Forget every cached token (revocations may have been missed): each is read again."""
        self._cache.clear()
        self._token_of.clear()

    def drop(self, token_ids: list[str], devices: list[tuple[str, str]]) -> None:
        """Drop tokens, by id and by (user, device), from this process's cache."""
        for token_id in token_ids:
            token = self._token_of.pop(token_id, None)
            if token is not None:
                self._cache.pop(token, None)
        if not devices:
            return
        wanted = set(devices)
        for token, req in list(self._cache.items()):
            if (req.user_id, req.device_id) in wanted:
                del self._cache[token]
                self._token_of.pop(req.token_id, None)


def new_device_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))
