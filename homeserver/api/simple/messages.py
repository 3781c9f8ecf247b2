"""The simple API's messages, chats and groups (docs/api.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import optional, required
from homeserver.core.iso_time import iso_time
from homeserver.errors import BadJson, MissingParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def next_page_link(base_url: str, chat_id: str, before: str, limit: int | None) -> bytes:
    """RFC 8288 `Link` to the next (older) page, absolute so a client can follow it as it is."""
    query = {"before": before} if limit is None else {"before": before, "limit": str(limit)}
    url = f"{base_url}/api/messages/{quote(chat_id, safe='')}?{urlencode(query)}"
    return f'<{url}>; rel="next"'.encode()


def register(router: Router, hs: "HomeServer") -> None:
    chats = hs.chats
    base_url = hs.config.base_url

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
                "timestamp": iso_time(event.origin_server_ts),
                "timestampMs": event.origin_server_ts,
            },
            201,
        )

    async def list_messages(request: ApiRequest, chat_id: str) -> Response:
        requester = await require_user(hs, request)
        limit = request.int_param("limit", None)
        page = await chats.message_list(
            requester.user_id, chat_id, request.query_param("before"), 50 if limit is None else limit
        )
        headers = (
            () if page.before is None else ((b"Link", next_page_link(base_url, chat_id, page.before, limit)),)
        )
        return Response(page.messages, headers=headers)

    async def edit_message(request: ApiRequest, chat_id: str, message_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        if "content" not in body:
            raise MissingParam("Missing 'content'")
        edit = await chats.edit_message(requester.user_id, chat_id, message_id, body["content"])
        return {
            "messageId": message_id,
            "chatId": chat_id,
            "editId": edit.event_id,
            "editedAt": iso_time(edit.origin_server_ts),
        }

    async def delete_message(request: ApiRequest, chat_id: str, message_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await chats.delete_message(requester.user_id, requester.device_id, chat_id, message_id)
        return {}

    async def mark_read(request: ApiRequest, chat_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        message_id = optional(request.json_body_or_empty(), "messageId", str)
        read = await chats.mark_read(requester.user_id, chat_id, message_id)
        return {"chatId": chat_id, "messageId": read}

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

    async def rename_group(request: ApiRequest, chat_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await chats.rename_group(requester.user_id, chat_id, required(request.json_body(), "name", str))
        return {}

    async def leave_chat(request: ApiRequest, chat_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await chats.leave_chat(requester.user_id, chat_id)
        return {}

    router.add("POST", "/api/messages/send", send)
    router.add("GET", "/api/messages/{chat_id}", list_messages)
    router.add("PUT", "/api/messages/{chat_id}/{message_id}", edit_message)
    router.add("DELETE", "/api/messages/{chat_id}/{message_id}", delete_message)
    router.add("POST", "/api/messages/{chat_id}/read", mark_read)
    router.add("GET", "/api/messages/{chat_id}/{message_id}/status", message_status)
    router.add("GET", "/api/chats", list_chats)
    router.add("POST", "/api/groups", create_group)
    router.add("POST", "/api/groups/{chat_id}/members", add_member)
    router.add("DELETE", "/api/groups/{chat_id}/members/{user_id}", remove_member)
    router.add("PUT", "/api/groups/{chat_id}/name", rename_group)
    router.add("POST", "/api/groups/{chat_id}/leave", leave_chat)
