"""The simple API's messages, chats and groups (docs/api.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import optional, required
from homeserver.errors import BadJson, MissingParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    chats = hs.chats

    async def send(request: ApiRequest) -> Response:
        requester = await require_user(hs, request)
        body = request.json_body()
        if "content" not in body:
            raise MissingParam("Missing 'content'")
        event = await chats.send(
            requester.user_id,
            requester.device_id,
            optional(body, "chatId", str),
            optional(body, "receiverId", str),
            body["content"],
            optional(body, "clientMessageId", str),
            # A simple-API client sends plaintext: its chats are encrypted only when it says it can.
            optional(body, "encrypted", bool, False),
            claimed_sender=optional(body, "senderId", str),
        )
        return Response(
            {
                "messageId": event.event_id,
                "chatId": event.room_id,
                "status": "sent",
                "timestamp": event.origin_server_ts,
            },
            201,
        )

    async def list_messages(request: ApiRequest, chat_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        limit = request.int_param("limit", 50)
        return await chats.message_list(requester.user_id, chat_id, request.query_param("before"), limit)

    async def message_status(request: ApiRequest, chat_id: str, message_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await chats.message_status(requester.user_id, chat_id, message_id)

    async def list_chats(request: ApiRequest) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"chats": await chats.chat_list(requester.user_id)}

    async def create_group(request: ApiRequest) -> Response:
        requester = await require_user(hs, request)
        body = request.json_body()
        members = optional(body, "members", list, []) or []
        if not all(isinstance(m, str) for m in members):
            raise BadJson("'members' must be a list of user ids")
        chat_id = await chats.create_group(
            requester.user_id, required(body, "name", str), members, optional(body, "encrypted", bool, False)
        )
        return Response({"chatId": chat_id}, 201)

    async def add_member(request: ApiRequest, chat_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await chats.add_member(requester.user_id, chat_id, required(request.json_body(), "userId", str))
        return {}

    async def remove_member(request: ApiRequest, chat_id: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await chats.remove_member(requester.user_id, chat_id, user_id)
        return {}

    router.add("POST", "/api/messages/send", send)
    router.add("GET", "/api/messages/{chat_id}", list_messages)
    router.add("GET", "/api/messages/{chat_id}/{message_id}/status", message_status)
    router.add("GET", "/api/chats", list_chats)
    router.add("POST", "/api/groups", create_group)
    router.add("POST", "/api/groups/{chat_id}/members", add_member)
    router.add("DELETE", "/api/groups/{chat_id}/members/{user_id}", remove_member)
