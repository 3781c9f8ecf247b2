"""Reporting content: POST /rooms/{roomId}/report/{eventId}, /rooms/{roomId}/report and
/users/{userId}/report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.client.rooms import ROOM
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def report_event(request: ApiRequest, version: str, room_id: str, event_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.reports.report_event(requester.user_id, room_id, event_id, request.json_body())
        return {}

    async def report_room(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.reports.report_room(requester.user_id, room_id, request.json_body())
        return {}

    async def report_user(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.reports.report_user(requester.user_id, user_id, request.json_body())
        return {}

    router.add("POST", f"{ROOM}/report/{{event_id}}", report_event)
    router.add("POST", f"{ROOM}/report", report_room)
    router.add("POST", f"{CLIENT}/users/{{user_id}}/report", report_user)
