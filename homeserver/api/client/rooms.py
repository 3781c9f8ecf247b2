"""Rooms: createRoom, membership, joined rooms, aliases and the public directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.rooms import check_user_id
from homeserver.errors import Forbidden, MatrixError, NotFound
from homeserver.storage.rooms import AliasExists

if TYPE_CHECKING:
    from homeserver.server import HomeServer

ROOM = f"{CLIENT}/rooms/{{room_id}}"


def _reason(body: dict[str, Any]) -> str | None:
    return optional(body, "reason", str)


def register(router: Router, hs: "HomeServer") -> None:
    rooms = hs.rooms

    async def create_room(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = await rooms.create_room(requester.user_id, request.json_body())
        return {"room_id": room_id}

    async def join(request: ApiRequest, version: str, room: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = await rooms.join(requester.user_id, room)
        return {"room_id": room_id}

    async def join_by_id(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rooms.join(requester.user_id, room_id)
        return {"room_id": room_id}

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
        room_id = await hs.storage.rooms.room_for_alias(alias)
        if room_id is None:
            raise NotFound("Room alias not found")
        return {"room_id": room_id, "servers": [hs.config.server_name]}

    async def put_alias(request: ApiRequest, version: str, alias: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = required(request.json_body(), "room_id", str)
        if not alias.startswith("#") or not alias.endswith(":" + hs.config.server_name) or len(alias) > 255:
            raise MatrixError("Aliases must be #name:" + hs.config.server_name, "M_INVALID_PARAM")
        await rooms.access_room_as_member(requester.user_id, room_id)
        try:
            await hs.storage.rooms.create_alias(alias, room_id, requester.user_id)
        except AliasExists:
            raise MatrixError("Room alias already exists", "M_UNKNOWN", status=409) from None
        return {}

    async def delete_alias(request: ApiRequest, version: str, alias: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        room_id = await hs.storage.rooms.room_for_alias(alias)
        if room_id is None:
            raise NotFound("Room alias not found")
        creator = await hs.storage.rooms.alias_creator(alias)
        head = await rooms.head(room_id)
        if creator != requester.user_id and not rooms.may(
            requester.user_id, head, "state", event_type="m.room.canonical_alias"
        ):
            raise Forbidden("You may not remove this alias")
        await hs.storage.rooms.delete_alias(alias)
        return {}

    async def room_aliases(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rooms.access_room_as_member(requester.user_id, room_id)
        return {"aliases": await hs.storage.rooms.aliases_for_room(room_id)}

    async def get_visibility(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        await rooms.head(room_id)
        return {"visibility": await hs.storage.rooms.get_visibility(room_id)}

    async def put_visibility(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        visibility = required(request.json_body(), "visibility", str)
        if visibility not in ("public", "private"):
            raise MatrixError("'visibility' must be public or private", "M_INVALID_PARAM")
        head = await rooms.access_room_as_member(requester.user_id, room_id)
        if not rooms.may(requester.user_id, head, "state", event_type="m.room.canonical_alias"):
            raise Forbidden("You may not change this room's visibility")
        await hs.storage.rooms.set_visibility(room_id, visibility)
        return {}

    async def public_rooms(request: ApiRequest, version: str) -> dict[str, Any]:
        if request.method == b"POST":
            body = request.json_body()
            limit = optional(body, "limit", int, 100) or 100
            since = optional(body, "since", str)
            term = ((body.get("filter") or {}).get("generic_search_term") or "").lower()
        else:
            limit = int(request.query_param("limit", "100") or 100)
            since = request.query_param("since")
            term = ""
        entries = []
        for room_id in await hs.storage.rooms.public_rooms():
            head = await hs.room_heads.get(room_id)
            if head is None:
                continue
            entry: dict[str, Any] = {
                "room_id": room_id,
                "num_joined_members": len(head.members("join")),
                "world_readable": head.content("m.room.history_visibility").get("history_visibility")
                == "world_readable",
                "guest_can_join": head.content("m.room.guest_access").get("guest_access") == "can_join",
                "join_rule": head.content("m.room.join_rules").get("join_rule", "invite"),
            }
            for key, event_type, field in (
                ("name", "m.room.name", "name"),
                ("topic", "m.room.topic", "topic"),
                ("canonical_alias", "m.room.canonical_alias", "alias"),
                ("avatar_url", "m.room.avatar", "url"),
            ):
                value = head.content(event_type).get(field)
                if isinstance(value, str):
                    entry[key] = value
            text = " ".join(str(entry.get(k, "")) for k in ("name", "topic", "canonical_alias")).lower()
            if term and term not in text:
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        start = int(since[1:]) if since and since.startswith("n") and since[1:].isdigit() else 0
        limit = max(1, min(limit, 500))
        page = entries[start : start + limit]
        response: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(entries)}
        if start + limit < len(entries):
            response["next_batch"] = f"n{start + limit}"
        if start > 0:
            response["prev_batch"] = f"n{max(0, start - limit)}"
        return response

    router.add("POST", f"{CLIENT}/createRoom", create_room)
    router.add("POST", f"{CLIENT}/join/{{room}}", join)
    router.add("POST", f"{ROOM}/join", join_by_id)
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
    router.add("GET", f"{CLIENT}/directory/list/room/{{room_id}}", get_visibility)
    router.add("PUT", f"{CLIENT}/directory/list/room/{{room_id}}", put_visibility)
    router.add("GET", f"{CLIENT}/publicRooms", public_rooms)
    router.add("POST", f"{CLIENT}/publicRooms", public_rooms)
