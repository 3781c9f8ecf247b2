"""Room aliases and the public room directory."""

from __future__ import annotations

from homeserver.storage.database import Database, Txn


class AliasExists(Exception):
    pass


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def room_for_alias(self, alias: str) -> str | None:
        rows = await self.db.query(
            "room_for_alias", "SELECT room_id FROM room_aliases WHERE room_alias = ?", alias
        )
        return str(rows[0][0]) if rows else None

    async def create_alias(self, alias: str, room_id: str, creator: str) -> None:
        """@raise AliasExists: the alias points somewhere already."""
        try:
            await self.db.execute(
                "create_alias",
                "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES (?, ?, ?)",
                alias,
                room_id,
                creator,
            )
        except Exception as e:
            if self.db.is_unique_violation(e):
                raise AliasExists(alias) from e
            raise

    async def alias_creator(self, alias: str) -> str | None:
        rows = await self.db.query(
            "alias_creator", "SELECT creator FROM room_aliases WHERE room_alias = ?", alias
        )
        return str(rows[0][0]) if rows else None

    async def delete_alias(self, alias: str) -> None:
        await self.db.execute("delete_alias", "DELETE FROM room_aliases WHERE room_alias = ?", alias)

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self.db.query(
            "aliases_for_room",
            "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias",
            room_id,
        )
        return [r[0] for r in rows]

    async def set_visibility(self, room_id: str, visibility: str) -> None:
        await self.db.execute(
            "set_visibility",
            "INSERT INTO room_directory (room_id, visibility) VALUES (?, ?)"
            " ON CONFLICT (room_id) DO UPDATE SET visibility = excluded.visibility",
            room_id,
            visibility,
        )

    async def get_visibility(self, room_id: str) -> str:
        rows = await self.db.query(
            "get_visibility", "SELECT visibility FROM room_directory WHERE room_id = ?", room_id
        )
        return str(rows[0][0]) if rows else "private"

    async def public_rooms(self) -> list[str]:
        rows = await self.db.query(
            "public_rooms", "SELECT room_id FROM room_directory WHERE visibility = 'public' ORDER BY room_id"
        )
        return [r[0] for r in rows]

    async def move_aliases(self, old_room_id: str, new_room_id: str) -> list[str]:
        """Point every alias of `old_room_id` at `new_room_id` (a room upgrade); the moved aliases."""

        def move_txn(txn: Txn) -> list[str]:
            aliases = [
                r[0]
                for r in txn.query(
                    "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias",
                    (old_room_id,),
                )
            ]
            txn.execute("UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, old_room_id))
            return aliases

        return await self.db.run_interaction("move_aliases", move_txn)
