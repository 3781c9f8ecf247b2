"""Rooms: createRoom, membership, joined rooms, aliases and the public directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.rooms import check_user_id

if TYPE_CHECKING:
    from homeserver.server import HomeServer

ROOM = f"{CLIENT}/rooms/{{room_id}}"


def _reason(body: dict[str, Any]) -> str | None:
    return optional(body, "reason", str)


def _via(request: ApiRequest) -> list[str]:
    """The servers to join or knock through: `via` (v1.12) and the older `server_name`."""
    values = request.args.get(b"via", []) + request.args.get(b"server_name", [])
    return [v.decode("utf-8", "replace") for v in values if v]


def register(router: Router, hs: "HomeServer") -> None:
    rooms = hs.rooms
    directory = hs.directory

    async def create_room(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = await rooms.create_room(requester.user_id, request.json_body())
        return {"room_id": room_id}

    async def join(request: ApiRequest, version: str, room: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = await rooms.join(requester.user_id, room, _via(request))
        return {"room_id": room_id}

    async def join_by_id(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rooms.join(requester.user_id, room_id)
        return {"room_id": room_id}

    async def knock(request: ApiRequest, version: str, room: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = await rooms.knock(
            requester.user_id, room, _reason(request.json_body_or_empty()), _via(request)
        )
        return {"room_id": room_id}

    async def upgrade(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        new_version = required(request.json_body(), "new_version", str)
        return {"replacement_room": await hs.room_upgrader.upgrade(requester.user_id, room_id, new_version)}

    async def invite(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        await rooms.invite(requester.user_id, room_id, required(body, "user_id", str), _reason(body))
        return {}

    async def leave(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body_or_empty()
        await rooms.leave(requester.user_id, room_id, _reason(body))
        return {}

    async def forget(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rooms.forget(requester.user_id, room_id)
        return {}

    def _membership_action(action: str) -> Any:
        async def handler(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
            requester = await require_user(hs, request)
            body = request.json_body()
            target = check_user_id(required(body, "user_id", str))
            await getattr(rooms, action)(requester.user_id, room_id, target, _reason(body))
            return {}

        return handler

    async def joined_rooms(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        memberships = await hs.timeline.rooms_for_user(requester.user_id)
        return {"joined_rooms": sorted(r for r, (m, _) in memberships.items() if m == "join")}

    # Aliases and directory --------------------------------------------------------------

    async def get_alias(request: ApiRequest, version: str, alias: str) -> dict[str, Any]:
        return await directory.resolve_alias(alias)

    async def put_alias(request: ApiRequest, version: str, alias: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await directory.create_alias(requester.user_id, alias, required(request.json_body(), "room_id", str))
        return {}

    async def delete_alias(request: ApiRequest, version: str, alias: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await directory.delete_alias(requester.user_id, alias)
        return {}

    async def room_aliases(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"aliases": await directory.aliases_for_room(requester.user_id, room_id)}

    async def get_visibility(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        return {"visibility": await directory.visibility(room_id)}

    async def put_visibility(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        visibility = required(request.json_body(), "visibility", str)
        await directory.set_visibility(requester.user_id, room_id, visibility)
        return {}

    async def public_rooms(request: ApiRequest, version: str) -> dict[str, Any]:
        server = request.query_param("server")
        include_all_networks = False
        third_party_instance_id = None
        if request.method == b"POST":
            body = request.json_body()
            limit = optional(body, "limit", int)
            since = optional(body, "since", str)
            search_filter = optional(body, "filter", dict)
            include_all_networks = optional(body, "include_all_networks", bool) or False
            third_party_instance_id = optional(body, "third_party_instance_id", str)
        else:
            limit = request.int_param("limit", None)
            since = request.query_param("since")
            search_filter = None
        return await directory.public_rooms_of(
            server, limit, since, search_filter, include_all_networks, third_party_instance_id
        )

    router.add("POST", f"{CLIENT}/createRoom", create_room)
    router.add("POST", f"{CLIENT}/join/{{room}}", join)
    router.add("POST", f"{ROOM}/join", join_by_id)
    router.add("POST", f"{CLIENT}/knock/{{room}}", knock)
    router.add("POST", f"{ROOM}/upgrade", upgrade)
    router.add("POST", f"{ROOM}/invite", invite)
    router.add("POST", f"{ROOM}/leave", leave)
    router.add("POST", f"{ROOM}/forget", forget)
    router.add("POST", f"{ROOM}/kick", _membership_action("kick"))
    router.add("POST", f"{ROOM}/ban", _membership_action("ban"))
    router.add("POST", f"{ROOM}/unban", _membership_action("unban"))
    router.add("GET", f"{CLIENT}/joined_rooms", joined_rooms)
    router.add("GET", f"{CLIENT}/directory/room/{{alias}}", get_alias)
    router.add("PUT", f"{CLIENT}/directory/room/{{alias}}", put_alias)
    router.add("DELETE", f"{CLIENT}/directory/room/{{alias}}", delete_alias)
    router.add("GET", f"{ROOM}/aliases", room_aliases)
    # MSC2432's path, still called by FluffyChat (advertised as org.matrix.msc2432).
    router.add(
        "GET", "/_matrix/client/{version:unstable}/org.matrix.msc2432/rooms/{room_id}/aliases", room_aliases
    )
    router.add("GET", f"{CLIENT}/directory/list/room/{{room_id}}", get_visibility)
    router.add("PUT", f"{CLIENT}/directory/list/room/{{room_id}}", put_visibility)
    router.add("GET", f"{CLIENT}/publicRooms", public_rooms)
    router.add("POST", f"{CLIENT}/publicRooms", public_rooms)
