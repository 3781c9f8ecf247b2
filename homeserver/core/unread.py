"""Unread counts per (user, room): messages from others after the user's read receipt.

Loaded from the database once per (user, room), then kept current from the
commit stream (+1 per message from someone else, reloaded after a receipt),
so a sync never counts rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from homeserver.core.room_heads import RoomHeads
from homeserver.storage import Storage
from homeserver.storage.events import PersistItem, StoredEvent

COUNTED_TYPES = ("m.room.message", "m.room.encrypted")
_MAX_ENTRIES = 200_000


def is_highlight(ev: StoredEvent, user_id: str) -> bool:
    return highlight_test(ev)(user_id)


def highlight_test(ev: StoredEvent) -> Callable[[str], bool]:
    """Whether `ev` highlights a given user: explicit mentions, else the localpart in the
    body. Built once per event, then asked per member (a 500-member room asks 500 times)."""
    mentions = ev.content.get("m.mentions")
    if isinstance(mentions, dict):
        if mentions.get("room") is True:
            return lambda user_id: True
        ids = mentions.get("user_ids")
        mentioned = set(i for i in ids if isinstance(i, str)) if isinstance(ids, list) else set()
        return mentioned.__contains__
    body = ev.content.get("body")
    if not isinstance(body, str):
        return lambda user_id: False
    lowered = body.lower()
    return lambda user_id: user_id[1:].split(":", 1)[0].lower() in lowered


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
            highlights = highlight_test(ev)
            counts = self._counts
            room_id = ev.room_id
            for user_id in self._members(room_id):
                entry = counts.get((user_id, room_id))
                if entry is not None and user_id != ev.sender:
                    entry[0] += 1
                    if highlights(user_id):
                        entry[1] += 1

    def _members(self, room_id: str) -> list[str]:
        head = self.heads.peek(room_id)
        return head.members("join") if head is not None else []

    def forget(self, user_id: str, room_id: str) -> None:
        """After a read receipt: count again from the new position next time."""
        self._counts.pop((user_id, room_id), None)
