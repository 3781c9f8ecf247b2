"""Short-lived auth state: user-interactive auth sessions and email validation sessions.

Kept in the database, not in memory, so that a session started on one worker
process can be finished on another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from homeserver.storage.database import Database, Txn


@dataclass(frozen=True)
class UiAuthSession:
    session_id: str
    created_ts: int
    uri: str
    user_id: str | None
    completed: list[str]
    registration_token: str | None = None  # the token whose use this sign-up holds


@dataclass(frozen=True)
class ValidationSession:
    session_id: str
    client_secret: str
    purpose: str
    medium: str
    address: str
    token_hash: str
    code_hash: str
    attempts: int
    send_attempt: int
    created_ts: int
    expires_ts: int
    validated_ts: int | None


_VALIDATION_COLUMNS = (
    "session_id, client_secret, purpose, medium, address, token_hash, code_hash, attempts,"
    " send_attempt, created_ts, expires_ts, validated_ts"
)


class AuthSessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # User-interactive auth -------------------------------------------------

    async def create_ui_auth_session(self, session_id: str, uri: str, now_ms: int) -> None:
        await self.db.execute(
            "create_ui_auth_session",
            "INSERT INTO ui_auth_sessions (session_id, created_ts, uri, user_id, completed)"
            " VALUES (?, ?, ?, NULL, '[]')",
            session_id,
            now_ms,
            uri,
        )

    async def get_ui_auth_session(self, session_id: str) -> UiAuthSession | None:
        rows = await self.db.query(
            "get_ui_auth_session",
            "SELECT session_id, created_ts, uri, user_id, completed, registration_token"
            " FROM ui_auth_sessions WHERE session_id = ?",
            session_id,
        )
        if not rows:
            return None
        r = rows[0]
        return UiAuthSession(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5])

    async def mark_stage_completed(self, session_id: str, stage: str, user_id: str | None) -> list[str]:
        """Add `stage` to the session's completed stages; return the new list."""

        def complete_txn(txn: Txn) -> list[str]:
            row = txn.query_one(
                "SELECT completed, user_id FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            )
            if row is None:
                return []
            completed: list[str] = json.loads(row[0])
            if stage not in completed:
                completed.append(stage)
            txn.execute(
                "UPDATE ui_auth_sessions SET completed = ?, user_id = ? WHERE session_id = ?",
                (json.dumps(completed), user_id or row[1], session_id),
            )
            return completed

        return await self.db.run_interaction("mark_stage_completed", complete_txn)

    async def delete_ui_auth_session(self, session_id: str) -> None:
        await self.db.execute(
            "delete_ui_auth_session", "DELETE FROM ui_auth_sessions WHERE session_id = ?", session_id
        )

    async def delete_expired(self, now_ms: int, ui_auth_max_age_ms: int) -> None:
        def expire_txn(txn: Txn) -> None:
            # A sign-up abandoned after its registration-token stage gives its held use back.
            held = txn.query(
                "SELECT registration_token FROM ui_auth_sessions"
                " WHERE created_ts < ? AND registration_token IS NOT NULL",
                (now_ms - ui_auth_max_age_ms,),
            )
            for (token,) in held:
                txn.execute(
                    "UPDATE registration_tokens SET pending = pending - 1 WHERE token = ? AND pending > 0",
                    (token,),
                )
            txn.execute("DELETE FROM ui_auth_sessions WHERE created_ts < ?", (now_ms - ui_auth_max_age_ms,))
            txn.execute(
                "DELETE FROM threepid_validations WHERE expires_ts < ?", (now_ms - ui_auth_max_age_ms,)
            )

        await self.db.run_interaction("delete_expired_auth_sessions", expire_txn)

    # Email validation --------------------------------------------------------

    async def find_validation(
        self, client_secret: str, medium: str, address: str, purpose: str, send_attempt: int
    ) -> ValidationSession | None:
        """The live session for this (client_secret, address, purpose, send_attempt) retry, if any."""
        rows = await self.db.query(
            "find_validation",
            f"SELECT {_VALIDATION_COLUMNS} FROM threepid_validations WHERE client_secret = ? AND medium = ?"
            " AND address = ? AND purpose = ? AND send_attempt >= ? ORDER BY created_ts DESC",
            client_secret,
            medium,
            address,
            purpose,
            send_attempt,
        )
        return ValidationSession(*rows[0]) if rows else None

    async def create_validation(self, session: ValidationSession) -> None:
        await self.db.execute(
            "create_validation",
            f"INSERT INTO threepid_validations ({_VALIDATION_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            session.session_id,
            session.client_secret,
            session.purpose,
            session.medium,
            session.address,
            session.token_hash,
            session.code_hash,
            session.attempts,
            session.send_attempt,
            session.created_ts,
            session.expires_ts,
            session.validated_ts,
        )

    async def get_validation(self, session_id: str) -> ValidationSession | None:
        rows = await self.db.query(
            "get_validation",
            f"SELECT {_VALIDATION_COLUMNS} FROM threepid_validations WHERE session_id = ?",
            session_id,
        )
        return ValidationSession(*rows[0]) if rows else None

    async def latest_validation_for(
        self, medium: str, address: str, purpose: str
    ) -> ValidationSession | None:
        rows = await self.db.query(
            "latest_validation_for",
            f"SELECT {_VALIDATION_COLUMNS} FROM threepid_validations WHERE medium = ? AND address = ?"
            " AND purpose = ? ORDER BY created_ts DESC",
            medium,
            address,
            purpose,
        )
        return ValidationSession(*rows[0]) if rows else None

    async def count_attempt(self, session_id: str) -> None:
        await self.db.execute(
            "count_validation_attempt",
            "UPDATE threepid_validations SET attempts = attempts + 1 WHERE session_id = ?",
            session_id,
        )

    async def mark_validated(self, session_id: str, now_ms: int) -> None:
        await self.db.execute(
            "mark_validated",
            "UPDATE threepid_validations SET validated_ts = ? WHERE session_id = ? AND validated_ts IS NULL",
            now_ms,
            session_id,
        )

    async def delete_validation(self, session_id: str) -> None:
        await self.db.execute(
            "delete_validation", "DELETE FROM threepid_validations WHERE session_id = ?", session_id
        )
