"""Profiles: display name and avatar URL (spec: Client-Server API, Profiles)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from homeserver.errors import BadJson, Forbidden, NotFound, Unrecognized
from homeserver.storage import Storage

if TYPE_CHECKING:
    from homeserver.core.ratelimit import RateLimiter
    from homeserver.core.rooms import RoomService
    from homeserver.core.timeline_cache import TimelineCache

log = Logger()

FIELDS = ("displayname", "avatar_url")
_MAX_LENGTH = {"displayname": 256, "avatar_url": 1000}


def _check_field(field: str) -> None:
    if field not in FIELDS:
        raise Unrecognized("Unknown profile field")


def check_value(field: str, value: object) -> str | None:
    """A value `set_field` accepts for the field (None or "" clear it), else M_BAD_JSON."""
    if value is not None and not isinstance(value, str):
        raise BadJson(f"'{field}' must be a string")
    if value is not None and len(value) > _MAX_LENGTH[field]:
        raise BadJson(f"'{field}' is too long")
    if field == "avatar_url" and value and not value.startswith("mxc://"):
        raise BadJson("'avatar_url' must be an mxc:// URI")
    return value


class ProfileService:
    def __init__(
        self, storage: Storage, rooms: "RoomService", timeline: "TimelineCache", server_name: str = ""
    ) -> None:
        self.server_name = server_name
        self.storage = storage
        self.rooms = rooms
        self.timeline = timeline
        # Called with the user id after a change (the user directory re-indexes them).
        self.on_profile_changed: list[Callable[[str], Awaitable[None]]] = []
        # Asks a remote user's server (federation's ProfileQueries.remote), once wired.
        self.remote: Callable[[str, str | None], Awaitable[dict[str, Any]]] | None = None
        # Set by the server: limits the member events a user's own changes make.
        self.ratelimiter: RateLimiter | None = None

    def _is_remote(self, user_id: str) -> bool:
        return bool(self.server_name) and user_id.partition(":")[2] not in ("", self.server_name)

    async def get(self, user_id: str) -> dict[str, Any]:
        """The fields that are set, or M_NOT_FOUND for an unknown user; a remote user's
        profile is asked of their server."""
        if self._is_remote(user_id) and self.remote is not None:
            return await self.remote(user_id, None)
        profile = await self.storage.accounts.get_profile(user_id)
        if profile is None:
            raise NotFound("Profile not found")
        return {k: v for k, v in zip(FIELDS, profile, strict=True) if v is not None}

    async def get_field(self, user_id: str, field: str) -> dict[str, Any]:
        _check_field(field)
        if self._is_remote(user_id) and self.remote is not None:
            profile = await self.remote(user_id, field)
        else:
            profile = await self.get(user_id)
        if field not in profile:
            raise NotFound(f"No {field} set")
        return {field: profile[field]}

    async def set_field(
        self, requester: str, user_id: str, field: str, value: object, *, rate_limited: bool = True
    ) -> None:
        """Set (or, with None or "", clear) one field of the requester's own profile.
        `rate_limited`: a user's own change, counted against
        `rate_limits.profile_update_per_user` (the admin API's are not)."""
        _check_field(field)
        if requester != user_id:
            raise Forbidden("You may only change your own profile")
        checked = check_value(field, value)
        joined = await self._joined_rooms(user_id, rate_limited)
        await self.storage.accounts.set_profile_field(user_id, field, checked or None)
        await self._propagate(user_id, joined)

    async def delete_field(self, requester: str, user_id: str, field: str) -> None:
        """`DELETE /profile/{userId}/{keyName}` (v1.16): clear one field of one's own profile."""
        _check_field(field)
        if requester != user_id:
            raise Forbidden("You may only change your own profile")
        joined = await self._joined_rooms(user_id, True)
        await self.storage.accounts.set_profile_field(user_id, field, None)
        await self._propagate(user_id, joined)

    async def _joined_rooms(self, user_id: str, rate_limited: bool) -> list[str]:
        """The rooms a change makes a member event in; `rate_limited`: first take them (at
        least 1) from the user's bucket, which one token lets through (LimitExceeded else).
        A user in 1,000 rooms changing their name in a loop made 1,000 events a request."""
        memberships = await self.timeline.rooms_for_user(user_id)
        joined = sorted(room_id for room_id, (m, _) in memberships.items() if m == "join")
        if rate_limited and self.ratelimiter is not None:
            self.ratelimiter.check_user("profile_update", user_id, max(1, len(joined)), overdraw=True)
        return joined

    async def _propagate(self, user_id: str, joined: list[str]) -> None:
        """New member events in every room the user is joined to, so the members see it."""
        for listener in self.on_profile_changed:
            try:
                await listener(user_id)
            except Exception:
                # The change is made; the directory catches up at the user's next change.
                log.failure("profile listener failed for {user_id}", user_id=user_id)
        await self.rooms.update_member_profiles(user_id, joined)
