"""Pushers: where each user's devices want notifications sent (core/pushers.py)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Txn, in_list, lock_user_txn

_COLUMNS = (
    "pusher_id, user_id, device_id, kind, app_id, pushkey, pushkey_ts, app_display_name,"
    " device_display_name, profile_tag, lang, data"
)


@dataclass(frozen=True, slots=True)
class Pusher:
    pusher_id: str  # stable while the pusher exists, also across updates in place
    user_id: str
    device_id: str  # the device whose access token set it
    kind: str  # "http" or "email"
    app_id: str
    pushkey: str
    pushkey_ts: int  # seconds
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]


def _pusher(row: tuple[Any, ...]) -> Pusher:
    return Pusher(
        row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), row[7], row[8], row[9], row[10],
        json.loads(row[11]),
    )  # fmt: skip


class PusherLimitReached(Exception):
    pass


class PusherStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def for_users(self, user_ids: list[str]) -> list[Pusher]:
        """Every pusher of these users."""
        if not user_ids:
            return []
        in_users, user_args = in_list(self.db.dialect, "user_id", user_ids)
        rows = await self.db.query(
            "pushers_for_users", f"SELECT {_COLUMNS} FROM pushers WHERE {in_users}", *user_args
        )
        return [_pusher(r) for r in rows]

    async def owners(self) -> list[str]:
        """Every user with at least one pusher (read once at start-up)."""
        rows = await self.db.query("pusher_owners", "SELECT DISTINCT user_id FROM pushers")
        return [r[0] for r in rows]

    async def by_ids(self, pusher_ids: list[str]) -> list[Pusher]:
        if not pusher_ids:
            return []
        in_ids, id_args = in_list(self.db.dialect, "pusher_id", pusher_ids)
        rows = await self.db.query(
            "pushers_by_ids", f"SELECT {_COLUMNS} FROM pushers WHERE {in_ids}", *id_args
        )
        return [_pusher(r) for r in rows]

    async def set_pusher(self, new: Pusher, append: bool, max_per_user: int) -> list[str]:
        """Create the pusher, or update the user's one with the same app id and pushkey in place
        (keeping its id). Without `append`, other users' pushers with the same app id and pushkey
        are deleted. Raises PusherLimitReached if the user would have more than `max_per_user`.

        @return: the users whose pushers were deleted.
        """

        def set_txn(txn: Txn) -> list[str]:
            # Read, then insert or update: the same pusher set twice at once inserted it twice
            # (a 500 on PostgreSQL), and the count could pass the limit. The user's row orders them.
            lock_user_txn(txn, new.user_id)
            existing = txn.query_one(
                "SELECT pusher_id FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                (new.user_id, new.app_id, new.pushkey),
            )
            values = (
                new.device_id, new.kind, new.pushkey_ts, new.app_display_name, new.device_display_name,
                new.profile_tag, new.lang, json.dumps(new.data),
            )  # fmt: skip
            if existing is not None:
                txn.execute(
                    "UPDATE pushers SET device_id = ?, kind = ?, pushkey_ts = ?, app_display_name = ?,"
                    " device_display_name = ?, profile_tag = ?, lang = ?, data = ? WHERE pusher_id = ?",
                    (*values, existing[0]),
                )
            else:
                count = txn.query_one("SELECT COUNT(*) FROM pushers WHERE user_id = ?", (new.user_id,))
                if count is not None and int(count[0]) >= max_per_user:
                    raise PusherLimitReached()
                txn.execute(
                    f"INSERT INTO pushers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.pusher_id, new.user_id, new.device_id, new.kind, new.app_id, new.pushkey,
                        new.pushkey_ts, new.app_display_name, new.device_display_name, new.profile_tag,
                        new.lang, json.dumps(new.data),
                    ),
                )  # fmt: skip
            if append:
                return []
            others = txn.query(
                "SELECT user_id FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                (new.app_id, new.pushkey, new.user_id),
            )
            txn.execute(
                "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                (new.app_id, new.pushkey, new.user_id),
            )
            return sorted({r[0] for r in others})

        return await self.db.run_interaction("set_pusher", set_txn)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self.db.execute(
            "delete_pusher",
            "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            user_id,
            app_id,
            pushkey,
        )

    async def delete_for_devices(self, user_id: str, device_ids: list[str]) -> None:
        if not device_ids:
            return
        marks = ", ".join("?" * len(device_ids))
        await self.db.execute(
            "delete_pushers_for_devices",
            f"DELETE FROM pushers WHERE user_id = ? AND device_id IN ({marks})",
            user_id,
            *device_ids,
        )

    async def delete_all_but_device(self, user_id: str, keep_device: str | None) -> None:
        """Delete every pusher of the user but those of `keep_device` (None: every one)."""
        if keep_device is None:
            await self.db.execute("delete_user_pushers", "DELETE FROM pushers WHERE user_id = ?", user_id)
        else:
            await self.db.execute(
                "delete_user_pushers",
                "DELETE FROM pushers WHERE user_id = ? AND device_id <> ?",
                user_id,
                keep_device,
            )


def new_pusher_id() -> str:
    return "p" + secrets.token_urlsafe(12)
