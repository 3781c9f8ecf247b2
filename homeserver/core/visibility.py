"""Which events a user may see (spec: Client-Server API, History visibility).

The rules, for an event E and user U:
- U's own membership events are always visible to U;
- `world_readable`: visible to anyone;
- U was joined when E was sent: visible;
- `shared`: visible if U joined at E's time or at any point after it (so a member
  who left or was kicked sees nothing sent after they left);
- `invited`: visible if U was invited or joined when E was sent;
- `joined`: visible only if U was joined when E was sent.
The room's current `history_visibility` is applied to every event; changes of
the setting over a room's life are not replayed (noted in docs/architecture.md).
"""

from __future__ import annotations

from bisect import bisect_right

from homeserver.core.room_heads import RoomHead
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent


class VisibilityFilter:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def filter_for_user(
        self, user_id: str, head: RoomHead, events: list[StoredEvent]
    ) -> list[StoredEvent]:
        if not events:
            return events
        visibility = head.content("m.room.history_visibility").get("history_visibility", "shared")
        if visibility == "world_readable":
            return events
        history = await self.storage.events.membership_history(user_id, head.room_id)
        positions = [p for p, _ in history]
        out = []
        for ev in events:
            if ev.type == "m.room.member" and ev.state_key == user_id:
                out.append(ev)
                continue
            i = bisect_right(positions, ev.stream_ordering)
            at_event = history[i - 1][1] if i > 0 else None
            if (
                at_event == "join"
                or visibility == "shared"
                and any(m == "join" for _, m in history[i:])
                or visibility == "invited"
                and at_event == "invite"
            ):
                out.append(ev)
        return out

    async def can_see_event(self, user_id: str, head: RoomHead, ev: StoredEvent) -> bool:
        return bool(await self.filter_for_user(user_id, head, [ev]))
