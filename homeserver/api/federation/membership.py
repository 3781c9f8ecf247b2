"""make_join / send_join, make_leave / send_leave, make_knock / send_knock and invite v2
(Server-Server API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.federation.auth import FEDERATION, require_origin
from homeserver.api.http import ApiRequest, Router
from homeserver.api.strict_json import loads_strict

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def _versions(request: ApiRequest) -> list[str]:
    return [v.decode("utf-8", "replace") for v in request.args.get(b"ver", [])]


def _body(request: ApiRequest) -> Any:
    request.content.seek(0)
    return loads_strict(request.content.read())


def register(router: Router, hs: "HomeServer") -> None:
    def make(membership: str, *, needs_versions: bool) -> Any:
        async def handler(request: ApiRequest, room_id: str, user_id: str) -> dict[str, Any]:
            origin = await require_origin(hs, request)
            # make_join without `ver` means room version 1 only (spec): none of ours.
            versions = _versions(request) if needs_versions else None
            return await hs.federation.membership.make(membership, origin, room_id, user_id, versions)

        return handler

    def send(membership: str) -> Any:
        async def handler(request: ApiRequest, room_id: str, event_id: str) -> dict[str, Any]:
            origin = await require_origin(hs, request)
            return await hs.federation.membership.answer_send(
                membership, origin, room_id, event_id, _body(request)
            )

        return handler

    for name, needs_versions in (("join", True), ("leave", False), ("knock", True)):
        handler = make(name, needs_versions=needs_versions)
        router.add("GET", f"{FEDERATION}/v1/make_{name}/{{room_id}}/{{user_id}}", handler)
    router.add("PUT", f"{FEDERATION}/v2/send_join/{{room_id}}/{{event_id}}", send("join"))
    router.add("PUT", f"{FEDERATION}/v2/send_leave/{{room_id}}/{{event_id}}", send("leave"))
    router.add("PUT", f"{FEDERATION}/v1/send_knock/{{room_id}}/{{event_id}}", send("knock"))

    async def invite(request: ApiRequest, room_id: str, event_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation.membership.receive_invite(origin, room_id, event_id, _body(request))

    router.add("PUT", f"{FEDERATION}/v2/invite/{{room_id}}/{{event_id}}", invite)
