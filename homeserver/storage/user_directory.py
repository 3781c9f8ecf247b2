"""The user directory: each local user's search terms, and the rooms whose members anyone finds.

A search reads the users whose terms start with every word of the query (a range
of the terms' B-tree index per word: no scan of all users), limited to those who
share a room with the searcher or sit in a public room, unless the server lets
everyone find every local user.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.database import Database, Txn, in_list, lock_user_txn

# Past every character: the upper bound of the terms starting with a prefix.
_AFTER_ALL = "\U0010ffff"


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set_user(self, user_id: str, search_name: str | None, terms: Sequence[str]) -> None:
        """Replace the user's entry; `search_name` None: remove them (deactivated)."""

        def set_txn(txn: Txn) -> None:
            # Two changes at once (a display name set twice quickly) each deleted nothing the
            # other had not committed, and the second INSERT failed on the primary key.
            lock_user_txn(txn, user_id)
            txn.execute("DELETE FROM user_directory_terms WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM user_directory WHERE user_id = ?", (user_id,))
            if search_name is None:
                return
            txn.execute(
                "INSERT INTO user_directory (user_id, search_name) VALUES (?, ?)", (user_id, search_name)
            )
            for term in sorted(set(terms)):
                txn.execute("INSERT INTO user_directory_terms (term, user_id) VALUES (?, ?)", (term, user_id))

        await self.db.run_interaction("user_directory_set_user", set_txn)

    async def is_empty(self) -> bool:
        rows = await self.db.query("user_directory_is_empty", "SELECT 1 FROM user_directory LIMIT 1")
        return not rows

    async def users_after(self, after: str, limit: int) -> list[tuple[str, str | None, bool]]:
        """(user id, display name, deactivated) of users past `after`, in id order (the backfill)."""
        rows = await self.db.query(
            "user_directory_users_after",
            "SELECT u.user_id, p.displayname, u.deactivated FROM users u"
            " LEFT JOIN profiles p ON p.user_id = u.user_id"
            " WHERE u.user_id > ? ORDER BY u.user_id LIMIT ?",
            after,
            limit,
        )
        return [(r[0], r[1], bool(r[2])) for r in rows]

    async def set_public_room(self, room_id: str, public: bool) -> None:
        if public:
            sql = (
                "INSERT INTO user_directory_public_rooms (room_id) VALUES (?)"
                " ON CONFLICT (room_id) DO NOTHING"
            )
        else:
            sql = "DELETE FROM user_directory_public_rooms WHERE room_id = ?"
        await self.db.execute("user_directory_set_public_room", sql, room_id)

    async def search(
        self,
        words: Sequence[str],
        whole: str,
        searcher_rooms: Sequence[str] | None,
        limit: int,
    ) -> list[tuple[str, str | None, str | None]]:
        """(user id, display name, avatar URL) of up to `limit` users with a term starting with
        each of `words`; ranked: display name equal to `whole`, then starting with it, then the
        rest, each by name. `searcher_rooms` None: any local user; else only users joined to
        one of those rooms or to a public room."""
        where = []
        args: list[object] = [whole, whole, whole + _AFTER_ALL]
        for word in words:
            where.append(
                "d.user_id IN (SELECT t.user_id FROM user_directory_terms t WHERE t.term >= ? AND t.term < ?)"
            )
            args += [word, word + _AFTER_ALL]
        if searcher_rooms is not None:
            in_rooms, room_args = in_list(self.db.dialect, "c.room_id", searcher_rooms)
            shared = f"{in_rooms} OR " if searcher_rooms else ""
            where.append(
                "EXISTS (SELECT 1 FROM current_state_events c"
                " JOIN room_memberships m ON m.event_id = c.event_id"
                " WHERE c.type = 'm.room.member' AND c.state_key = d.user_id AND m.membership = 'join'"
                f" AND ({shared}c.room_id IN (SELECT room_id FROM user_directory_public_rooms)))"
            )
            args += room_args
        sql = (
            "SELECT d.user_id, p.displayname, p.avatar_url,"
            " CASE WHEN d.search_name = ? THEN 0"
            " WHEN d.search_name >= ? AND d.search_name < ? THEN 1 ELSE 2 END AS tier"
            " FROM user_directory d LEFT JOIN profiles p ON p.user_id = d.user_id"
            f" WHERE {' AND '.join(where)}"
            " ORDER BY tier, d.search_name, d.user_id LIMIT ?"
        )
        rows = await self.db.query("user_directory_search", sql, *args, limit)
        return [(r[0], r[1], r[2]) for r in rows]
