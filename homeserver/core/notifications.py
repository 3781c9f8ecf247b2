"""GET /notifications: the events the user's push rules notified them of, newest first.

Nothing is stored per notification: the send path writes no row per recipient (a message
into a 500-member room would cost 499). Instead a request walks back through the recent
events of the user's joined rooms, evaluates the user's rules on each (as the unread counts
do), keeps those that notify and that the user may see, and stops after `limit` matches or
`MAX_SCANNED` events, whichever comes first; `next_token` continues where it stopped. So a
page costs at most a few bounded queries, and the rules applied are the user's current ones.
The room state the rules read (member count, power levels, display name) is the room's
current one, as for the counts loaded from the database. Messages from users the reader
ignores are never listed (as they are never counted).
"""

from __future__ import annotations

from typing import Any

from homeserver.core.event_format import client_event
from homeserver.core.ignored_users import IgnoredUsers
from homeserver.core.push_eval import EventFacts
from homeserver.core.push_rules import PushRuleService
from homeserver.core.room_heads import RoomHeads
from homeserver.core.rooms import RoomService
from homeserver.core.timeline_cache import TimelineCache
from homeserver.core.visibility import VisibilityFilter
from homeserver.errors import InvalidParam
from homeserver.storage import Storage

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Events looked at per request at most: a user whose rules notify rarely gets a short page
# (with a next_token), not a request that reads their whole history.
MAX_SCANNED = 2000
_BATCH = 200


class NotificationService:
    def __init__(
        self,
        storage: Storage,
        heads: RoomHeads,
        timeline: TimelineCache,
        rooms: RoomService,
        rules: PushRuleService,
        visibility: VisibilityFilter,
        persisted_upto: Any,
        ignored: IgnoredUsers,
    ) -> None:
        self.storage = storage
        self.heads = heads
        self.timeline = timeline
        self.rooms = rooms
        self.rules = rules
        self.visibility = visibility
        self._persisted_upto = persisted_upto
        self.ignored = ignored

    async def page(
        self, user_id: str, from_token: str | None, limit: str | None, only: str | None
    ) -> dict[str, Any]:
        before = self._parse_from(from_token)
        count = self._parse_limit(limit)
        if only not in (None, "highlight"):
            raise InvalidParam("'only' may only be 'highlight'")
        joined = [
            room_id
            for room_id, (membership, _) in (await self.timeline.rooms_for_user(user_id)).items()
            if membership == "join"
        ]
        program = await self.rules.program(user_id)
        ignores = self.ignored.now(user_id)
        read = await self.storage.events.read_positions(user_id, joined)
        found: list[dict[str, Any]] = []
        scanned = 0
        next_token: int | None = None
        while joined and len(found) < count and scanned < MAX_SCANNED:
            batch = await self.storage.events.events_before_in_rooms(joined, before, user_id, _BATCH)
            if not batch:
                next_token = None
                break
            await self.rooms.load_redactions(batch)
            visible = await self._visible(user_id, batch)
            for ev in batch:
                scanned += 1
                before = ev.stream_ordering
                next_token = before
                if ev.sender in ignores or ev.event_id not in visible:
                    continue
                if self.rooms.redaction_of(ev) is not None:
                    continue
                head = await self.heads.get(ev.room_id)
                if head is None:
                    continue
                facts = EventFacts(ev.pdu, head.state, head.room_version, len(head.members("join")))
                outcome = program.evaluate(facts, user_id)
                if not outcome.notify or (only == "highlight" and not outcome.highlight):
                    continue
                found.append(
                    {
                        "actions": list(outcome.actions),
                        "event": client_event(ev, head.room_version),
                        "read": ev.stream_ordering <= read.get(ev.room_id, 0),
                        "room_id": ev.room_id,
                        "ts": ev.origin_server_ts,
                    }
                )
                if len(found) >= count or scanned >= MAX_SCANNED:
                    break
            else:
                if len(batch) < _BATCH:
                    next_token = None  # nothing older left
                    break
        response: dict[str, Any] = {"notifications": found}
        if next_token is not None:
            response["next_token"] = str(next_token)
        return response

    async def _visible(self, user_id: str, events: list[Any]) -> set[str]:
        by_room: dict[str, list[Any]] = {}
        for ev in events:
            by_room.setdefault(ev.room_id, []).append(ev)
        visible: set[str] = set()
        for room_id, room_events in by_room.items():
            head = await self.heads.get(room_id)
            if head is not None:
                allowed = await self.visibility.filter_for_user(user_id, head, room_events)
                visible.update(ev.event_id for ev in allowed)
        return visible

    def _parse_from(self, token: str | None) -> int:
        if token is None:
            return int(self._persisted_upto()) + 1
        if not token.isdigit() or len(token) > 18:
            raise InvalidParam("'from' is not a token this server gave out")
        return int(token)

    @staticmethod
    def _parse_limit(raw: str | None) -> int:
        if raw is None:
            return DEFAULT_LIMIT
        if not raw.isdigit() or len(raw) > 9:
            raise InvalidParam("'limit' must be a non-negative integer")
        return max(1, min(int(raw), MAX_LIMIT))
