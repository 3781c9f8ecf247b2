"""Transactions and event retrieval over federation: PUT /v1/send/{txnId}, GET /v1/event,
/v1/state, /v1/state_ids, /v1/event_auth, /v1/backfill, POST /v1/get_missing_events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.federation.auth import FEDERATION, require_origin
from homeserver.api.http import ApiRequest, Router
from homeserver.errors import InvalidParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer

V1 = f"{FEDERATION}/v1"


def register(router: Router, hs: "HomeServer") -> None:
    async def send(request: ApiRequest, txn_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation_transactions.receive(origin, txn_id, request.json_body())

    async def event(request: ApiRequest, event_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation_event_server.event(origin, event_id)

    async def state(request: ApiRequest, room_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation_event_server.state(origin, room_id, request.query_param("event_id"))

    async def state_ids(request: ApiRequest, room_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation_event_server.state_ids(origin, room_id, request.query_param("event_id"))

    async def event_auth(request: ApiRequest, room_id: str, event_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation_event_server.event_auth(origin, room_id, event_id)

    async def missing_events(request: ApiRequest, room_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        return await hs.federation_event_server.missing_events(origin, room_id, request.json_body())

    async def backfill(request: ApiRequest, room_id: str) -> dict[str, Any]:
        origin = await require_origin(hs, request)
        starts = [v.decode("utf-8", "replace") for v in request.args.get(b"v", [])]
        if not starts or len(starts) > 20:
            raise InvalidParam("'v' must name 1 to 20 event IDs")
        limit = request.int_param("limit", 10)
        return await hs.federation_event_server.backfill(origin, room_id, starts, limit)

    router.add("PUT", f"{V1}/send/{{txn_id}}", send)
    router.add("GET", f"{V1}/event/{{event_id}}", event)
    router.add("GET", f"{V1}/state/{{room_id}}", state)
    router.add("GET", f"{V1}/state_ids/{{room_id}}", state_ids)
    router.add("GET", f"{V1}/event_auth/{{room_id}}/{{event_id}}", event_auth)
    router.add("POST", f"{V1}/get_missing_events/{{room_id}}", missing_events)
    router.add("GET", f"{V1}/backfill/{{room_id}}", backfill)
