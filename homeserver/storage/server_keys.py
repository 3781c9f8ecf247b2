"""Other servers' signing keys, as fetched from them or a notary (sql/080_server_keys.sql)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Txn


@dataclass(frozen=True)
class StoredKey:
    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int
    expired_ts: int | None
    key_json: str  # the server's whole signed answer that listed this key


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def keys_of(self, server_name: str) -> list[StoredKey]:
        rows = await self.db.query(
            "get_server_keys",
            "SELECT key_id, verify_key, valid_until_ts, expired_ts, key_json FROM server_keys"
            " WHERE server_name = ?",
            server_name,
        )
        return [StoredKey(server_name, r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]

    async def store(self, keys: list[StoredKey], fetched_ts: int) -> None:
        """Insert or replace each key (a fresher answer replaces an older one's row)."""

        def txn_fn(txn: Txn) -> None:
            for key in keys:
                txn.execute(
                    "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts,"
                    " expired_ts, fetched_ts, key_json) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (server_name, key_id) DO UPDATE SET verify_key = excluded.verify_key,"
                    " valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts,"
                    " fetched_ts = excluded.fetched_ts, key_json = excluded.key_json",
                    (
                        key.server_name,
                        key.key_id,
                        key.verify_key,
                        key.valid_until_ts,
                        key.expired_ts,
                        fetched_ts,
                        key.key_json,
                    ),
                )

        await self.db.run_interaction("store_server_keys", txn_fn)
