"""Room aliases and the public room directory (spec: Room aliases; Room directory).

An alias is this server's (`#name:server`); whoever made it, or whoever may set the
room's canonical alias, may remove it. A room is listed when a member who may set
the canonical alias publishes it (or it was created with `visibility: public`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.core.rooms import RoomService, is_alias_localpart
from homeserver.errors import Forbidden, MatrixError, NotFound
from homeserver.storage import Storage
from homeserver.storage.rooms import AliasExists

MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_ALIAS_LENGTH = 255
_SUMMARY_FIELDS = (
    ("name", "m.room.name", "name"),
    ("topic", "m.room.topic", "topic"),
    ("canonical_alias", "m.room.canonical_alias", "alias"),
    ("avatar_url", "m.room.avatar", "url"),
)


def page_size(limit: int | None) -> int:
    """The number of rooms a /publicRooms page holds for the `limit` asked.

    The spec gives `limit` no range. As Synapse does, 0 means "no limit" (here: the
    largest page, MAX_PAGE, with a `next_batch` if there is more) and a negative limit is
    400 M_INVALID_PARAM; absent, DEFAULT_PAGE.
    """
    if limit is None:
        return DEFAULT_PAGE
    if limit < 0:
        raise MatrixError("'limit' must not be negative", "M_INVALID_PARAM")
    return MAX_PAGE if limit == 0 else min(limit, MAX_PAGE)


def parse_since(since: str | None) -> int:
    """A `next_batch`/`prev_batch` token ("n<offset>") -> the offset; M_INVALID_PARAM if malformed."""
    if since is None or since == "":
        return 0
    digits = since[1:]
    if not since.startswith("n") or not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        raise MatrixError("Invalid 'since' token", "M_INVALID_PARAM")
    return int(digits)


def room_summary(head: RoomHead) -> dict[str, Any]:
    """A room as the directory lists it (spec: PublishedRoomsChunk)."""
    entry: dict[str, Any] = {
        "room_id": head.room_id,
        "num_joined_members": len(head.members("join")),
        "world_readable": head.content("m.room.history_visibility").get("history_visibility")
        == "world_readable",
        "guest_can_join": head.content("m.room.guest_access").get("guest_access") == "can_join",
        "join_rule": head.content("m.room.join_rules").get("join_rule", "invite"),
    }
    for key, event_type, field in _SUMMARY_FIELDS:
        value = head.content(event_type).get(field)
        if isinstance(value, str):
            entry[key] = value
    kind = head.content("m.room.create").get("type")
    if isinstance(kind, str):
        entry["room_type"] = kind
    return entry


def _parse_room_types(value: object) -> set[str | None] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise MatrixError("'room_types' must be a list of room types (strings or null)", "M_BAD_JSON")
    return set(value)


class DirectoryService:
    def __init__(self, server_name: str, storage: Storage, rooms: RoomService, heads: RoomHeads) -> None:
        self.server_name = server_name
        self.storage = storage
        self.rooms = rooms
        self.heads = heads
        # Ask another server (federation's DirectoryQueries), once wired.
        self.remote_alias: Callable[[str], Awaitable[dict[str, Any]]] | None = None
        self.remote_public_rooms: Callable[..., Awaitable[dict[str, Any]]] | None = None

    # Aliases ---------------------------------------------------------------------------------

    async def room_for_alias(self, alias: str) -> str:
        room_id = await self.storage.rooms.room_for_alias(alias)
        if room_id is None:
            raise NotFound("Room alias not found")
        return room_id

    async def resolve_alias(self, alias: str) -> dict[str, Any]:
        """GET /directory/room/{alias}: {"room_id", "servers"}; another server's alias is
        asked of that server."""
        if not alias.endswith(":" + self.server_name) and self.remote_alias is not None:
            return await self.remote_alias(alias)
        return {"room_id": await self.room_for_alias(alias), "servers": [self.server_name]}

    async def create_alias(self, user_id: str, alias: str, room_id: str) -> None:
        """Point `alias` at a room the user is joined to; 409 if it points somewhere already."""
        if (
            not alias.startswith("#")
            or not alias.endswith(":" + self.server_name)
            or len(alias) > MAX_ALIAS_LENGTH
            or not is_alias_localpart(alias[1 : -len(":" + self.server_name)])
        ):
            raise MatrixError("Aliases must be #name:" + self.server_name, "M_INVALID_PARAM")
        await self.rooms.access_room_as_member(user_id, room_id)
        if await self.storage.rooms.room_for_alias(alias) is None:
            # Aliases are names in one namespace, kept until removed: a loop of fresh ones
            # took any number of names (and rows) at request speed.
            self.rooms.limit_user("create_alias", user_id)
        try:
            await self.storage.rooms.create_alias(alias, room_id, user_id)
        except AliasExists:
            raise MatrixError("Room alias already exists", "M_UNKNOWN", status=409) from None

    async def delete_alias(self, user_id: str, alias: str) -> None:
        room_id = await self.room_for_alias(alias)
        creator = await self.storage.rooms.alias_creator(alias)
        head = await self.rooms.head(room_id)
        if creator != user_id and not self.rooms.may(
            user_id, head, "state", event_type="m.room.canonical_alias"
        ):
            raise Forbidden("You may not remove this alias")
        await self.storage.rooms.delete_alias(alias)

    async def aliases_for_room(self, user_id: str, room_id: str) -> list[str]:
        await self.rooms.access_room_as_member(user_id, room_id)
        return await self.storage.rooms.aliases_for_room(room_id)

    # The public room directory ------------------------------------------------------------

    async def visibility(self, room_id: str) -> str:
        await self.rooms.head(room_id)
        return await self.storage.rooms.get_visibility(room_id)

    async def set_visibility(self, user_id: str, room_id: str, visibility: str) -> None:
        if visibility not in ("public", "private"):
            raise MatrixError("'visibility' must be public or private", "M_INVALID_PARAM")
        head = await self.rooms.access_room_as_member(user_id, room_id)
        if not self.rooms.may(user_id, head, "state", event_type="m.room.canonical_alias"):
            raise Forbidden("You may not change this room's visibility")
        await self.storage.rooms.set_visibility(room_id, visibility)

    async def public_rooms_of(
        self,
        server: str | None,
        limit: int | None,
        since: str | None,
        search_filter: dict[str, Any] | None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
    ) -> dict[str, Any]:
        """/publicRooms for a client: ours, or `server`'s (asked over federation)."""
        page_size(limit)  # a negative limit is refused before another server is asked
        if server is not None and server != self.server_name and self.remote_public_rooms is not None:
            return await self.remote_public_rooms(
                server, limit, since, search_filter, include_all_networks, third_party_instance_id
            )
        search_filter = search_filter or {}
        term = search_filter.get("generic_search_term")
        if term is not None and not isinstance(term, str):
            raise MatrixError("'generic_search_term' must be a string", "M_BAD_JSON")
        if third_party_instance_id is not None and not include_all_networks:
            return {"chunk": [], "total_room_count_estimate": 0}  # no third-party networks here
        return await self.public_rooms(limit, since, term, search_filter.get("room_types"))

    async def public_rooms(
        self, limit: int | None, since: str | None, term: str | None, room_types: object = None
    ) -> dict[str, Any]:
        """One page of the listed rooms, most members first; `term` matches name, topic, alias.

        `room_types` (the filter's, spec: POST /publicRooms): only rooms of these types, where
        None stands for rooms without a type; absent (None here): rooms of every type."""
        wanted = _parse_room_types(room_types)
        start = parse_since(since)
        limit = page_size(limit)
        needle = (term or "").lower()
        entries = []
        for room_id in await self.storage.rooms.public_rooms():
            head = await self.heads.get(room_id)
            if head is None:
                continue
            entry = room_summary(head)
            text = " ".join(str(entry.get(k, "")) for k in ("name", "topic", "canonical_alias")).lower()
            if needle and needle not in text:
                continue
            if wanted is not None and entry.get("room_type") not in wanted:
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        page = entries[start : start + limit]
        response: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(entries)}
        if start + limit < len(entries):
            response["next_batch"] = f"n{start + limit}"
        if start > 0:
            response["prev_batch"] = f"n{max(0, start - limit)}"
        return response
