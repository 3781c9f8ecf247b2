"""Reporting content (spec: Client-Server API, Reporting content): events, rooms and users.

Reports are stored for the server's admins (table `reports`; the admin plugin reads
and dismisses event reports through core/admin.py); each takes a token of the reporter's
`rate_limits.report_per_user` (429 M_LIMIT_EXCEEDED past it, as the spec allows), so a
script cannot fill the table. Who may report what, as the spec says:
- an event: a member joined to its room who may see it (history visibility); any
  other case, like a missing event, answers 404 M_NOT_FOUND, so a non-member learns
  nothing about the room's events;
- a room: anyone, whether joined or not; 404 for an unknown room;
- a user: anyone, whoever shares a room with them or not; 404 for an unknown local user
  (a user of another server cannot be looked up, and is reported); reporting oneself
  is a client's mistake: 400 M_INVALID_PARAM, nothing stored.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.messages import MessagesService
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.rooms import check_user_id
from homeserver.errors import MatrixError, NotFound
from homeserver.storage import Storage

MAX_REASON_LENGTH = 2000


def _reason(body: dict[str, Any], required: bool) -> str | None:
    reason = body.get("reason")
    if reason is None:
        if required:
            raise MatrixError("Missing 'reason'", "M_MISSING_PARAM")
        return None
    if not isinstance(reason, str):
        raise MatrixError("'reason' must be a string", "M_BAD_JSON")
    if len(reason) > MAX_REASON_LENGTH:
        raise MatrixError("'reason' is too long", "M_INVALID_PARAM")
    return reason


def _score(body: dict[str, Any]) -> int | None:
    """The optional score of older spec versions: -100 (most offensive) to 0."""
    score = body.get("score")
    if score is None:
        return None
    if not isinstance(score, int) or isinstance(score, bool) or not -100 <= score <= 0:
        raise MatrixError("'score' must be an integer from -100 to 0", "M_INVALID_PARAM")
    return score


class ReportService:
    def __init__(
        self, storage: Storage, messages: MessagesService, clock: Clock, ratelimiter: RateLimiter
    ) -> None:
        self.storage = storage
        self.messages = messages
        self.clock = clock
        self.ratelimiter = ratelimiter

    async def report_event(self, reporter: str, room_id: str, event_id: str, body: dict[str, Any]) -> None:
        reason, score = _reason(body, required=False), _score(body)
        self.ratelimiter.check_user("report", reporter)
        head = await self.messages.rooms.events.heads.get(room_id)
        if head is None or head.membership(reporter) != "join":
            raise NotFound("Event not found")
        judge = self.messages.visibility.judge(reporter, room_id)
        ev = (await self.storage.events.get_events([event_id])).get(event_id)
        if ev is None or ev.room_id != room_id or not await judge.filter([ev]):
            raise NotFound("Event not found")
        await self.storage.reports.add(
            "event",
            reporter,
            self.clock.time_ms(),
            room_id=room_id,
            event_id=event_id,
            target_user_id=ev.sender,
            reason=reason,
            score=score,
        )

    async def report_room(self, reporter: str, room_id: str, body: dict[str, Any]) -> None:
        reason = _reason(body, required=True)
        self.ratelimiter.check_user("report", reporter)
        if await self.messages.rooms.events.heads.get(room_id) is None:
            raise NotFound("Room not found")
        await self.storage.reports.add("room", reporter, self.clock.time_ms(), room_id=room_id, reason=reason)

    async def report_user(self, reporter: str, user_id: str, body: dict[str, Any]) -> None:
        reason = _reason(body, required=True)
        check_user_id(user_id, "userId")
        if user_id == reporter:
            raise MatrixError("You cannot report yourself", "M_INVALID_PARAM")
        self.ratelimiter.check_user("report", reporter)
        local = user_id.endswith(":" + self.messages.rooms.server_name)
        # A user of another server cannot be looked up here: reported all the same, as
        # spam from other servers is much of what admins need to hear about.
        if local and await self.storage.accounts.get_user(user_id) is None:
            raise NotFound("User not found")
        await self.storage.reports.add(
            "user", reporter, self.clock.time_ms(), target_user_id=user_id, reason=reason
        )
