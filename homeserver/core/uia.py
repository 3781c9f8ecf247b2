"""User-interactive authentication (spec: Client-Server API, User-Interactive Authentication API).

An endpoint names the flows it accepts; `InteractiveAuth.authenticate` checks the
`auth` dict of a request against them, remembers completed stages in a session,
and either returns the results of a finished flow or raises the 401 that tells
the client what is left.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.email_validation import EmailValidator
from homeserver.core.passwords import PasswordHasher
from homeserver.core.registration_tokens import RegistrationTokens
from homeserver.errors import InteractiveAuthRequired, MatrixError
from homeserver.storage import Storage

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
EMAIL = "m.login.email.identity"
REGISTRATION_TOKEN = "m.login.registration_token"

# A session older than this is gone: the client starts over.
SESSION_LIFETIME_MS = 30 * 60 * 1000


@dataclass
class AuthResult:
    """What the finished flow proved."""

    completed: list[str]
    user_id: str | None = None
    email: str | None = None
    email_session: str | None = None
    registration_token: str | None = None  # an admin-made token whose use this sign-up holds
    extras: dict[str, Any] = field(default_factory=dict)


class InteractiveAuth:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        hasher: PasswordHasher,
        email: EmailValidator,
        server_name: str,
        registration_tokens: list[str],
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.hasher = hasher
        self.email = email
        self.server_name = server_name
        self.registration_tokens = registration_tokens
        # Set by the server: the tokens admins make (core/registration_tokens.py).
        self.managed_tokens: RegistrationTokens | None = None

    async def authenticate(
        self,
        auth: Any,
        uri: str,
        flows: list[list[str]],
        *,
        expected_user: str | None = None,
        email_purpose: str = "register",
    ) -> AuthResult:
        """Check one stage of `auth`; return when some flow is complete.

        @param expected_user: for a logged-in request, the password stage must prove this user.
        @raise InteractiveAuthRequired: with the flows, the session id and any stage error.
        """
        if auth is not None and not isinstance(auth, dict):
            raise MatrixError("'auth' must be an object", "M_BAD_JSON")
        session_id = auth.get("session") if auth else None
        session = None
        if session_id is not None:
            if not isinstance(session_id, str):
                raise MatrixError("'auth.session' must be a string", "M_BAD_JSON")
            session = await self.storage.auth_sessions.get_ui_auth_session(session_id)
            if session is None or session.created_ts + SESSION_LIFETIME_MS < self.clock.time_ms():
                raise MatrixError("Unknown or expired auth session", "M_UNKNOWN")
            if session.uri != uri:
                raise MatrixError("This auth session belongs to another request", "M_FORBIDDEN")
        if session is None:
            session_id = secrets.token_urlsafe(18)
            await self.storage.auth_sessions.create_ui_auth_session(session_id, uri, self.clock.time_ms())
            completed: list[str] = []
        else:
            completed = list(session.completed)
        assert session_id is not None
        result = AuthResult(
            completed=completed,
            user_id=session.user_id if session else None,
            registration_token=session.registration_token if session else None,
        )

        stage = auth.get("type") if auth else None
        if stage is not None and not isinstance(stage, str):
            raise MatrixError("'auth.type' must be a string", "M_BAD_JSON")
        if stage is not None:
            allowed_stages = {s for flow in flows for s in flow}
            if stage not in allowed_stages:
                self._raise(flows, session_id, completed, "M_UNRECOGNIZED", f"Unknown auth stage {stage!r}")
            assert auth is not None
            try:
                await self._check_stage(stage, auth, result, expected_user, email_purpose, session_id)
            except MatrixError as e:
                self._raise(flows, session_id, completed, e.errcode, e.message)
            completed = await self.storage.auth_sessions.mark_stage_completed(
                session_id, stage, result.user_id
            )
            if result.email_session:
                result.extras["email_session"] = result.email_session
            result.completed = completed
        for flow in flows:
            if all(s in completed for s in flow):
                await self.storage.auth_sessions.delete_ui_auth_session(session_id)
                return result
        self._raise(flows, session_id, completed)
        raise AssertionError("unreachable")

    def _raise(
        self,
        flows: list[list[str]],
        session_id: str,
        completed: list[str],
        errcode: str | None = None,
        error: str | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "flows": [{"stages": flow} for flow in flows],
            "params": {},
            "session": session_id,
        }
        if completed:
            body["completed"] = completed
        if errcode:
            body["errcode"] = errcode
            body["error"] = error
        raise InteractiveAuthRequired(body)

    async def _check_stage(
        self,
        stage: str,
        auth: dict[str, Any],
        result: AuthResult,
        expected_user: str | None,
        email_purpose: str,
        session_id: str,
    ) -> None:
        if stage == DUMMY:
            return
        if stage == REGISTRATION_TOKEN:
            token = auth.get("token")
            if not isinstance(token, str):
                raise MatrixError("Invalid registration token", "M_FORBIDDEN")
            if self._configured_token(token):
                return
            if self.managed_tokens is not None and await self.managed_tokens.hold(token, session_id):
                result.registration_token = token
                return
            raise MatrixError("Invalid registration token", "M_FORBIDDEN")
        if stage == PASSWORD:
            user_id = self._password_user(auth)
            if expected_user is not None and user_id != expected_user:
                raise MatrixError("Wrong user or password", "M_FORBIDDEN")
            password = auth.get("password")
            user = await self.storage.accounts.get_user(user_id)
            ok = isinstance(password, str) and await self.hasher.verify(
                user.password_hash if user and not user.deactivated else None, password
            )
            if not ok:
                raise MatrixError("Wrong user or password", "M_FORBIDDEN")
            result.user_id = user_id
            return
        if stage == EMAIL:
            creds = auth.get("threepid_creds") or auth.get("threepidCreds")
            if (
                not isinstance(creds, dict)
                or not isinstance(creds.get("sid"), str)
                or not isinstance(creds.get("client_secret"), str)
            ):
                raise MatrixError("'threepid_creds' with 'sid' and 'client_secret' is required", "M_BAD_JSON")
            result.email = await self.email.validated_address(
                creds["sid"], creds["client_secret"], email_purpose
            )
            result.email_session = creds["sid"]
            return
        raise MatrixError(f"Unsupported auth stage {stage!r}", "M_UNRECOGNIZED")

    async def registration_token_valid(self, token: str) -> bool:
        """Whether `token` would pass the registration token stage now: one of the configured
        tokens, or an admin-made one with a use left."""
        if self._configured_token(token):
            return True
        return self.managed_tokens is not None and await self.managed_tokens.is_valid(token)

    def _configured_token(self, token: str) -> bool:
        """One of `registration.tokens` (compared in constant time)."""
        return any(hmac.compare_digest(token.encode(), t.encode()) for t in self.registration_tokens)

    async def expire_sessions(self) -> None:
        """Drop auth sessions and email validations past their lifetime (a held registration
        token use goes back to its token)."""
        await self.storage.auth_sessions.delete_expired(self.clock.time_ms(), SESSION_LIFETIME_MS)

    def _password_user(self, auth: dict[str, Any]) -> str:
        identifier = auth.get("identifier")
        user = None
        if isinstance(identifier, dict) and identifier.get("type") == "m.id.user":
            user = identifier.get("user")
        elif "user" in auth:
            user = auth.get("user")
        if not isinstance(user, str) or not user:
            raise MatrixError("A user identifier is required", "M_BAD_JSON")
        return user if user.startswith("@") else f"@{user.lower()}:{self.server_name}"
