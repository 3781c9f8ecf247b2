"""Spaces: `GET /v1/rooms/{roomId}/hierarchy` (spec: Client-Server API, Spaces).

The tree is walked depth-first from the requested room through its `m.space.child`
state events. A child counts only if its `via` is a non-empty list of server names
(spec: m.space.child, "Children where via is not present or invalid are ignored").
Children are ordered by `order` (valid ones only, before the rest), then the child
event's `origin_server_ts`, then room ID. A room the requester may not preview
(core/room_preview.py) is left out together with everything below it; rooms this
server does not know (federation is not enabled) are left out too.

Paging is stateless: `next_batch` is the number of rooms already returned plus a
digest of the parameters that shape the walk, which the spec forbids changing
between pages (400 M_INVALID_PARAM otherwise); the walk is repeated for each page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.core.room_preview import RoomPreview
from homeserver.errors import Forbidden, MatrixError

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_DEPTH = 50
# Rooms looked up per request at most, whatever the tree (each page repeats the walk):
# unknown rooms and rooms the requester may not preview count too, as each costs a load.
MAX_ROOMS_WALKED = 2000
_ORDER_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F))


@dataclass(frozen=True)
class Child:
    room_id: str
    order: str | None
    origin_server_ts: int
    suggested: bool
    stripped: dict[str, Any]

    def sort_key(self) -> tuple[int, str, int, str]:
        return (0 if self.order is not None else 1, self.order or "", self.origin_server_ts, self.room_id)


def space_children(head: RoomHead) -> list[Child]:
    """The valid `m.space.child` events of a room, in the spec's order."""
    children = []
    for (event_type, state_key), ev in head.state.items():
        if event_type != "m.space.child" or not state_key.startswith("!"):
            continue
        content = ev.content
        via = content.get("via")
        if not isinstance(via, list) or not via or not all(isinstance(s, str) and s for s in via):
            continue
        order = content.get("order")
        valid_order = (
            order
            if isinstance(order, str) and len(order) <= 50 and all(c in _ORDER_CHARS for c in order)
            else None
        )
        stripped = {
            "type": event_type,
            "state_key": state_key,
            "content": content,
            "sender": ev.sender,
            "origin_server_ts": ev.origin_server_ts,
        }
        children.append(
            Child(state_key, valid_order, ev.origin_server_ts, content.get("suggested") is True, stripped)
        )
    children.sort(key=Child.sort_key)
    return children


def _digest(room_id: str, suggested_only: bool, max_depth: int) -> str:
    return hashlib.sha256(f"{room_id}|{suggested_only}|{max_depth}".encode()).hexdigest()[:12]


class SpaceService:
    def __init__(self, heads: RoomHeads, preview: RoomPreview) -> None:
        self.heads = heads
        self.preview = preview

    async def hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        suggested_only: bool = False,
        limit: int | None = None,
        max_depth: int | None = None,
        from_token: str | None = None,
    ) -> dict[str, Any]:
        """One page of the rooms under `room_id` that `user_id` may see, the room itself first.

        @raise Forbidden: the room is unknown or the user may not preview it.
        @raise MatrixError: M_INVALID_PARAM for a bad limit, depth or token.
        """
        if limit is not None and limit < 1:
            raise MatrixError("'limit' must be greater than zero", "M_INVALID_PARAM")
        if max_depth is not None and max_depth < 0:
            raise MatrixError("'max_depth' must not be negative", "M_INVALID_PARAM")
        page_size = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        depth_limit = min(MAX_DEPTH if max_depth is None else max_depth, MAX_DEPTH)
        digest = _digest(room_id, suggested_only, depth_limit)
        skip = self._parse_token(from_token, digest)
        root = await self.heads.get(room_id)
        if root is None or not await self.preview.may_preview(user_id, root):
            raise Forbidden("You may not view this room")

        rooms: list[dict[str, Any]] = []
        seen: set[str] = set()
        stack: list[tuple[str, int]] = [(room_id, 0)]
        walked = listed = 0
        more = False
        while stack and walked < MAX_ROOMS_WALKED:
            current, depth = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            walked += 1
            head = root if current == room_id else await self.heads.get(current)
            if head is None or (current != room_id and not await self.preview.may_preview(user_id, head)):
                continue
            listed += 1
            children = space_children(head)
            if listed > skip:
                if len(rooms) == page_size:
                    more = True
                    break
                entry = self.preview.chunk(head)
                entry["children_state"] = [c.stripped for c in children]
                rooms.append(entry)
            if depth < depth_limit:
                for child in reversed(children):
                    if child.room_id not in seen and (child.suggested or not suggested_only):
                        stack.append((child.room_id, depth + 1))
        response: dict[str, Any] = {"rooms": rooms}
        if more:
            response["next_batch"] = f"{skip + len(rooms)}_{digest}"
        return response

    @staticmethod
    def _parse_token(token: str | None, digest: str) -> int:
        if token is None:
            return 0
        count, _, token_digest = token.partition("_")
        if not count.isascii() or not count.isdigit() or len(count) > 6 or token_digest != digest:
            raise MatrixError(
                "Invalid 'from' token (or suggested_only / max_depth changed since the first page)",
                "M_INVALID_PARAM",
            )
        return int(count)
