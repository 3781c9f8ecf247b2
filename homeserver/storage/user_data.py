"""Per-user data that sync streams: account data, filters, receipts, presence, delivery positions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from homeserver.storage.database import Database, Txn, in_chunks, in_list, lock_user_txn, marks


class UserDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def max_stream_ids(self) -> dict[str, int]:
        def max_txn(txn: Txn) -> dict[str, int]:
            out = {}
            for name, table in (
                ("account_data", "account_data"),
                ("receipts", "receipts"),
                ("presence", "presence"),
            ):
                row = txn.query_one(f"SELECT MAX(stream_id) FROM {table}")
                out[name] = int(row[0] or 0) if row else 0
            return out

        return await self.db.run_interaction("max_stream_ids", max_txn)

    # Account data -----------------------------------------------------------------

    async def put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: dict[str, Any], stream_id: int
    ) -> None:
        await self.db.execute(
            "put_account_data",
            "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
            " stream_id = excluded.stream_id",
            user_id,
            room_id,
            data_type,
            json.dumps(content),
            stream_id,
        )

    async def account_data_size(self, user_id: str, room_id: str, data_type: str) -> tuple[int, int]:
        """What the user's account data holds (content, type and room id of each entry, as
        the triggers of sql/101_account_data_usage count it), and of that the entry
        (room_id, data_type)'s: two rows read, however much the user has."""
        # octet_length: PostgreSQL reads a stored value's size without fetching it.
        length = "octet_length" if self.db.dialect == "postgres" else "LENGTH"
        rows = await self.db.query(
            "account_data_size",
            "SELECT (SELECT bytes FROM account_data_usage WHERE user_id = ?),"
            f" (SELECT {length}(content) + {length}(type) + {length}(room_id) FROM account_data"
            "  WHERE user_id = ? AND room_id = ? AND type = ?)",
            user_id,
            user_id,
            room_id,
            data_type,
        )
        used, replaced = rows[0] if rows else (None, None)
        return int(used or 0), int(replaced or 0)

    async def get_account_data(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        rows = await self.db.query(
            "get_account_data",
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
            user_id,
            room_id,
            data_type,
        )
        return json.loads(rows[0][0]) if rows else None

    async def global_account_data_many(
        self, user_ids: Sequence[str], data_type: str
    ) -> dict[str, dict[str, Any]]:
        """user id -> content of the global account data of `data_type` of each of these users
        that has it (one query: a batch of unread-count loads reads its users' push rules so)."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in in_chunks(user_ids):
            rows = await self.db.query(
                "global_account_data_many",
                "SELECT user_id, content FROM account_data WHERE room_id = '' AND type = ?"
                f" AND user_id IN ({marks(len(chunk))})",
                data_type,
                *chunk,
            )
            out.update((r[0], json.loads(r[1])) for r in rows)
        return out

    async def room_account_data_of_type(self, user_id: str, data_type: str) -> dict[str, dict[str, Any]]:
        """room id -> content of the user's room account data of `data_type`."""
        rows = await self.db.query(
            "room_account_data_of_type",
            "SELECT room_id, content FROM account_data WHERE user_id = ? AND type = ? AND room_id <> ''",
            user_id,
            data_type,
        )
        return {r[0]: json.loads(r[1]) for r in rows}

    async def users_with_account_data(self, data_type: str) -> set[str]:
        """Users holding global account data of `data_type` (read once at start-up)."""
        rows = await self.db.query(
            "users_with_account_data",
            "SELECT user_id FROM account_data WHERE room_id = '' AND type = ?",
            data_type,
        )
        return {r[0] for r in rows}

    async def global_account_data_of_type(self, data_type: str) -> list[tuple[str, dict[str, Any]]]:
        """(user id, content) of every user's global account data of `data_type` (read once at
        start-up, for types few users have, such as m.ignored_user_list)."""
        rows = await self.db.query(
            "global_account_data_of_type",
            "SELECT user_id, content FROM account_data WHERE room_id = '' AND type = ?",
            data_type,
        )
        return [(r[0], json.loads(r[1])) for r in rows]

    async def account_data_since(
        self, user_id: str, after: int, upto: int
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(room id or '', type, content) changed in (after, upto]."""
        rows = await self.db.query(
            "account_data_since",
            "SELECT room_id, type, content FROM account_data"
            " WHERE user_id = ? AND stream_id > ? AND stream_id <= ?",
            user_id,
            after,
            upto,
        )
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    async def account_data_between(
        self, after: int, upto: int
    ) -> list[tuple[int, str, str, str, dict[str, Any]]]:
        """(position, user, room id or '', type, content) changed in (after, upto], every user:
        what a process that missed the writer's messages catches up on."""
        rows = await self.db.query(
            "account_data_between",
            "SELECT stream_id, user_id, room_id, type, content FROM account_data"
            " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            after,
            upto,
        )
        return [(int(r[0]), r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # Filters ----------------------------------------------------------------------

    async def add_filter(self, user_id: str, filter_json: dict[str, Any], max_total: int) -> int | None:
        """Store a filter (one transaction): the id of the user's identical filter if there is
        one, else a new id; None, and nothing stored, if the user's filters would then hold
        more than `max_total` characters of JSON."""
        encoded = json.dumps(filter_json, sort_keys=True, separators=(",", ":"))

        def add_txn(txn: Txn) -> int | None:
            # Two uploads at once read the same MAX(filter_id), and the second INSERT failed on
            # the primary key (a 500 on PostgreSQL): the user's row orders them.
            lock_user_txn(txn, user_id)
            same = txn.query_one(
                "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_json = ?", (user_id, encoded)
            )
            if same is not None:
                return int(same[0])
            row = txn.query_one(
                "SELECT MAX(filter_id), COALESCE(SUM(LENGTH(filter_json)), 0) FROM user_filters"
                " WHERE user_id = ?",
                (user_id,),
            )
            if row is not None and int(row[1]) + len(encoded) > max_total:
                return None
            filter_id = int(row[0]) + 1 if row and row[0] is not None else 0
            txn.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, encoded),
            )
            return filter_id

        return await self.db.run_interaction("add_filter", add_txn)

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        rows = await self.db.query(
            "get_filter",
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
            user_id,
            filter_id,
        )
        return json.loads(rows[0][0]) if rows else None

    # Receipts ---------------------------------------------------------------------

    async def put_receipt(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        event_stream_ordering: int,
        stream_id: int,
        ts: int,
    ) -> None:
        await self.db.execute(
            "put_receipt",
            "INSERT INTO receipts"
            " (room_id, receipt_type, user_id, thread_id, event_id, event_stream_ordering,"
            " stream_id, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
            " event_id = excluded.event_id, event_stream_ordering = excluded.event_stream_ordering,"
            " stream_id = excluded.stream_id, ts = excluded.ts"
            # A receipt never moves back (a lagging device's older one is ignored, as Synapse does).
            " WHERE receipts.event_stream_ordering < excluded.event_stream_ordering",
            room_id,
            receipt_type,
            user_id,
            thread_id,
            event_id,
            event_stream_ordering,
            stream_id,
            ts,
        )

    async def receipts_for_rooms(
        self, room_ids: list[str], after: int, upto: int
    ) -> list[tuple[str, str, str, str, str, int, int]]:
        """(room, type, user, thread, event id, event position, ts) changed in (after, upto]."""
        if not room_ids:
            return []
        in_rooms, room_args = in_list(self.db.dialect, "room_id", room_ids)
        rows = await self.db.query(
            "receipts_for_rooms",
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, event_stream_ordering, ts"
            " FROM receipts"
            f" WHERE {in_rooms} AND stream_id > ? AND stream_id <= ?",
            *room_args,
            after,
            upto,
        )
        return [(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6])) for r in rows]

    async def receipts_between(self, after: int, upto: int) -> list[tuple[int, str, str]]:
        """(position, room, user) of the receipts changed in (after, upto], every room."""
        rows = await self.db.query(
            "receipts_between",
            "SELECT stream_id, room_id, user_id FROM receipts"
            " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            after,
            upto,
        )
        return [(int(r[0]), r[1], r[2]) for r in rows]

    async def read_positions(self, room_id: str) -> dict[str, int]:
        """user -> stream position of the newest event their read receipts (public or private) cover."""
        rows = await self.db.query(
            "read_positions",
            "SELECT user_id, MAX(event_stream_ordering) FROM receipts WHERE room_id = ?"
            " AND receipt_type IN ('m.read', 'm.read.private') GROUP BY user_id",
            room_id,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def read_positions_of(self, room_id: str, user_ids: Sequence[str]) -> dict[str, int]:
        """`read_positions` of these users only (those without a receipt left out): a push's
        recipients, not every member of a big room."""
        out: dict[str, int] = {}
        for chunk in in_chunks(user_ids):
            rows = await self.db.query(
                "read_positions_of",
                "SELECT user_id, MAX(event_stream_ordering) FROM receipts WHERE room_id = ?"
                f" AND user_id IN ({marks(len(chunk))}) AND receipt_type IN ('m.read', 'm.read.private')"
                " GROUP BY user_id",
                room_id,
                *chunk,
            )
            out.update((r[0], int(r[1])) for r in rows)
        return out

    # Presence ------------------------------------------------------------------------

    async def put_presence(
        self, user_id: str, state: str, status_msg: str | None, last_active_ts: int, stream_id: int
    ) -> None:
        await self.db.execute(
            "put_presence",
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_id)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,"
            " last_active_ts = excluded.last_active_ts, stream_id = excluded.stream_id",
            user_id,
            state,
            status_msg,
            last_active_ts,
            stream_id,
        )

    async def put_presence_many(self, rows: Sequence[tuple[str, str, str | None, int, int]]) -> None:
        """(user, state, status message, last active, stream id) for many users, one transaction."""
        if not rows:
            return

        def put_txn(txn: Txn) -> None:
            # One statement on PostgreSQL; sorted so concurrent writers lock rows in one order.
            txn.insert_many(
                "presence",
                ("user_id", "state", "status_msg", "last_active_ts", "stream_id"),
                sorted(rows),
                "ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " stream_id = excluded.stream_id"
                # A user's newer change (a sync that began meanwhile) may commit first on
                # another connection: an older position never overwrites it.
                " WHERE presence.stream_id < excluded.stream_id",
            )

        await self.db.run_interaction("put_presence_many", put_txn)

    async def presence_between(self, after: int, upto: int) -> list[tuple[str, str, str | None, int, int]]:
        """(user, state, status message, last active, position) changed in (after, upto]."""
        rows = await self.db.query(
            "presence_between",
            "SELECT user_id, state, status_msg, last_active_ts, stream_id FROM presence"
            " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            after,
            upto,
        )
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    async def all_presence(self) -> list[tuple[str, str, str | None, int, int]]:
        rows = await self.db.query(
            "all_presence", "SELECT user_id, state, status_msg, last_active_ts, stream_id FROM presence"
        )
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    # Delivery ------------------------------------------------------------------------

    async def put_delivery_positions(self, positions: dict[str, int]) -> None:
        def put_txn(txn: Txn) -> None:
            # One statement for the whole flush (hundreds of users a second under fan-out).
            txn.insert_many(
                "delivery_positions",
                ("user_id", "stream_ordering"),
                sorted(positions.items()),
                "ON CONFLICT (user_id) DO UPDATE SET stream_ordering = excluded.stream_ordering"
                " WHERE delivery_positions.stream_ordering < excluded.stream_ordering",
            )

        await self.db.run_interaction("put_delivery_positions", put_txn)

    async def delivery_positions(self, user_ids: list[str]) -> dict[str, int]:
        if not user_ids:
            return {}
        in_users, user_args = in_list(self.db.dialect, "user_id", user_ids)
        rows = await self.db.query(
            "delivery_positions",
            f"SELECT user_id, stream_ordering FROM delivery_positions WHERE {in_users}",
            *user_args,
        )
        return {r[0]: int(r[1]) for r in rows}
