"""Remote users' device lists as their servers last told us (see sql/090)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from homeserver.storage.database import Database, Txn

JsonDict = dict[str, Any]


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class RemoteDeviceList:
    user_id: str
    stream_id: int
    devices: dict[str, JsonDict | None] = field(default_factory=dict)  # device id -> keys
    master_key: JsonDict | None = None
    self_signing_key: JsonDict | None = None


def _record_change(txn: Txn, change_stream_id: int, user_id: str) -> None:
    # Our own device-list stream: /sync and /keys/changes read remote users' changes from it too.
    txn.execute(
        "INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)", (change_stream_id, user_id)
    )


class RemoteDeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_ids: list[str]) -> dict[str, RemoteDeviceList]:
        def get_txn(txn: Txn) -> dict[str, RemoteDeviceList]:
            out: dict[str, RemoteDeviceList] = {}
            for user_id in user_ids:
                row = txn.query_one(
                    "SELECT stream_id, master_key, self_signing_key FROM remote_device_lists"
                    " WHERE user_id = ?",
                    (user_id,),
                )
                if row is None:
                    continue
                devices = txn.query(
                    "SELECT device_id, key_json FROM remote_devices WHERE user_id = ?", (user_id,)
                )
                out[user_id] = RemoteDeviceList(
                    user_id,
                    int(row[0]),
                    {str(d): (json.loads(k) if k is not None else None) for d, k in devices},
                    json.loads(row[1]) if row[1] is not None else None,
                    json.loads(row[2]) if row[2] is not None else None,
                )
            return out

        return await self.db.run_interaction("get_remote_device_lists", get_txn)

    async def replace(self, device_list: RemoteDeviceList, change_stream_id: int) -> None:
        """Store a whole list (a resync), replacing what was kept."""

        def replace_txn(txn: Txn) -> None:
            user_id = device_list.user_id
            txn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM remote_device_lists WHERE user_id = ?", (user_id,))
            txn.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, master_key, self_signing_key)"
                " VALUES (?, ?, ?, ?)",
                (
                    user_id,
                    device_list.stream_id,
                    _dumps(device_list.master_key),
                    _dumps(device_list.self_signing_key),
                ),
            )
            txn.executemany(
                "INSERT INTO remote_devices (user_id, device_id, key_json) VALUES (?, ?, ?)",
                [(user_id, d, _dumps(k)) for d, k in device_list.devices.items()],
            )
            _record_change(txn, change_stream_id, user_id)

        await self.db.run_interaction("replace_remote_device_list", replace_txn)

    async def update_device(
        self,
        user_id: str,
        expected_stream_id: int,
        stream_id: int,
        device_id: str,
        keys: JsonDict | None,
        deleted: bool,
        change_stream_id: int,
    ) -> bool:
        """Apply one m.device_list_update to the kept list if it is still at
        `expected_stream_id`; False when it moved meanwhile (or is gone)."""

        def update_txn(txn: Txn) -> bool:
            txn.execute(
                "UPDATE remote_device_lists SET stream_id = ? WHERE user_id = ? AND stream_id = ?",
                (stream_id, user_id, expected_stream_id),
            )
            if txn.rowcount != 1:
                return False
            txn.execute(
                "DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            )
            if not deleted:
                txn.execute(
                    "INSERT INTO remote_devices (user_id, device_id, key_json) VALUES (?, ?, ?)",
                    (user_id, device_id, _dumps(keys)),
                )
            _record_change(txn, change_stream_id, user_id)
            return True

        return await self.db.run_interaction("update_remote_device", update_txn)

    async def set_cross_signing(self, user_id: str, keys: dict[str, JsonDict], change_stream_id: int) -> None:
        """New master / self-signing keys (m.signing_key_update), for a kept list or none."""

        def set_txn(txn: Txn) -> None:
            for key_type, column in (("master", "master_key"), ("self_signing", "self_signing_key")):
                if key_type in keys:
                    txn.execute(
                        f"UPDATE remote_device_lists SET {column} = ? WHERE user_id = ?",
                        (_dumps(keys[key_type]), user_id),
                    )
            _record_change(txn, change_stream_id, user_id)

        await self.db.run_interaction("set_remote_cross_signing", set_txn)

    async def record_change(self, user_id: str, change_stream_id: int) -> None:
        def change_txn(txn: Txn) -> None:
            _record_change(txn, change_stream_id, user_id)

        await self.db.run_interaction("record_remote_device_change", change_txn)

    async def forget(self, user_id: str) -> None:
        """Stop keeping a list (no room shared any more, or a resync failed)."""

        def forget_txn(txn: Txn) -> None:
            txn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM remote_device_lists WHERE user_id = ?", (user_id,))

        await self.db.run_interaction("forget_remote_device_list", forget_txn)
