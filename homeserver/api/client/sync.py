"""GET /sync and the stored filters it uses (spec: Client-Server API, Syncing; Filtering)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.core.filters import SyncFilter, validate_filter_definition
from homeserver.core.streams import SyncToken
from homeserver.core.sync import SyncRequest
from homeserver.errors import Forbidden, MatrixError, NotFound

if TYPE_CHECKING:
    from homeserver.server import HomeServer


FILTER_CACHE_SIZE = 10_000


def register(router: Router, hs: "HomeServer") -> None:
    # Filters never change once stored, and clients send the same one on every sync.
    parsed: OrderedDict[tuple[str, str], SyncFilter] = OrderedDict()

    async def load_filter(user_id: str, raw: str | None) -> SyncFilter:
        if raw is None:
            return SyncFilter()
        key = (user_id if raw.isdigit() else "", raw)
        cached = parsed.get(key)
        if cached is not None:
            return cached
        if raw.lstrip().startswith("{"):
            try:
                result = SyncFilter.parse(json.loads(raw))
            except ValueError:
                raise MatrixError("'filter' is not valid JSON", "M_BAD_JSON") from None
        elif not raw.isdigit():
            raise MatrixError("Unknown filter", "M_INVALID_PARAM")
        else:
            stored = await hs.storage.user_data.get_filter(user_id, int(raw))
            if stored is None:
                raise NotFound("Unknown filter")
            result = SyncFilter.parse(stored)
        parsed[key] = result
        if len(parsed) > FILTER_CACHE_SIZE:
            parsed.popitem(last=False)
        return result

    async def sync(request: ApiRequest, version: str) -> Response:
        requester = await require_user(hs, request)
        since = request.query_param("since")
        try:
            timeout = int(request.query_param("timeout", "0") or 0)
        except ValueError:
            raise MatrixError("'timeout' must be an integer", "M_INVALID_PARAM") from None
        set_presence = request.query_param("set_presence")
        if set_presence not in (None, "online", "offline", "unavailable"):
            raise MatrixError("Invalid set_presence", "M_INVALID_PARAM")
        req = SyncRequest(
            user_id=requester.user_id,
            device_id=requester.device_id,
            since=SyncToken.parse(since) if since else None,
            timeout_ms=timeout,
            filter=await load_filter(requester.user_id, request.query_param("filter")),
            full_state=request.query_param("full_state") == "true",
            set_presence=set_presence,
        )
        # A long-poll may wait minutes: it needs nothing more from the request's head.
        request.forget_head()
        body = await hs.sync.sync(req)
        return Response(body.encode("utf-8"), 200, b"application/json")

    async def create_filter(request: ApiRequest, version: str, user_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if requester.user_id != user_id:
            raise Forbidden("You may only create filters for yourself")
        definition = validate_filter_definition(request.json_body())
        return {"filter_id": str(await hs.storage.user_data.add_filter(user_id, definition))}

    async def get_filter(request: ApiRequest, version: str, user_id: str, filter_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if requester.user_id != user_id:
            raise Forbidden("You may only read your own filters")
        stored = (
            await hs.storage.user_data.get_filter(user_id, int(filter_id)) if filter_id.isdigit() else None
        )
        if stored is None:
            raise NotFound("Unknown filter")
        return stored

    router.add("GET", f"{CLIENT}/sync", sync)
    router.add("POST", f"{CLIENT}/user/{{user_id}}/filter", create_filter)
    router.add("GET", f"{CLIENT}/user/{{user_id}}/filter/{{filter_id}}", get_filter)
