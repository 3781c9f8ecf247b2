"""GET /sync and the stored filters it uses (spec: Client-Server API, Syncing; Filtering)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.core.streams import SyncToken
from homeserver.core.sync import SyncRequest
from homeserver.errors import MatrixError

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def sync(request: ApiRequest, version: str) -> Response:
        requester = await require_user(hs, request)
        since = request.query_param("since")
        set_presence = request.query_param("set_presence")
        if set_presence not in (None, "online", "offline", "unavailable"):
            raise MatrixError("Invalid set_presence", "M_INVALID_PARAM")
        req = SyncRequest(
            user_id=requester.user_id,
            device_id=requester.device_id,
            since=SyncToken.parse(since) if since else None,
            timeout_ms=request.int_param("timeout", 0),
            filter=await hs.filters.for_sync(requester.user_id, request.query_param("filter")),
            full_state=request.query_param("full_state") == "true",
            set_presence=set_presence,
        )
        # A long-poll may wait minutes: it needs nothing more from the request's head.
        request.forget_head()
        body = await hs.sync.sync(req)
        return Response(body.encode("utf-8"), 200, b"application/json")

    async def create_filter(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"filter_id": await hs.filters.create(requester.user_id, user_id, request.json_body())}

    async def get_filter(request: ApiRequest, version: str, user_id: str, filter_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.filters.get(requester.user_id, user_id, filter_id)

    router.add("GET", f"{CLIENT}/sync", sync)
    router.add("POST", f"{CLIENT}/user/{{user_id}}/filter", create_filter)
    router.add("GET", f"{CLIENT}/user/{{user_id}}/filter/{{filter_id}}", get_filter)
