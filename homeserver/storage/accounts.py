"""Users, their email addresses and profiles."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Txn


@dataclass(frozen=True)
class UserRow:
    user_id: str
    password_hash: str | None
    created_ts: int
    is_admin: bool
    deactivated: bool


class UserExists(Exception):
    pass


class ThreepidExists(Exception):
    pass


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        now_ms: int,
        *,
        is_admin: bool = False,
        email: str | None = None,
        email_validated: bool = False,
        displayname: str | None = None,
    ) -> None:
        """Insert the user, its profile and (optionally) its email in one transaction.

        @raise UserExists: the user id is taken.
        @raise ThreepidExists: the email belongs to another account.
        """

        def create_txn(txn: Txn) -> None:
            if txn.query_one("SELECT 1 FROM users WHERE user_id = ?", (user_id,)):
                raise UserExists(user_id)
            if email is not None and txn.query_one(
                "SELECT 1 FROM user_threepids WHERE medium = 'email' AND address = ?", (email,)
            ):
                raise ThreepidExists(email)
            txn.execute(
                "INSERT INTO users (user_id, password_hash, created_ts, is_admin, deactivated)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, password_hash, now_ms, is_admin, False),
            )
            txn.execute(
                "INSERT INTO profiles (user_id, displayname, avatar_url) VALUES (?, ?, NULL)",
                (user_id, displayname),
            )
            if email is not None:
                txn.execute(
                    "INSERT INTO user_threepids (medium, address, user_id, added_ts, validated_ts)"
                    " VALUES ('email', ?, ?, ?, ?)",
                    (email, user_id, now_ms, now_ms if email_validated else None),
                )

        try:
            await self.db.run_interaction("create_user", create_txn)
        except Exception as e:
            # Two concurrent registrations of one name: the loser hits the key.
            if self.db.is_unique_violation(e):
                raise UserExists(user_id) from e
            raise

    async def get_user(self, user_id: str) -> UserRow | None:
        rows = await self.db.query(
            "get_user",
            "SELECT user_id, password_hash, created_ts, is_admin, deactivated FROM users WHERE user_id = ?",
            user_id,
        )
        if not rows:
            return None
        r = rows[0]
        return UserRow(r[0], r[1], r[2], bool(r[3]), bool(r[4]))

    async def user_exists(self, user_id: str) -> bool:
        return bool(await self.db.query("user_exists", "SELECT 1 FROM users WHERE user_id = ?", user_id))

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.db.execute(
            "set_password_hash",
            "UPDATE users SET password_hash = ? WHERE user_id = ?",
            password_hash,
            user_id,
        )

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self.db.execute(
            "set_admin", "UPDATE users SET is_admin = ? WHERE user_id = ?", is_admin, user_id
        )

    async def deactivate(self, user_id: str) -> None:
        """Mark the user deactivated, drop its password, emails and profile fields."""

        def deactivate_txn(txn: Txn) -> None:
            txn.execute(
                "UPDATE users SET deactivated = ?, password_hash = NULL WHERE user_id = ?", (True, user_id)
            )
            txn.execute("DELETE FROM user_threepids WHERE user_id = ?", (user_id,))
            txn.execute(
                "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?", (user_id,)
            )

        await self.db.run_interaction("deactivate_user", deactivate_txn)

    # Email addresses ---------------------------------------------------------

    async def user_for_email(self, email: str) -> tuple[str, bool] | None:
        """(user id, validated) of the account that owns `email`, if any."""
        rows = await self.db.query(
            "user_for_email",
            "SELECT user_id, validated_ts FROM user_threepids WHERE medium = 'email' AND address = ?",
            email,
        )
        return (rows[0][0], rows[0][1] is not None) if rows else None

    async def has_unvalidated_email(self, user_id: str) -> bool:
        rows = await self.db.query(
            "has_unvalidated_email",
            "SELECT 1 FROM user_threepids WHERE user_id = ? AND validated_ts IS NULL",
            user_id,
        )
        return bool(rows)

    async def mark_email_validated(self, email: str, now_ms: int) -> None:
        await self.db.execute(
            "mark_email_validated",
            "UPDATE user_threepids SET validated_ts = ? WHERE medium = 'email' AND address = ?"
            " AND validated_ts IS NULL",
            now_ms,
            email,
        )

    async def get_threepids(self, user_id: str) -> list[tuple[str, str, int, int | None]]:
        rows = await self.db.query(
            "get_threepids",
            "SELECT medium, address, added_ts, validated_ts FROM user_threepids WHERE user_id = ?"
            " ORDER BY added_ts",
            user_id,
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # Profiles ----------------------------------------------------------------

    async def get_profile(self, user_id: str) -> tuple[str | None, str | None] | None:
        rows = await self.db.query(
            "get_profile", "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", user_id
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        column = {"displayname": "displayname", "avatar_url": "avatar_url"}[field]
        await self.db.execute(
            f"set_{column}", f"UPDATE profiles SET {column} = ? WHERE user_id = ?", value, user_id
        )
