"""What a user may learn about a room without being in it: the room summary
(`GET /v1/room_summary/{roomIdOrAlias}`) and each room of a space hierarchy.

Spec: Client-Server API, "Room summary" and "Spaces" (`/hierarchy`), and the
Server-Server API's hierarchy, which says which rooms a requester may see: those
they are joined to, invited to or knocking on, and those anyone could join or
read: join rule `public`, `knock` or `knock_restricted`, history `world_readable`,
or a `restricted`/`knock_restricted` room whose `allow` list names a room the
requester is joined to.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.directory import room_summary
from homeserver.core.join_rules import OPEN_JOIN_RULES, allowed_room_ids, join_rule
from homeserver.core.room_heads import RoomHead
from homeserver.core.rooms import RoomService
from homeserver.core.timeline_cache import TimelineCache
from homeserver.errors import NotFound


def is_world_readable(head: RoomHead) -> bool:
    return head.content("m.room.history_visibility").get("history_visibility") == "world_readable"


def room_type(head: RoomHead) -> str | None:
    value = head.content("m.room.create").get("type")
    return value if isinstance(value, str) else None


class RoomPreview:
    def __init__(self, rooms: RoomService, timeline: TimelineCache) -> None:
        self.rooms = rooms
        self.heads = rooms.events.heads
        self.timeline = timeline

    async def summary(self, user_id: str | None, room_id_or_alias: str) -> dict[str, Any]:
        """`GET /v1/room_summary/{roomIdOrAlias}`; `user_id` None for a request without a token.

        @raise NotFound: unknown, or not for this requester's eyes (the spec's 404 covers both,
            so a private room's existence does not leak).
        """
        room_id = await self.rooms.resolve_room(room_id_or_alias)
        head = await self.heads.get(room_id)
        if head is None or not await self.may_preview(user_id, head):
            raise NotFound("Room not found")
        entry = self.chunk(head)
        if user_id is not None:
            entry["membership"] = head.membership(user_id) or "leave"
        return entry

    async def may_preview(self, user_id: str | None, head: RoomHead) -> bool:
        """Whether `user_id` (None: an unauthenticated request) may see the room's summary."""
        if user_id is not None and head.membership(user_id) in ("join", "invite", "knock"):
            return True
        if join_rule(head) in OPEN_JOIN_RULES or is_world_readable(head):
            return True
        if user_id is None:
            return False
        allowed = allowed_room_ids(head)
        if not allowed:
            return False
        # The user's own rooms, not each allowed room loaded: an `allow` list may name a
        # thousand rooms (64 KiB), most of them unknown here, and a /hierarchy walk asks
        # this of every room it meets.
        memberships = await self.timeline.rooms_for_user(user_id)
        return any(memberships.get(room, ("", 0))[0] == "join" for room in allowed)

    def chunk(self, head: RoomHead) -> dict[str, Any]:
        """The fields a summary and a hierarchy room share (spec: RoomSummary / SpaceHierarchyRoomsChunk)."""
        entry = room_summary(head)  # with room_type when the create event names one
        allowed = allowed_room_ids(head)
        if allowed:
            entry["allowed_room_ids"] = allowed
        algorithm = head.content("m.room.encryption").get("algorithm")
        if isinstance(algorithm, str):
            entry["encryption"] = algorithm
        entry["room_version"] = head.room_version
        return entry
