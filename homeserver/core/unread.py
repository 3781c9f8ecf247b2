"""Unread counts per (user, room): messages from others after the user's read receipt.

Loaded from the database once per (user, room), then kept current from the
commit stream (+1 per message from someone else, reloaded after a receipt),
so a sync never counts rows.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from homeserver.core.room_heads import RoomHeads
from homeserver.storage import Storage
from homeserver.storage.events import PersistItem, StoredEvent

COUNTED_TYPES = ("m.room.message", "m.room.encrypted")
_MAX_ENTRIES = 200_000


def is_highlight(ev: StoredEvent, user_id: str) -> bool:
    mentions = ev.content.get("m.mentions")
    if isinstance(mentions, dict):
        ids = mentions.get("user_ids")
        return isinstance(ids, list) and user_id in ids or mentions.get("room") is True
    body = ev.content.get("body")
    localpart = user_id[1:].split(":", 1)[0]
    return isinstance(body, str) and localpart.lower() in body.lower()


class UnreadCounter:
    def __init__(self, storage: Storage, heads: RoomHeads) -> None:
        self.storage = storage
        self.heads = heads
        self._counts: OrderedDict[tuple[str, str], list[int]] = OrderedDict()

    async def counts(self, user_id: str, room_id: str) -> dict[str, Any]:
        key = (user_id, room_id)
        entry = self._counts.get(key)
        if entry is None:
            entry = await self.storage.events.unread_counts(user_id, room_id, COUNTED_TYPES, is_highlight)
            self._counts[key] = entry
            if len(self._counts) > _MAX_ENTRIES:
                self._counts.popitem(last=False)
        return {"notification_count": entry[0], "highlight_count": entry[1]}

    def on_committed(self, items: list[PersistItem]) -> None:
        for item in items:
            ev = item.event
            if ev.type not in COUNTED_TYPES:
                continue
            head_members = self._members(ev.room_id)
            for user_id in head_members:
                if user_id == ev.sender:
                    continue
                entry = self._counts.get((user_id, ev.room_id))
                if entry is not None:
                    entry[0] += 1
                    if is_highlight(ev, user_id):
                        entry[1] += 1

    def _members(self, room_id: str) -> list[str]:
        head = self.heads.peek(room_id)
        return head.members("join") if head is not None else []

    def forget(self, user_id: str, room_id: str) -> None:
        """After a read receipt: count again from the new position next time."""
        self._counts.pop((user_id, room_id), None)
