"""Queries over the core's tables that only the server admin's tools ask (the admin API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Txn, lock_user_txn, marks
from homeserver.storage.reports import Report
from homeserver.storage.retention import purge_events_txn

_EVERY_POSITION = 2**62
_PURGE_BATCH = 500

# Columns a user list may be ordered by, as the admin API names them -> SQL.
USER_ORDER_COLUMNS = {
    "name": "u.user_id",
    "admin": "u.is_admin",
    "deactivated": "u.deactivated",
    "shadow_banned": "u.shadow_banned",
    "locked": "u.locked",
    "displayname": "p.displayname",
    "avatar_url": "p.avatar_url",
    "creation_ts": "u.created_ts",
    "last_seen_ts": "last_seen_ts",
    "is_guest": "u.user_id",  # no guests here: every row ties, the id breaks it
    # Normal accounts (NULL) first ascending on both engines (they order NULLs apart).
    "user_type": "COALESCE(u.user_type, '')",
}

RESTRICTION_FLAGS = ("locked", "suspended", "shadow_banned")


@dataclass(frozen=True, slots=True)
class UserSummary:
    user_id: str
    created_ts: int
    is_admin: bool
    deactivated: bool
    locked: bool
    suspended: bool
    shadow_banned: bool
    displayname: str | None
    avatar_url: str | None
    last_seen_ts: int | None
    erased: bool = False
    user_type: str | None = None


@dataclass(frozen=True, slots=True)
class UserFilter:
    user_id: str | None = None  # substring of the user id
    name: str | None = None  # substring of the user id or the display name
    deactivated: bool = False  # include deactivated accounts
    locked: bool = True  # include locked accounts
    suspended: bool = True  # include suspended accounts
    admins: bool | None = None  # only admins (True), only non-admins (False)
    # Types left out ("" for normal accounts, without a type): Synapse's not_user_type.
    not_user_types: tuple[str, ...] = ()


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Users ----------------------------------------------------------------------------

    _USER_SELECT = (
        "SELECT u.user_id, u.created_ts, u.is_admin, u.deactivated, u.locked, u.suspended,"
        " u.shadow_banned, p.displayname, p.avatar_url,"
        " (SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id) AS last_seen_ts,"
        " EXISTS (SELECT 1 FROM erased_users e WHERE e.user_id = u.user_id) AS erased, u.user_type"
        " FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
    )

    @staticmethod
    def _summary(r: tuple[Any, ...]) -> UserSummary:
        return UserSummary(
            r[0],
            int(r[1]),
            bool(r[2]),
            bool(r[3]),
            bool(r[4]),
            bool(r[5]),
            bool(r[6]),
            r[7],
            r[8],
            None if r[9] is None else int(r[9]),
            bool(r[10]),
            r[11],
        )

    async def list_users(
        self, where: UserFilter, order_by: str, ascending: bool, offset: int, limit: int
    ) -> tuple[list[UserSummary], int]:
        """One page of accounts and how many match in all."""
        clauses: list[str] = []
        args: list[Any] = []
        if where.user_id:
            clauses.append("LOWER(u.user_id) LIKE LOWER(?) ESCAPE '\\'")
            args.append(_like(where.user_id))
        if where.name:
            clauses.append(
                "(LOWER(u.user_id) LIKE LOWER(?) ESCAPE '\\'"
                " OR LOWER(p.displayname) LIKE LOWER(?) ESCAPE '\\')"
            )
            args += [_like(where.name), _like(where.name)]
        if not where.deactivated:
            clauses.append("u.deactivated = ?")
            args.append(False)
        if not where.locked:
            clauses.append("u.locked = ?")
            args.append(False)
        if not where.suspended:
            clauses.append("u.suspended = ?")
            args.append(False)
        if where.admins is not None:
            clauses.append("u.is_admin = ?")
            args.append(where.admins)
        if "" in where.not_user_types:
            clauses.append("u.user_type IS NOT NULL")
        typed = sorted(set(where.not_user_types) - {""})
        if typed:
            clauses.append(f"(u.user_type IS NULL OR u.user_type NOT IN ({marks(len(typed))}))")
            args += typed
        condition = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        column = USER_ORDER_COLUMNS[order_by]
        direction = "ASC" if ascending else "DESC"

        def page_txn(txn: Txn) -> tuple[list[UserSummary], int]:
            total_row = txn.query_one(
                "SELECT COUNT(*) FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id" + condition,
                args,
            )
            rows = txn.query(
                f"{self._USER_SELECT}{condition} ORDER BY {column} {direction}, u.user_id {direction}"
                " LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
            return [self._summary(r) for r in rows], int(total_row[0]) if total_row else 0

        result: tuple[list[UserSummary], int] = await self.db.run_interaction("admin_list_users", page_txn)
        return result

    async def get_user(self, user_id: str) -> UserSummary | None:
        rows = await self.db.query("admin_get_user", self._USER_SELECT + " WHERE u.user_id = ?", user_id)
        return self._summary(rows[0]) if rows else None

    async def set_flag(self, user_id: str, flag: str, value: bool) -> None:
        if flag not in RESTRICTION_FLAGS:
            raise ValueError(flag)
        await self.db.execute(
            "admin_set_flag", f"UPDATE users SET {flag} = ? WHERE user_id = ?", value, user_id
        )

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        await self.db.execute(
            "admin_set_user_type", "UPDATE users SET user_type = ? WHERE user_id = ?", user_type, user_id
        )

    async def reactivate(self, user_id: str) -> None:
        await self.db.execute(
            "admin_reactivate", "UPDATE users SET deactivated = ? WHERE user_id = ?", False, user_id
        )

    async def replace_emails(self, user_id: str, emails: list[str], now_ms: int) -> None:
        """Make `emails` the user's addresses, validated (an admin vouches for them); ones
        kept keep their dates."""

        def replace_txn(txn: Txn) -> None:
            # Read, then insert what is missing: two replacements at once both inserted one
            # address (a 500 on PostgreSQL). The user's row orders them.
            lock_user_txn(txn, user_id)
            current = {
                r[0]
                for r in txn.query(
                    "SELECT address FROM user_threepids WHERE user_id = ? AND medium = 'email'", (user_id,)
                )
            }
            for address in current - set(emails):
                txn.execute(
                    "DELETE FROM user_threepids WHERE medium = 'email' AND address = ? AND user_id = ?",
                    (address, user_id),
                )
            for address in sorted(set(emails) - current):
                txn.execute(
                    "INSERT INTO user_threepids (medium, address, user_id, added_ts, validated_ts)"
                    " VALUES ('email', ?, ?, ?, ?)",
                    (address, user_id, now_ms, now_ms),
                )

        await self.db.run_interaction("admin_replace_emails", replace_txn)

    async def restricted_users(self) -> dict[str, set[str]]:
        """The user ids with each restriction flag set (few: read once at start-up)."""
        rows = await self.db.query(
            "admin_restricted_users",
            "SELECT user_id, locked, suspended, shadow_banned FROM users"
            " WHERE locked = ? OR suspended = ? OR shadow_banned = ?",
            True,
            True,
            True,
        )
        return {flag: {r[0] for r in rows if r[i + 1]} for i, flag in enumerate(RESTRICTION_FLAGS)}

    async def count_users(self) -> int:
        rows = await self.db.query("admin_count_users", "SELECT COUNT(*) FROM users")
        return int(rows[0][0])

    # Rooms ----------------------------------------------------------------------------

    async def rooms(self) -> list[tuple[str, str, str | None, int]]:
        """(room id, version, creator, created_ts) of every room."""
        rows = await self.db.query(
            "admin_rooms", "SELECT room_id, room_version, creator, created_ts FROM rooms ORDER BY room_id"
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def room(self, room_id: str) -> tuple[str, str, str | None, int] | None:
        rows = await self.db.query(
            "admin_room",
            "SELECT room_id, room_version, creator, created_ts FROM rooms WHERE room_id = ?",
            room_id,
        )
        return (rows[0][0], rows[0][1], rows[0][2], int(rows[0][3])) if rows else None

    async def room_sizes(self) -> list[tuple[str, int]]:
        """(room id, bytes of its events' JSON), largest first: an estimate of each room's share
        of the database that reads the same on both engines."""
        rows = await self.db.query(
            "admin_room_sizes",
            "SELECT room_id, SUM(LENGTH(json)) AS size FROM events"
            " GROUP BY room_id ORDER BY size DESC, room_id",
        )
        return [(r[0], int(r[1] or 0)) for r in rows]

    async def blocked_rooms(self) -> dict[str, str]:
        """room id -> the admin who blocked it."""
        rows = await self.db.query("admin_blocked_rooms", "SELECT room_id, blocked_by FROM blocked_rooms")
        return {r[0]: r[1] for r in rows}

    async def set_blocked(self, room_id: str, admin: str, now_ms: int, block: bool) -> None:
        def block_txn(txn: Txn) -> None:
            if not block:
                txn.execute("DELETE FROM blocked_rooms WHERE room_id = ?", (room_id,))
                return
            # An upsert: a DELETE then INSERT let two blocks at once both insert (a 500 on
            # PostgreSQL, whose second DELETE did not see the first's uncommitted row).
            txn.execute(
                "INSERT INTO blocked_rooms (room_id, blocked_by, blocked_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO UPDATE SET blocked_by = excluded.blocked_by,"
                " blocked_ts = excluded.blocked_ts",
                (room_id, admin, now_ms),
            )

        await self.db.run_interaction("admin_block_room", block_txn)

    async def purged_rooms(self) -> set[str]:
        rows = await self.db.query("admin_purged_rooms", "SELECT room_id FROM purged_rooms")
        return {r[0] for r in rows}

    async def purge_room_messages(self, room_id: str, admin: str, now_ms: int) -> int:
        """Delete the room's non-state events (messages, reactions, redactions) with what
        points at them, as retention does (storage/retention.py), and mark the room purged;
        its state events and forward extremities stay, so the room graph and every member's
        last membership remain. Returns how many events went."""

        def purge_txn(txn: Txn) -> int:
            purged = 0
            while ids := purge_events_txn(txn, self.db.dialect, room_id, _EVERY_POSITION, _PURGE_BATCH):
                purged += len(ids)
            txn.execute("DELETE FROM receipts WHERE room_id = ?", (room_id,))
            # An upsert: a DELETE then INSERT let two purges at once both insert (a 500 on
            # PostgreSQL, whose second DELETE did not see the first's uncommitted row).
            txn.execute(
                "INSERT INTO purged_rooms (room_id, purged_by, purged_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO UPDATE SET purged_by = excluded.purged_by,"
                " purged_ts = excluded.purged_ts",
                (room_id, admin, now_ms),
            )
            return purged

        count: int = await self.db.run_interaction("admin_purge_room", purge_txn)
        return count

    # Reports --------------------------------------------------------------------------

    _REPORT_SELECT = (
        "SELECT report_id, kind, reporter, room_id, event_id, target_user_id, reason, score, received_ts"
        " FROM reports"
    )

    @staticmethod
    def _report(r: tuple[Any, ...]) -> Report:
        return Report(
            int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], None if r[7] is None else int(r[7]), int(r[8])
        )

    async def event_reports(
        self, reporter: str | None, room_id: str | None, ascending: bool, offset: int, limit: int
    ) -> tuple[list[Report], int]:
        clauses, args = ["kind = ?"], ["event"]
        if reporter:
            clauses.append("reporter LIKE ? ESCAPE '\\'")
            args.append(_like(reporter))
        if room_id:
            clauses.append("room_id LIKE ? ESCAPE '\\'")
            args.append(_like(room_id))
        condition = " WHERE " + " AND ".join(clauses)
        direction = "ASC" if ascending else "DESC"

        def page_txn(txn: Txn) -> tuple[list[Report], int]:
            total = txn.query_one("SELECT COUNT(*) FROM reports" + condition, args)
            rows = txn.query(
                f"{self._REPORT_SELECT}{condition} ORDER BY received_ts {direction}, report_id {direction}"
                " LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
            return [self._report(r) for r in rows], int(total[0]) if total else 0

        result: tuple[list[Report], int] = await self.db.run_interaction("admin_event_reports", page_txn)
        return result

    async def report(self, report_id: int) -> Report | None:
        rows = await self.db.query("admin_report", self._REPORT_SELECT + " WHERE report_id = ?", report_id)
        return self._report(rows[0]) if rows else None

    async def delete_report(self, report_id: int) -> bool:
        def delete_txn(txn: Txn) -> bool:
            if txn.query_one("SELECT 1 FROM reports WHERE report_id = ?", (report_id,)) is None:
                return False
            txn.execute("DELETE FROM reports WHERE report_id = ?", (report_id,))
            return True

        found: bool = await self.db.run_interaction("admin_delete_report", delete_txn)
        return found
