"""Pushers: GET /pushers, POST /pushers/set (spec: Client-Server API, "Push Notifications")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.pushers import PusherSettings, pusher_json
from homeserver.errors import BadJson, MissingParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def parse_settings(body: dict[str, Any]) -> PusherSettings:
    """The body's fields with their types checked; the rules are core's (core/pushers.py)."""
    if "kind" not in body:
        raise MissingParam("Missing 'kind'")
    kind = body["kind"]
    if kind is not None and not isinstance(kind, str):
        raise BadJson("'kind' must be a string or null")
    return PusherSettings(
        app_id=required(body, "app_id", str),
        pushkey=required(body, "pushkey", str),
        kind=kind,
        app_display_name=optional(body, "app_display_name", str),
        device_display_name=optional(body, "device_display_name", str),
        profile_tag=optional(body, "profile_tag", str),
        lang=optional(body, "lang", str),
        data=optional(body, "data", dict),
        append=bool(optional(body, "append", bool, False)),
    )


def register(router: Router, hs: "HomeServer") -> None:
    pushers = hs.pushers

    async def get_pushers(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"pushers": [pusher_json(p) for p in await pushers.list_pushers(requester.user_id)]}

    async def set_pusher(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        settings = parse_settings(request.json_body())
        await pushers.set_pusher(requester.user_id, requester.device_id, settings)
        return {}

    router.add("GET", f"{CLIENT}/pushers", get_pushers)
    router.add("POST", f"{CLIENT}/pushers/set", set_pusher)
