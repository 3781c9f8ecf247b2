"""Message status for the product's first spec: sent, delivered, read.

- sent: the event is committed (it has an id at all);
- delivered: every recipient (each member but the sender who was joined or
  invited when it was sent and still is) has proven receipt: one of their
  devices was served it and then asked for a newer token (a sync `since`
  at or past it, or a WebSocket ack) - no client change needed;
- read: every recipient's read receipt covers it.

Delivery positions are monotonic per user, kept in memory and flushed to the
database in batches (a lost flush only makes a status lag, never lie forward).
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.core.clock import Clock
from homeserver.core.device_connections import DeviceConnections
from homeserver.core.room_heads import RoomHead
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent


@dataclass(frozen=True)
class RecipientStatus:
    user_id: str
    delivered: bool
    read: bool

    @property
    def status(self) -> str:
        return "read" if self.read else "delivered" if self.delivered else "sent"


class DeliveryTracker:
    def __init__(self, storage: Storage, clock: Clock) -> None:
        self.storage = storage
        self._positions: dict[str, int] = {}
        self._dirty: dict[str, int] = {}
        # Per device, for push suppression (the push plugin asks through the plugin API).
        self.connections = DeviceConnections(clock)

    def acknowledge(self, user_id: str, device_id: str, position: int) -> None:
        """The user's device proved receipt of every event up to `position`."""
        self.connections.acknowledge(user_id, device_id, position)
        if position > self._positions.get(user_id, 0):
            self._positions[user_id] = position
            self._dirty[user_id] = position

    async def flush(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            try:
                await self.storage.user_data.put_delivery_positions(dirty)
            except Exception:
                for user_id, position in dirty.items():
                    self._dirty[user_id] = max(position, self._dirty.get(user_id, 0))
                raise

    async def positions(self, user_ids: list[str]) -> dict[str, int]:
        missing = [u for u in user_ids if u not in self._positions]
        if missing:
            stored = await self.storage.user_data.delivery_positions(missing)
            for user_id in missing:
                self._positions[user_id] = max(stored.get(user_id, 0), self._positions.get(user_id, 0))
        return {u: self._positions.get(u, 0) for u in user_ids}

    @staticmethod
    def recipients(head: RoomHead, event: StoredEvent) -> list[str]:
        """Members but the sender who were in (joined or invited) when the event was sent, and still are."""
        out = []
        for (event_type, user_id), member in head.state.items():
            if event_type != "m.room.member" or user_id == event.sender:
                continue
            if member.content.get("membership") not in ("join", "invite"):
                continue
            # A current membership newer than the event: count them only if they were in before it.
            previous = member.unsigned_extra.get("prev_content", {}).get("membership")
            if member.stream_ordering > event.stream_ordering and previous not in ("join", "invite"):
                continue
            out.append(user_id)
        return out

    @staticmethod
    def _joined_at(head: RoomHead, user_id: str) -> int:
        """A sync acknowledged at or past the user's join served them the room's timeline; an
        invitee is served no event of the room, so nothing is delivered to them yet."""
        member = head.get("m.room.member", user_id)
        if member is None or head.membership(user_id) != "join":
            return 2**63
        return member.stream_ordering

    async def statuses(self, head: RoomHead, events: list[StoredEvent]) -> dict[str, list[RecipientStatus]]:
        """event id -> each recipient's status."""
        users = sorted({u for ev in events for u in self.recipients(head, ev)})
        delivered = await self.positions(users)
        read = await self.storage.user_data.read_positions(head.room_id) if users else {}
        out = {}
        for ev in events:
            out[ev.event_id] = [
                RecipientStatus(
                    u,
                    delivered=delivered.get(u, 0) >= max(ev.stream_ordering, self._joined_at(head, u))
                    or read.get(u, 0) >= ev.stream_ordering,
                    read=read.get(u, 0) >= ev.stream_ordering,
                )
                for u in self.recipients(head, ev)
            ]
        return out


def overall_status(recipients: list[RecipientStatus]) -> str:
    if recipients and all(r.read for r in recipients):
        return "read"
    if recipients and all(r.delivered for r in recipients):
        return "delivered"
    return "sent"
