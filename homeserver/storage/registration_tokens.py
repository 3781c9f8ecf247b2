"""Registration tokens: how many uses each allows, holds and has had."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Txn


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None


class TokenExists(Exception):
    pass


_SELECT = "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens"
# Valid at `now`: not expired, and a use left counting the held ones.
_VALID = (
    "(uses_allowed IS NULL OR pending + completed < uses_allowed)"
    " AND (expiry_time IS NULL OR expiry_time > ?)"
)


def _row(r: tuple[Any, ...]) -> RegistrationToken:
    return RegistrationToken(
        r[0],
        None if r[1] is None else int(r[1]),
        int(r[2]),
        int(r[3]),
        None if r[4] is None else int(r[4]),
    )


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, valid: bool | None, now_ms: int) -> list[RegistrationToken]:
        if valid is None:
            rows = await self.db.query("list_registration_tokens", _SELECT + " ORDER BY token")
        else:
            where = _VALID if valid else f"NOT ({_VALID})"
            rows = await self.db.query(
                "list_registration_tokens", f"{_SELECT} WHERE {where} ORDER BY token", now_ms
            )
        return [_row(r) for r in rows]

    async def get(self, token: str) -> RegistrationToken | None:
        rows = await self.db.query("get_registration_token", _SELECT + " WHERE token = ?", token)
        return _row(rows[0]) if rows else None

    async def create(self, token: str, uses_allowed: int | None, expiry_time: int | None) -> None:
        def create_txn(txn: Txn) -> None:
            if txn.query_one("SELECT 1 FROM registration_tokens WHERE token = ?", (token,)):
                raise TokenExists(token)
            txn.execute(
                "INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time)"
                " VALUES (?, ?, 0, 0, ?)",
                (token, uses_allowed, expiry_time),
            )

        try:
            await self.db.run_interaction("create_registration_token", create_txn)
        except Exception as e:
            if self.db.is_unique_violation(e):
                raise TokenExists(token) from e
            raise

    async def update(self, token: str, changes: dict[str, int | None]) -> bool:
        """Set `uses_allowed` and/or `expiry_time`; False for an unknown token."""
        columns = [c for c in ("uses_allowed", "expiry_time") if c in changes]
        if not columns:
            return await self.get(token) is not None
        assignments = ", ".join(f"{c} = ?" for c in columns)
        count = await self.db.execute(
            "update_registration_token",
            f"UPDATE registration_tokens SET {assignments} WHERE token = ?",
            *[changes[c] for c in columns],
            token,
        )
        return count > 0

    async def delete(self, token: str) -> bool:
        count = await self.db.execute(
            "delete_registration_token", "DELETE FROM registration_tokens WHERE token = ?", token
        )
        return count > 0

    async def is_valid(self, token: str, now_ms: int) -> bool:
        rows = await self.db.query(
            "registration_token_valid",
            f"SELECT 1 FROM registration_tokens WHERE token = ? AND {_VALID}",
            token,
            now_ms,
        )
        return bool(rows)

    async def hold(self, token: str, session_id: str, now_ms: int) -> bool:
        """Take one pending use for the sign-up session, if the token is valid: one statement,
        so two sign-ups racing for the last use cannot both get it."""

        def hold_txn(txn: Txn) -> bool:
            row = txn.query_one(
                "SELECT registration_token FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            )
            if row is not None and row[0] == token:
                return True  # this session holds a use already
            txn.execute(
                f"UPDATE registration_tokens SET pending = pending + 1 WHERE token = ? AND {_VALID}",
                (token, now_ms),
            )
            if txn.rowcount != 1:
                return False
            txn.execute(
                "UPDATE ui_auth_sessions SET registration_token = ? WHERE session_id = ?", (token, session_id)
            )
            return True

        held: bool = await self.db.run_interaction("hold_registration_token", hold_txn)
        return held

    async def complete(self, token: str) -> None:
        """A sign-up that held a use finished: the use counts as completed."""
        await self.db.execute(
            "complete_registration_token",
            "UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1"
            " WHERE token = ? AND pending > 0",
            token,
        )
