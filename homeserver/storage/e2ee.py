"""End-to-end encryption rows: device keys, one-time and fallback keys, cross-signing
keys, device-list changes, to-device messages and room-key backups."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from homeserver.storage.database import Database, Txn, in_chunks, in_list, lock_user_txn, marks

JsonDict = dict[str, Any]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class E2eeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def max_stream_ids(self) -> tuple[int, int]:
        """(device list stream, to-device stream) positions."""

        def max_txn(txn: Txn) -> tuple[int, int]:
            a = txn.query_one("SELECT MAX(stream_id) FROM device_list_changes")
            b = txn.query_one("SELECT MAX(stream_id) FROM to_device_messages")
            return int((a or [0])[0] or 0), int((b or [0])[0] or 0)

        return await self.db.run_interaction("e2ee_max_stream_ids", max_txn)

    # Device keys ---------------------------------------------------------------------

    async def get_device_keys(self, user_id: str, device_id: str) -> JsonDict | None:
        rows = await self.db.query(
            "get_device_keys",
            "SELECT key_json FROM device_keys WHERE user_id = ? AND device_id = ?",
            user_id,
            device_id,
        )
        return json.loads(rows[0][0]) if rows else None

    async def query_device_keys(self, queries: dict[str, list[str]]) -> dict[str, dict[str, JsonDict]]:
        """user -> device -> keys, with each device's display name under `unsigned`."""

        def query_txn(txn: Txn) -> dict[str, dict[str, JsonDict]]:
            out: dict[str, dict[str, JsonDict]] = {user_id: {} for user_id in queries}
            wanted = {user_id: set(devices) for user_id, devices in queries.items()}
            for chunk in in_chunks(list(queries)):
                rows = txn.query(
                    "SELECT k.user_id, k.device_id, k.key_json, d.display_name FROM device_keys k"
                    " JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id"
                    f" WHERE k.user_id IN ({marks(len(chunk))})",
                    chunk,
                )
                for user_id, device_id, key_json, display_name in rows:
                    devices = wanted[user_id]
                    if devices and device_id not in devices:
                        continue
                    keys = json.loads(key_json)
                    if display_name is not None:
                        keys["unsigned"] = {"device_display_name": display_name}
                    out[user_id][device_id] = keys
            return out

        return await self.db.run_interaction("query_device_keys", query_txn)

    async def delete_device(self, user_id: str, device_ids: Sequence[str], change_stream_id: int) -> None:
        """Forget every key and queued message of the devices; record a device-list change."""

        def delete_txn(txn: Txn) -> None:
            for device_id in device_ids:
                # to_device_txns too: a device later created with the same id (clients may
                # choose it) must not have its first messages taken for replays.
                for table in (
                    "device_keys",
                    "one_time_keys",
                    "fallback_keys",
                    "to_device_messages",
                    "to_device_txns",
                ):
                    txn.execute(
                        f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", (user_id, device_id)
                    )
            txn.execute(
                "INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)",
                (change_stream_id, user_id),
            )

        await self.db.run_interaction("delete_device_keys", delete_txn)

    async def delete_user_keys(self, user_id: str, change_stream_id: int) -> list[str]:
        """A deactivated account's end-to-end keys, all at once: every device's keys, one-time
        and fallback keys (devices already deleted included), the cross-signing keys with the
        signatures on them, and the key backup (versions marked deleted, the keys in them
        gone). Records a device-list change; returns the ids of the devices that had
        one-time or fallback keys."""

        def delete_txn(txn: Txn) -> list[str]:
            rows = txn.query(
                "SELECT device_id FROM one_time_keys WHERE user_id = ?"
                " UNION SELECT device_id FROM fallback_keys WHERE user_id = ?",
                (user_id, user_id),
            )
            for table in ("device_keys", "one_time_keys", "fallback_keys", "cross_signing_keys"):
                txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            # As DELETE /room_keys/version does: the numbers stay taken, so a version a client
            # remembers never names a new backup should the account be reactivated.
            txn.execute("DELETE FROM room_key_backups WHERE user_id = ?", (user_id,))
            txn.execute(
                "UPDATE room_key_backup_versions SET deleted = ? WHERE user_id = ? AND deleted = ?",
                (True, user_id, False),
            )
            txn.execute(
                "INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)",
                (change_stream_id, user_id),
            )
            return sorted(str(r[0]) for r in rows)

        return await self.db.run_interaction("delete_user_keys", delete_txn)

    # One-time and fallback keys ---------------------------------------------------------

    async def upload_keys(
        self,
        user_id: str,
        device_id: str,
        device_keys: JsonDict | None,
        change_stream_id: int | None,
        one_time_keys: list[tuple[str, str, JsonDict | str]],
        fallback_keys: list[tuple[str, str, JsonDict | str]],
    ) -> None:
        """One /keys/upload, all or nothing: the device keys (with a device-list change at
        `change_stream_id`), then (algorithm, key id, key) one-time and fallback key rows; a
        key is a signed object or a bare string.

        @raise ValueError: a one-time key id was uploaded before with different content
            (nothing is stored).
        """

        def upload_txn(txn: Txn) -> None:
            if device_keys is not None and change_stream_id is not None:
                txn.execute(
                    "INSERT INTO device_keys (user_id, device_id, key_json) VALUES (?, ?, ?)"
                    " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                    (user_id, device_id, _dumps(device_keys)),
                )
                txn.execute(
                    "INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)",
                    (change_stream_id, user_id),
                )
            self._add_one_time_keys_txn(txn, user_id, device_id, one_time_keys)
            self._set_fallback_keys_txn(txn, user_id, device_id, fallback_keys)

        await self.db.run_interaction("upload_keys", upload_txn)

    @staticmethod
    def _add_one_time_keys_txn(
        txn: Txn, user_id: str, device_id: str, keys: list[tuple[str, str, JsonDict | str]]
    ) -> None:
        for algorithm, key_id, key in keys:
            # Insert first, compare on conflict: a read first let two uploads of one key at
            # once (a client retrying) both insert it, the second failing on the primary key.
            txn.execute(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
                (user_id, device_id, algorithm, key_id, _dumps(key)),
            )
            if txn.rowcount == 1:
                continue
            row = txn.query_one(
                "SELECT key_json FROM one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                " AND key_id = ?",
                (user_id, device_id, algorithm, key_id),
            )
            if row is not None and json.loads(row[0]) != key:
                raise ValueError(f"one-time key {algorithm}:{key_id} already exists with other content")

    @staticmethod
    def _set_fallback_keys_txn(
        txn: Txn, user_id: str, device_id: str, keys: list[tuple[str, str, JsonDict | str]]
    ) -> None:
        for algorithm, key_id, key in keys:
            # The same key again (a client retrying its upload) keeps its `used` mark:
            # reset, /sync would say the device has an unused fallback key and the
            # client would not replace one that senders already have.
            txn.execute(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                " key_id = excluded.key_id, key_json = excluded.key_json, used = excluded.used"
                " WHERE fallback_keys.key_id <> excluded.key_id"
                " OR fallback_keys.key_json <> excluded.key_json",
                (user_id, device_id, algorithm, key_id, _dumps(key), False),
            )

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self.db.query(
            "count_one_time_keys",
            "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ? AND device_id = ?"
            " GROUP BY algorithm",
            user_id,
            device_id,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self.db.query(
            "unused_fallback_key_types",
            "SELECT algorithm FROM fallback_keys WHERE user_id = ? AND device_id = ? AND used = ?",
            user_id,
            device_id,
            False,
        )
        return sorted(r[0] for r in rows)

    async def claim_keys(
        self, claims: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str], tuple[str, JsonDict | str]]:
        """Claim one key per (user, device, algorithm): a one-time key, else the fallback key.

        Each one-time key is handed out once: the DELETE's row count decides
        between concurrent claims, and a loser tries the next key.
        """

        def claim_txn(txn: Txn) -> dict[tuple[str, str], tuple[str, JsonDict | str]]:
            out: dict[tuple[str, str], tuple[str, JsonDict | str]] = {}
            # Which (user, device, algorithm) have a key at all, a few queries for the whole
            # claim: a claim may name thousands of devices (a large room's first message), and
            # asking for each one in turn held a connection for seconds.
            stocked: set[tuple[str, str, str]] = set()
            for chunk in in_chunks(sorted({user_id for user_id, _, _ in claims})):
                for table, distinct in (("one_time_keys", "DISTINCT "), ("fallback_keys", "")):
                    rows = txn.query(
                        f"SELECT {distinct}user_id, device_id, algorithm FROM {table}"
                        f" WHERE user_id IN ({marks(len(chunk))})",
                        chunk,
                    )
                    stocked.update((str(u), str(d), str(a)) for u, d, a in rows)
            for user_id, device_id, algorithm in claims:
                if (user_id, device_id, algorithm) not in stocked:
                    continue
                for _ in range(10):
                    row = txn.query_one(
                        "SELECT key_id, key_json FROM one_time_keys WHERE user_id = ? AND device_id = ?"
                        " AND algorithm = ? ORDER BY key_id LIMIT 1",
                        (user_id, device_id, algorithm),
                    )
                    if row is None:
                        break
                    txn.execute(
                        "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                        " AND key_id = ?",
                        (user_id, device_id, algorithm, row[0]),
                    )
                    if txn.rowcount == 1:
                        out[(user_id, device_id)] = (f"{algorithm}:{row[0]}", json.loads(row[1]))
                        break
                if (user_id, device_id) in out:
                    continue
                row = txn.query_one(
                    "SELECT key_id, key_json FROM fallback_keys"
                    " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                    (user_id, device_id, algorithm),
                )
                if row is not None:
                    txn.execute(
                        "UPDATE fallback_keys SET used = ?"
                        " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                        (True, user_id, device_id, algorithm),
                    )
                    out[(user_id, device_id)] = (f"{algorithm}:{row[0]}", json.loads(row[1]))
            return out

        return await self.db.run_interaction("claim_keys", claim_txn)

    # Cross-signing --------------------------------------------------------------------------

    async def get_cross_signing_keys(self, user_ids: Sequence[str]) -> dict[str, dict[str, JsonDict]]:
        """user -> key type -> key."""
        if not user_ids:
            return {}
        in_users, user_args = in_list(self.db.dialect, "user_id", user_ids)
        rows = await self.db.query(
            "get_cross_signing_keys",
            f"SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE {in_users}",
            *user_args,
        )
        out: dict[str, dict[str, JsonDict]] = {}
        for user_id, key_type, key_json in rows:
            out.setdefault(user_id, {})[key_type] = json.loads(key_json)
        return out

    async def set_cross_signing_keys(
        self, user_id: str, keys: dict[str, JsonDict], change_stream_id: int
    ) -> None:
        def set_txn(txn: Txn) -> None:
            for key_type, key in keys.items():
                txn.execute(
                    "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES (?, ?, ?)"
                    " ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                    (user_id, key_type, _dumps(key)),
                )
            txn.execute(
                "INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)",
                (change_stream_id, user_id),
            )

        await self.db.run_interaction("set_cross_signing_keys", set_txn)

    async def add_signatures(
        self, updates: list[tuple[str, str, str, str, str]], change_stream_ids: dict[str, int]
    ) -> None:
        """Merge signatures (target user, target key or device id, signer user, signer key id, signature)."""

        def add_txn(txn: Txn) -> None:
            # Read-modify-write of the key's JSON: on PostgreSQL lock the row (FOR UPDATE), or
            # two signers of one key at once each write back the JSON without the other's
            # signature; a fixed order of updates keeps two such transactions from deadlocking.
            lock = " FOR UPDATE" if txn.engine.name == "postgres" else ""
            for target_user, target, signer, signer_key, signature in sorted(updates):
                row = txn.query_one(
                    "SELECT key_json FROM device_keys WHERE user_id = ? AND device_id = ?" + lock,
                    (target_user, target),
                )
                table, where = "device_keys", "device_id = ?"
                key_type = None
                if row is None:
                    for candidate in ("master", "self_signing", "user_signing"):
                        found = txn.query_one(
                            "SELECT key_json FROM cross_signing_keys WHERE user_id = ? AND key_type = ?"
                            + lock,
                            (target_user, candidate),
                        )
                        if found is not None and f"ed25519:{target}" in json.loads(found[0]).get("keys", {}):
                            row, key_type = found, candidate
                            break
                    table, where = "cross_signing_keys", "key_type = ?"
                if row is None:
                    continue
                obj = json.loads(row[0])
                obj.setdefault("signatures", {}).setdefault(signer, {})[signer_key] = signature
                txn.execute(
                    f"UPDATE {table} SET key_json = ? WHERE user_id = ? AND {where}",
                    (_dumps(obj), target_user, key_type if key_type else target),
                )
            for user_id, stream_id in change_stream_ids.items():
                txn.execute(
                    "INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)", (stream_id, user_id)
                )

        await self.db.run_interaction("add_signatures", add_txn)

    # Device lists ---------------------------------------------------------------------------

    async def users_changed_between(self, after: int, upto: int) -> set[str]:
        if after >= upto:
            return set()
        rows = await self.db.query(
            "users_changed_between",
            "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_id > ? AND stream_id <= ?",
            after,
            upto,
        )
        return {r[0] for r in rows}

    async def latest_change(self, user_id: str) -> int:
        """The device-list position of the user's newest change (0: none): the `stream_id`
        other servers see in /user/devices and in our m.device_list_update EDUs."""
        rows = await self.db.query(
            "latest_device_list_change",
            "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = ?",
            user_id,
        )
        return int(rows[0][0] or 0) if rows else 0

    async def change_before(self, user_id: str, stream_id: int) -> int | None:
        """The position of the user's device-list change before `stream_id`, if any: the
        `prev_id` of our m.device_list_update EDU for the change at `stream_id`."""
        rows = await self.db.query(
            "device_list_change_before",
            "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = ? AND stream_id < ?",
            user_id,
            stream_id,
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    # To-device ---------------------------------------------------------------------------------

    async def add_to_device(
        self,
        sender: str,
        sender_device: str,
        txn_id: str,
        rows: list[tuple[int, str, str, JsonDict]],
        now_ms: int,
        max_queued_bytes: int,
    ) -> tuple[bool, int]:
        """Queue messages (stream id, user, device, message): (False if this txn was already
        delivered, how many were dropped because their device's queue held `max_queued_bytes`
        of messages already)."""

        def add_txn(txn: Txn) -> tuple[bool, int]:
            # ON CONFLICT: concurrent replays of one txn (a client retrying while the first
            # request is still in flight) must not fail on the primary key; one of them wins.
            txn.execute(
                "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
                (sender, sender_device, txn_id, now_ms),
            )
            if txn.rowcount != 1:
                return False, 0
            # Only for devices that exist: a message kept for an unknown device id would
            # reach whoever later logs in with that id (clients may choose their device ids).
            # Each device with what its queue holds already: a device that never syncs (a lost
            # phone, never logged out) keeps what it is sent, so past its share a message is
            # not queued for it, and no sender can fill the disk.
            users = sorted({u for _, u, _, _ in rows})
            queued: dict[tuple[str, str], int] = {}
            for chunk in in_chunks(users):
                found = txn.query(
                    "SELECT d.user_id, d.device_id, COALESCE(SUM(LENGTH(m.message_json)), 0)"
                    " FROM devices d LEFT JOIN to_device_messages m"
                    " ON m.user_id = d.user_id AND m.device_id = d.device_id"
                    f" WHERE d.user_id IN ({marks(len(chunk))}) GROUP BY d.user_id, d.device_id",
                    chunk,
                )
                queued.update(((str(u), str(d)), int(n)) for u, d, n in found)
            kept: list[tuple[int, str, str, str]] = []
            dropped = 0
            for stream_id, u, d, m in rows:
                if (u, d) not in queued:
                    continue
                text = _dumps(m)
                size = queued[(u, d)] + len(text)
                if size > max_queued_bytes:
                    dropped += 1
                    continue
                queued[(u, d)] = size
                kept.append((stream_id, u, d, text))
            txn.insert_many("to_device_messages", ("stream_id", "user_id", "device_id", "message_json"), kept)
            return True, dropped

        return await self.db.run_interaction("add_to_device", add_txn)

    async def to_device_between(self, after: int, upto: int) -> list[tuple[str, str, int]]:
        """(user, device, newest position) of the devices sent messages in (after, upto]."""
        rows = await self.db.query(
            "to_device_between",
            "SELECT user_id, device_id, MAX(stream_id) FROM to_device_messages"
            " WHERE stream_id > ? AND stream_id <= ? GROUP BY user_id, device_id",
            after,
            upto,
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def to_device_for(
        self, user_id: str, device_id: str, after: int, upto: int, limit: int
    ) -> list[tuple[int, JsonDict]]:
        rows = await self.db.query(
            "to_device_for",
            "SELECT stream_id, message_json FROM to_device_messages WHERE user_id = ? AND device_id = ?"
            " AND stream_id > ? AND stream_id <= ? ORDER BY stream_id LIMIT ?",
            user_id,
            device_id,
            after,
            upto,
            limit,
        )
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    async def delete_to_device_upto(self, user_id: str, device_id: str, upto: int) -> None:
        """The device's sync with `since` at `upto` proved it has these: delete them."""
        await self.db.execute(
            "delete_to_device_upto",
            "DELETE FROM to_device_messages WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
            user_id,
            device_id,
            upto,
        )

    # Room-key backup ----------------------------------------------------------------------------

    async def create_backup_version(self, user_id: str, algorithm: str, auth_data: JsonDict) -> int:
        def create_txn(txn: Txn) -> int:
            # Two creations at once would read the same MAX(version), and the second INSERT
            # fail on the primary key (a 500 on PostgreSQL): the user's row orders them.
            lock_user_txn(txn, user_id)
            row = txn.query_one(
                "SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ?", (user_id,)
            )
            version = int(row[0]) + 1 if row and row[0] is not None else 1
            txn.execute(
                "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data, etag, deleted)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, version, algorithm, _dumps(auth_data), 0, False),
            )
            return version

        return await self.db.run_interaction("create_backup_version", create_txn)

    async def get_backup_version(self, user_id: str, version: int | None) -> JsonDict | None:
        """The named (or the newest) live backup version, with its key count and etag."""

        def get_txn(txn: Txn) -> JsonDict | None:
            if version is None:
                row = txn.query_one(
                    "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
                    " WHERE user_id = ? AND deleted = ? ORDER BY version DESC LIMIT 1",
                    (user_id, False),
                )
            else:
                row = txn.query_one(
                    "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
                    " WHERE user_id = ? AND version = ? AND deleted = ?",
                    (user_id, version, False),
                )
            if row is None:
                return None
            count = txn.query_one(
                "SELECT COUNT(*) FROM room_key_backups WHERE user_id = ? AND version = ?", (user_id, row[0])
            )
            return {
                "version": str(row[0]),
                "algorithm": row[1],
                "auth_data": json.loads(row[2]),
                "etag": str(row[3]),
                "count": int(count[0]) if count else 0,
            }

        return await self.db.run_interaction("get_backup_version", get_txn)

    async def update_backup_version(self, user_id: str, version: int, auth_data: JsonDict) -> None:
        await self.db.execute(
            "update_backup_version",
            "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
            _dumps(auth_data),
            user_id,
            version,
        )

    async def delete_backup_version(self, user_id: str, version: int) -> bool:
        def delete_txn(txn: Txn) -> bool:
            txn.execute(
                "UPDATE room_key_backup_versions SET deleted = ?"
                " WHERE user_id = ? AND version = ? AND deleted = ?",
                (True, user_id, version, False),
            )
            if txn.rowcount == 0:
                return False
            txn.execute("DELETE FROM room_key_backups WHERE user_id = ? AND version = ?", (user_id, version))
            return True

        return await self.db.run_interaction("delete_backup_version", delete_txn)

    async def put_room_keys(
        self, user_id: str, version: int, sessions: list[tuple[str, str, JsonDict]]
    ) -> bool:
        """Store (room, session, key data); an existing key is replaced only by a better one (spec rules).
        False, storing nothing, if the version is deleted (by now: a delete may come between the
        caller's check and this transaction)."""

        def put_txn(txn: Txn) -> bool:
            # Takes the version's row lock on PostgreSQL: a delete running now waits for this
            # write and then deletes these keys too, or is seen here as done.
            txn.execute(
                "UPDATE room_key_backup_versions SET etag = etag"
                " WHERE user_id = ? AND version = ? AND deleted = ?",
                (user_id, version, False),
            )
            if txn.rowcount == 0:
                return False
            changed = False
            for room_id, session_id, data in sessions:
                row = txn.query_one(
                    "SELECT first_message_index, forwarded_count, is_verified FROM room_key_backups"
                    " WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
                    (user_id, version, room_id, session_id),
                )
                new = (
                    bool(data.get("is_verified")),
                    int(data.get("first_message_index", 0)),
                    int(data.get("forwarded_count", 0)),
                )
                if row is not None:
                    old = (bool(row[2]), int(row[0]), int(row[1]))
                    # Spec: keep the old key unless the new one is verified where the old
                    # was not, or starts earlier, or was forwarded fewer times.
                    better = (new[0] and not old[0]) or (
                        new[0] == old[0] and (new[1], new[2]) < (old[1], old[2])
                    )
                    if not better:
                        continue
                    txn.execute(
                        "DELETE FROM room_key_backups WHERE user_id = ? AND version = ? AND room_id = ?"
                        " AND session_id = ?",
                        (user_id, version, room_id, session_id),
                    )
                txn.execute(
                    "INSERT INTO room_key_backups"
                    " (user_id, version, room_id, session_id, first_message_index,"
                    " forwarded_count, is_verified, session_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        user_id,
                        version,
                        room_id,
                        session_id,
                        new[1],
                        new[2],
                        new[0],
                        _dumps(data.get("session_data")),
                    ),
                )
                changed = True
            if changed:
                txn.execute(
                    "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
                    (user_id, version),
                )
            return True

        return await self.db.run_interaction("put_room_keys", put_txn)

    async def get_room_keys(
        self, user_id: str, version: int, room_id: str | None, session_id: str | None
    ) -> dict[str, dict[str, JsonDict]]:
        sql = (
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
            " FROM room_key_backups WHERE user_id = ? AND version = ?"
        )
        args: list[Any] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            args.append(room_id)
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        rows = await self.db.query("get_room_keys", sql, *args)
        out: dict[str, dict[str, JsonDict]] = {}
        for r in rows:
            out.setdefault(r[0], {})[r[1]] = {
                "first_message_index": int(r[2]),
                "forwarded_count": int(r[3]),
                "is_verified": bool(r[4]),
                "session_data": json.loads(r[5]),
            }
        return out

    async def delete_room_keys(
        self, user_id: str, version: int, room_id: str | None, session_id: str | None
    ) -> None:
        def delete_txn(txn: Txn) -> None:
            sql = "DELETE FROM room_key_backups WHERE user_id = ? AND version = ?"
            args: list[Any] = [user_id, version]
            if room_id is not None:
                sql += " AND room_id = ?"
                args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
            txn.execute(sql, args)
            if txn.rowcount:
                txn.execute(
                    "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
                    (user_id, version),
                )

        await self.db.run_interaction("delete_room_keys", delete_txn)
