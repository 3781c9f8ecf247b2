"""OpenID tokens, stored by hash (sql/020_openid_tokens.sql)."""

from __future__ import annotations

from homeserver.storage.database import Database


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_token(self, token_hash: str, user_id: str, expires_ts: int) -> None:
        await self.db.execute(
            "add_openid_token",
            "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
            token_hash,
            user_id,
            expires_ts,
        )

    async def user_for_token(self, token_hash: str, now_ms: int) -> str | None:
        """The user a token was issued to, if it has not expired."""
        rows = await self.db.query(
            "get_openid_token",
            "SELECT user_id FROM openid_tokens WHERE token_hash = ? AND expires_ts > ?",
            token_hash,
            now_ms,
        )
        return str(rows[0][0]) if rows else None

    async def delete_expired(self, now_ms: int) -> None:
        await self.db.execute(
            "delete_expired_openid_tokens", "DELETE FROM openid_tokens WHERE expires_ts <= ?", now_ms
        )
