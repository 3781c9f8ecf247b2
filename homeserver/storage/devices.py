"""Devices and the tokens that belong to them (access and refresh)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.database import Database, Txn, in_chunks, lock_user_txn, marks


@dataclass(frozen=True)
class DeviceRow:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None


@dataclass(frozen=True)
class AccessTokenRow:
    token_id: str
    user_id: str
    device_id: str
    expires_ts: int


@dataclass(frozen=True)
class NewRefreshToken:
    token_hash: str
    expires_ts: int


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def login_device(
        self,
        user_id: str,
        device_id: str,
        display_name: str | None,
        token_id: str,
        token_expires_ts: int,
        refresh: NewRefreshToken | None,
        now_ms: int,
        ip: str | None,
    ) -> None:
        """Create (or reuse) the device and record a new access token, in one transaction.

        Logging in again with an existing device id replaces that device's tokens,
        as the spec asks ("invalidating any access token previously associated").
        """

        def login_txn(txn: Txn) -> None:
            # Two logins naming one device id at once both found no device and inserted it (a
            # 500 on PostgreSQL): the user's row orders them.
            lock_user_txn(txn, user_id)
            exists = txn.query_one(
                "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            )
            if exists:
                _delete_device_tokens_txn(txn, user_id, device_id)
                txn.execute(
                    "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?"
                    " WHERE user_id = ? AND device_id = ?",
                    (now_ms, ip, user_id, device_id),
                )
            else:
                txn.execute(
                    "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts,"
                    " last_seen_ip) VALUES (?, ?, ?, ?, ?, ?)",
                    (user_id, device_id, display_name, now_ms, now_ms, ip),
                )
            _insert_tokens_txn(txn, user_id, device_id, token_id, token_expires_ts, refresh, now_ms)

        await self.db.run_interaction("login_device", login_txn)

    async def get_access_token(self, token_id: str) -> AccessTokenRow | None:
        rows = await self.db.query(
            "get_access_token",
            "SELECT token_id, user_id, device_id, expires_ts FROM access_tokens WHERE token_id = ?",
            token_id,
        )
        return AccessTokenRow(*rows[0]) if rows else None

    async def delete_access_token(self, token_id: str) -> None:
        await self.db.execute("delete_access_token", "DELETE FROM access_tokens WHERE token_id = ?", token_id)

    async def get_refresh_token(self, token_hash: str) -> tuple[str, str, int] | None:
        """(user id, device id, expires_ts) of a live refresh token."""
        rows = await self.db.query(
            "get_refresh_token",
            "SELECT user_id, device_id, expires_ts FROM refresh_tokens WHERE token_hash = ?",
            token_hash,
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def rotate_refresh_token(
        self,
        old_hash: str,
        now_ms: int,
        new_token_id: str,
        new_token_expires_ts: int,
        new_refresh: NewRefreshToken,
    ) -> tuple[str, str] | None:
        """Spend a refresh token: revoke the device's access tokens, issue new ones.

        Returns (user id, device id), or None when the refresh token is unknown,
        already spent or expired. The DELETE ... and its rowcount make a concurrent
        second use of the same token lose.
        """

        def rotate_txn(txn: Txn) -> tuple[str, str] | None:
            row = txn.query_one(
                "SELECT user_id, device_id, expires_ts FROM refresh_tokens WHERE token_hash = ?", (old_hash,)
            )
            if row is None:
                return None
            txn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (old_hash,))
            if txn.rowcount != 1 or row[2] <= now_ms:
                return None
            user_id, device_id = row[0], row[1]
            txn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            _insert_tokens_txn(
                txn, user_id, device_id, new_token_id, new_token_expires_ts, new_refresh, now_ms
            )
            return user_id, device_id

        return await self.db.run_interaction("rotate_refresh_token", rotate_txn)

    async def get_devices(self, user_id: str) -> list[DeviceRow]:
        rows = await self.db.query(
            "get_devices",
            "SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip FROM devices"
            " WHERE user_id = ? ORDER BY device_id",
            user_id,
        )
        return [DeviceRow(*r) for r in rows]

    async def device_ids_of_users(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """user id -> the ids of their devices, for users that have any (500 users a query)."""
        out: dict[str, list[str]] = {}
        for chunk in in_chunks(user_ids):
            rows = await self.db.query(
                "device_ids_of_users",
                f"SELECT user_id, device_id FROM devices WHERE user_id IN ({marks(len(chunk))})"
                " ORDER BY user_id, device_id",
                *chunk,
            )
            for user_id, device_id in rows:
                out.setdefault(str(user_id), []).append(str(device_id))
        return out

    async def get_device(self, user_id: str, device_id: str) -> DeviceRow | None:
        rows = await self.db.query(
            "get_device",
            "SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip FROM devices"
            " WHERE user_id = ? AND device_id = ?",
            user_id,
            device_id,
        )
        return DeviceRow(*rows[0]) if rows else None

    async def set_device_display_name(self, user_id: str, device_id: str, name: str | None) -> None:
        await self.db.execute(
            "set_device_display_name",
            "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
            name,
            user_id,
            device_id,
        )

    async def touch_device(self, user_id: str, device_id: str, now_ms: int, ip: str | None) -> None:
        await self.db.execute(
            "touch_device",
            "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ? WHERE user_id = ? AND device_id = ?",
            now_ms,
            ip,
            user_id,
            device_id,
        )

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> list[str]:
        """Delete the devices and their tokens; return the ids of the revoked access tokens."""

        def delete_txn(txn: Txn) -> list[str]:
            revoked: list[str] = []
            for device_id in device_ids:
                revoked += _delete_device_tokens_txn(txn, user_id, device_id)
                txn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            return revoked

        return await self.db.run_interaction("delete_devices", delete_txn)

    async def revoke_all_tokens(self, user_id: str, except_device: str | None = None) -> list[str]:
        """Revoke every token of the user (but those of `except_device`); return revoked token ids."""

        def revoke_txn(txn: Txn) -> list[str]:
            if except_device is None:
                ids = txn.query("SELECT token_id FROM access_tokens WHERE user_id = ?", (user_id,))
                txn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
                txn.execute("DELETE FROM refresh_tokens WHERE user_id = ?", (user_id,))
            else:
                ids = txn.query(
                    "SELECT token_id FROM access_tokens WHERE user_id = ? AND device_id <> ?",
                    (user_id, except_device),
                )
                txn.execute(
                    "DELETE FROM access_tokens WHERE user_id = ? AND device_id <> ?", (user_id, except_device)
                )
                txn.execute(
                    "DELETE FROM refresh_tokens WHERE user_id = ? AND device_id <> ?",
                    (user_id, except_device),
                )
            return [r[0] for r in ids]

        return await self.db.run_interaction("revoke_all_tokens", revoke_txn)

    async def delete_all_devices(self, user_id: str, except_device: str | None = None) -> list[str]:
        """Delete every device of the user (but `except_device`) with its tokens."""
        devices = [d.device_id for d in await self.get_devices(user_id) if d.device_id != except_device]
        return await self.delete_devices(user_id, devices)


def _insert_tokens_txn(
    txn: Txn,
    user_id: str,
    device_id: str,
    token_id: str,
    expires_ts: int,
    refresh: NewRefreshToken | None,
    now_ms: int,
) -> None:
    txn.execute(
        "INSERT INTO access_tokens (token_id, user_id, device_id, created_ts, expires_ts, refreshable)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (token_id, user_id, device_id, now_ms, expires_ts, refresh is not None),
    )
    if refresh is not None:
        txn.execute(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts, expires_ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (refresh.token_hash, user_id, device_id, now_ms, refresh.expires_ts),
        )


def _delete_device_tokens_txn(txn: Txn, user_id: str, device_id: str) -> list[str]:
    ids = txn.query(
        "SELECT token_id FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    txn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id))
    txn.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id))
    return [r[0] for r in ids]
