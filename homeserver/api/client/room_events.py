"""Room events: send, state, redact, read (event, context, messages, relations, members),
receipts, read markers and typing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.rooms import ROOM
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.filters import EventFilter, SyncFilter
from homeserver.core.txn_ids import scoped_txn_id
from homeserver.errors import MatrixError, MissingParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_TXN_ID = 255


def register(router: Router, hs: "HomeServer") -> None:
    async def send(
        request: ApiRequest, version: str, room_id: str, event_type: str, txn_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if len(txn_id) > MAX_TXN_ID:
            raise MatrixError("txnId is too long", "M_INVALID_PARAM")
        content = request.json_body()
        event = await hs.events.send(
            requester.user_id,
            room_id,
            event_type,
            content,
            txn=(requester.device_id, scoped_txn_id(f"send/{room_id}/{event_type}", txn_id)),
            rate_limited=True,
        )
        return {"event_id": event.event_id}

    async def put_state(
        request: ApiRequest, version: str, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        content = request.json_body()
        event = await hs.rooms.send_state(requester.user_id, room_id, event_type, state_key, content)
        return {"event_id": event.event_id}

    async def get_state_event(
        request: ApiRequest, version: str, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.messages.state_event(requester.user_id, room_id, event_type, state_key)

    async def get_state(request: ApiRequest, version: str, room_id: str) -> list[dict[str, Any]]:
        requester = await require_user(hs, request)
        return await hs.messages.state(requester.user_id, room_id)

    async def redact(
        request: ApiRequest, version: str, room_id: str, event_id: str, txn_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if len(txn_id) > MAX_TXN_ID:
            raise MatrixError("txnId is too long", "M_INVALID_PARAM")
        reason = optional(request.json_body(), "reason", str)
        event = await hs.rooms.redact(
            requester.user_id, requester.device_id, room_id, event_id, reason, txn_id
        )
        return {"event_id": event.event_id}

    async def get_event(request: ApiRequest, version: str, room_id: str, event_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.messages.get_event(requester.user_id, room_id, event_id)

    async def context(request: ApiRequest, version: str, room_id: str, event_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.messages.context(requester.user_id, room_id, event_id, request.int_param("limit", 10))

    async def messages(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        raw_filter = request.json_param("filter")
        parsed = (
            SyncFilter.parse({"room": {"timeline": raw_filter, "state": raw_filter}}) if raw_filter else None
        )
        return await hs.messages.messages(
            requester.user_id,
            room_id,
            request.query_param("from"),
            request.query_param("dir", "b") or "b",
            request.int_param("limit", 10),
            request.query_param("to"),
            parsed.timeline if parsed else EventFilter(),
            bool(raw_filter and isinstance(raw_filter, dict) and raw_filter.get("lazy_load_members")),
        )

    async def timestamp_to_event(request: ApiRequest, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        ts = request.int_param("ts", None)
        if ts is None:
            raise MissingParam("Missing 'ts'")
        direction = request.query_param("dir")
        if direction is None:
            raise MissingParam("Missing 'dir'")
        return await hs.messages.timestamp_to_event(requester.user_id, room_id, ts, direction)

    async def relations(
        request: ApiRequest,
        room_id: str,
        event_id: str,
        rel_type: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.messages.relations(
            requester.user_id,
            room_id,
            event_id,
            rel_type,
            event_type,
            request.query_param("from"),
            request.query_param("dir", "b") or "b",
            request.int_param("limit", 50),
        )

    async def members(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        chunk = await hs.messages.members(
            requester.user_id,
            room_id,
            request.query_param("membership"),
            request.query_param("not_membership"),
        )
        return {"chunk": chunk}

    async def joined_members(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"joined": await hs.rooms.joined_members(requester.user_id, room_id)}

    async def receipt(
        request: ApiRequest, version: str, room_id: str, receipt_type: str, event_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body_or_empty()
        await hs.receipts.set_receipt(
            requester.user_id, room_id, receipt_type, event_id, body.get("thread_id")
        )
        return {}

    async def read_markers(request: ApiRequest, version: str, room_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await hs.receipts.set_read_markers(requester.user_id, room_id, request.json_body())
        return {}

    async def typing(request: ApiRequest, version: str, room_id: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        is_typing = required(body, "typing", bool)
        timeout = optional(body, "timeout", int, 30_000) or 30_000
        await hs.typing.set_by_client(requester.user_id, room_id, user_id, is_typing, timeout)
        return {}

    router.add("PUT", f"{ROOM}/send/{{event_type}}/{{txn_id}}", send)
    router.add("PUT", f"{ROOM}/state/{{event_type}}", put_state)
    router.add("PUT", f"{ROOM}/state/{{event_type}}/{{state_key:.*}}", put_state)
    router.add("GET", f"{ROOM}/state/{{event_type}}", get_state_event)
    router.add("GET", f"{ROOM}/state/{{event_type}}/{{state_key:.*}}", get_state_event)
    router.add("GET", f"{ROOM}/state", get_state)
    router.add("PUT", f"{ROOM}/redact/{{event_id}}/{{txn_id}}", redact)
    router.add("GET", f"{ROOM}/event/{{event_id}}", get_event)
    router.add("GET", f"{ROOM}/context/{{event_id}}", context)
    router.add("GET", f"{ROOM}/messages", messages)
    # v1, and MSC2675's unstable path that older clients used before v1.3.
    for relations_base in (
        "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}",
        "/_matrix/client/unstable/rooms/{room_id}/relations/{event_id}",
    ):
        router.add("GET", relations_base, relations)
        router.add("GET", relations_base + "/{rel_type}", relations)
        router.add("GET", relations_base + "/{rel_type}/{event_type}", relations)
    router.add("GET", "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", timestamp_to_event)
    router.add("GET", f"{ROOM}/members", members)
    router.add("GET", f"{ROOM}/joined_members", joined_members)
    router.add("POST", f"{ROOM}/receipt/{{receipt_type}}/{{event_id}}", receipt)
    router.add("POST", f"{ROOM}/read_markers", read_markers)
    router.add("PUT", f"{ROOM}/typing/{{user_id}}", typing)
