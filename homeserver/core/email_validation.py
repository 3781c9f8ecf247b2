"""Proving control of an email address: a mail with a link and a short code.

Used for registration (`m.login.email.identity`), password reset, and verifying
the address of an account made through the simple API. Only SHA-256 hashes of
the link token and the code are stored; the code allows a few attempts only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.mailer import Mailer
from homeserver.errors import MatrixError, ThreepidAuthFailed
from homeserver.storage.auth_sessions import AuthSessionStore, ValidationSession

log = Logger()

MAX_CODE_ATTEMPTS = 5
VALIDATE_PATH = "/_homeserver/email/validate"

_SUBJECTS = {
    "register": "Confirm your email address",
    "verify_account": "Confirm your email address",
    "password_reset": "Reset your password",
}
_INTROS = {
    "register": "Someone (hopefully you) is creating an account with this email address.",
    "verify_account": "Someone (hopefully you) created an account with this email address.",
    "password_reset": "Someone (hopefully you) asked to reset the password of the account with this address.",
}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def normalise_email(address: str) -> str:
    return address.strip().lower()


class EmailValidator:
    def __init__(
        self, store: AuthSessionStore, mailer: Mailer, clock: Clock, base_url: str, lifetime_ms: int
    ) -> None:
        self.store = store
        self.mailer = mailer
        self.clock = clock
        self.base_url = base_url
        self.lifetime_ms = lifetime_ms

    async def request_token(self, purpose: str, email: str, client_secret: str, send_attempt: int) -> str:
        """Start (or, for a retry with the same send_attempt, reuse) a session; mail the link and code."""
        existing = await self.store.find_validation(client_secret, "email", email, purpose, send_attempt)
        if existing is not None and existing.expires_ts > self.clock.time_ms():
            return existing.session_id
        now = self.clock.time_ms()
        token = secrets.token_urlsafe(32)
        code = f"{secrets.randbelow(1_000_000):06d}"
        session = ValidationSession(
            session_id=secrets.token_urlsafe(16),
            client_secret=client_secret,
            purpose=purpose,
            medium="email",
            address=email,
            token_hash=_digest(token),
            code_hash=_digest(code),
            attempts=0,
            send_attempt=send_attempt,
            created_ts=now,
            expires_ts=now + self.lifetime_ms,
            validated_ts=None,
        )
        await self.store.create_validation(session)
        link = (
            self.base_url
            + VALIDATE_PATH
            + "?"
            + urlencode({"sid": session.session_id, "client_secret": client_secret, "token": token})
        )
        minutes = self.lifetime_ms // 60_000
        text = (
            f"{_INTROS[purpose]}\n\n"
            f"To continue, open this link:\n\n{link}\n\n"
            f"or enter this code: {code}\n\n"
            f"The link and the code expire in {minutes} minutes. If this was not you, ignore this mail.\n"
        )
        try:
            await self.mailer.send(email, _SUBJECTS[purpose], text)
        except Exception as e:
            await self.store.delete_validation(session.session_id)
            log.error("sending mail to {to} failed: {error}", to=email, error=repr(e))
            raise MatrixError("Could not send the mail; try again later", "M_UNKNOWN") from None
        return session.session_id

    async def submit_token(self, session_id: str, client_secret: str, token: str) -> ValidationSession:
        """Validate a session by its link token or its code.

        @raise ThreepidAuthFailed: unknown session, wrong secret, expired, or wrong token.
        """
        session = await self.store.get_validation(session_id)
        if session is None or not hmac.compare_digest(session.client_secret, client_secret):
            raise ThreepidAuthFailed("Unknown validation session")
        return await self._check(session, token)

    async def submit_code_for_address(self, purpose: str, email: str, code: str) -> ValidationSession:
        """Validate the newest session of `purpose` for `email` by its code (the simple API's way)."""
        session = await self.store.latest_validation_for("email", email, purpose)
        if session is None:
            raise ThreepidAuthFailed("No pending verification for this address")
        return await self._check(session, code)

    async def _check(self, session: ValidationSession, secret: str) -> ValidationSession:
        if session.expires_ts <= self.clock.time_ms():
            raise ThreepidAuthFailed("The link or code has expired; ask for a new one")
        if session.validated_ts is not None:
            return session
        digest = _digest(secret.strip())
        # The long link token cannot be guessed, so it always works; only the
        # short code is limited, so wrong guesses cannot lock the owner out.
        if not hmac.compare_digest(digest, session.token_hash):
            if session.attempts >= MAX_CODE_ATTEMPTS:
                raise ThreepidAuthFailed("Too many wrong codes; use the link or ask for a new mail")
            if not hmac.compare_digest(digest, session.code_hash):
                await self.store.count_attempt(session.session_id)
                raise ThreepidAuthFailed("Wrong code")
        now = self.clock.time_ms()
        await self.store.mark_validated(session.session_id, now)
        return await self.store.get_validation(session.session_id) or session

    async def validated_address(self, session_id: str, client_secret: str, purpose: str) -> str:
        """The address a finished session proved, for `purpose`.

        @raise ThreepidAuthFailed: the session is unknown, of another purpose, expired or not yet validated.
        """
        session = await self.store.get_validation(session_id)
        if (
            session is None
            or not hmac.compare_digest(session.client_secret, client_secret)
            or session.purpose != purpose
        ):
            raise ThreepidAuthFailed("Unknown validation session")
        if session.validated_ts is None:
            raise ThreepidAuthFailed("Email address not yet validated: follow the link in the mail")
        if session.expires_ts <= self.clock.time_ms():
            raise ThreepidAuthFailed("Validation session expired")
        return session.address

    async def consume(self, session_id: str) -> None:
        """A validated session is good for one registration or reset."""
        await self.store.delete_validation(session_id)
