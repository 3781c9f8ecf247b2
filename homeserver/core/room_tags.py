"""Room tags (spec: Client-Server API, Room Tagging): a user's own labels on a room.

Tags live in the `m.tag` room account data of their owner (`{"tags": {name: {order}}}`),
so a change reaches the user's other devices through /sync like any account data.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.account_data import AccountDataService
from homeserver.core.room_heads import RoomHeads
from homeserver.errors import Forbidden, MatrixError

TAG_TYPE = "m.tag"
# The spec names no limit; a tag is a path segment and a map key shown in every sync.
MAX_TAG_LENGTH = 255
MAX_TAGS_PER_ROOM = 100


def tag_names(content: dict[str, Any]) -> frozenset[str]:
    """The names of the tags in an m.tag content (clients may store anything there)."""
    tags = content.get("tags")
    if not isinstance(tags, dict):
        return frozenset()
    return frozenset(k for k, v in tags.items() if isinstance(v, dict))


def _check_tag(tag: str) -> None:
    if not tag or len(tag.encode()) > MAX_TAG_LENGTH:
        raise MatrixError(f"A tag is 1 to {MAX_TAG_LENGTH} bytes long", "M_INVALID_PARAM")


def check_tag_content(body: dict[str, Any]) -> dict[str, Any]:
    """The stored form of a tag's body: `order` a number in [0, 1] if present (spec: m.tag);
    other keys are kept, as the spec lets clients add their own."""
    order = body.get("order")
    if "order" in body and (
        isinstance(order, bool) or not isinstance(order, (int, float)) or not 0 <= order <= 1
    ):
        raise MatrixError("'order' must be a number between 0 and 1", "M_INVALID_PARAM")
    return dict(body)


class TagService:
    def __init__(self, account_data: AccountDataService, heads: RoomHeads) -> None:
        self.account_data = account_data
        self.heads = heads

    async def _access_own_tags(self, requester: str, user_id: str, room_id: str) -> None:
        """Only for yourself, and only on a room you are or were in: tags name rooms you see."""
        if requester != user_id:
            raise Forbidden("You may only access your own tags")
        head = await self.heads.get(room_id)
        if head is None or head.membership(user_id) is None:
            raise Forbidden("You are not in this room")

    async def _tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        content = await self.account_data.get(user_id, room_id, TAG_TYPE) or {}
        tags = content.get("tags")
        return {k: v for k, v in tags.items() if isinstance(v, dict)} if isinstance(tags, dict) else {}

    async def get_tags(self, requester: str, user_id: str, room_id: str) -> dict[str, Any]:
        """`GET .../tags`: `{"tags": {name: {"order": ...}}}` (empty when none is set)."""
        await self._access_own_tags(requester, user_id, room_id)
        return {"tags": await self._tags(user_id, room_id)}

    async def put_tag(
        self, requester: str, user_id: str, room_id: str, tag: str, body: dict[str, Any]
    ) -> None:
        """`PUT .../tags/{tag}`: add or replace one tag."""
        _check_tag(tag)
        content = check_tag_content(body)
        await self._access_own_tags(requester, user_id, room_id)
        tags = await self._tags(user_id, room_id)
        if tag not in tags and len(tags) >= MAX_TAGS_PER_ROOM:
            raise MatrixError(f"At most {MAX_TAGS_PER_ROOM} tags per room", "M_INVALID_PARAM")
        tags[tag] = content
        await self.account_data.check_quota(user_id, room_id, TAG_TYPE, {"tags": tags})
        await self.account_data.put(user_id, room_id, TAG_TYPE, {"tags": tags})

    async def delete_tag(self, requester: str, user_id: str, room_id: str, tag: str) -> None:
        """`DELETE .../tags/{tag}`: remove it; removing an absent tag succeeds (idempotent)."""
        await self._access_own_tags(requester, user_id, room_id)
        tags = await self._tags(user_id, room_id)
        if tag in tags:
            del tags[tag]
            await self.account_data.put(user_id, room_id, TAG_TYPE, {"tags": tags})

    async def copy_tags(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """Carry the user's tags over to the room that replaced `old_room_id` (spec: Room
        Upgrades, "the server should automatically transfer ... tags" on joining it)."""
        tags = await self._tags(user_id, old_room_id)
        if tags and not await self._tags(user_id, new_room_id):
            await self.account_data.put(user_id, new_room_id, TAG_TYPE, {"tags": tags})
