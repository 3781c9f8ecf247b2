"""Server keys: ours (GET /_matrix/key/v2/server) and the notary (/_matrix/key/v2/query).

The spec requires no authentication on these: they are how a server learns the keys that
check every other request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.http import ApiRequest, Router
from homeserver.api.strict_json import loads_strict
from homeserver.core.federation.keys import check_server_name
from homeserver.errors import BadJson

if TYPE_CHECKING:
    from homeserver.server import HomeServer

KEY = "/_matrix/key/v2"
# A notary query naming the most servers it may (100), with criteria, is a few KiB.
MAX_KEY_QUERY_BODY = 64 * 1024


def register(router: Router, hs: "HomeServer") -> None:
    federation = hs.federation

    async def server_keys(request: ApiRequest) -> dict[str, Any]:
        federation.origin_limits.check_key_request(request.client_ip())
        return federation.own_keys.response()

    async def query(request: ApiRequest) -> dict[str, Any]:
        federation.origin_limits.check_key_request(request.client_ip())
        request.content.seek(0)
        body = loads_strict(request.content.read())
        if not isinstance(body, dict):
            raise BadJson("The body must be a JSON object")
        return await federation.notary.query(body)

    async def query_one(request: ApiRequest, server_name: str) -> dict[str, Any]:
        federation.origin_limits.check_key_request(request.client_ip())
        minimum = request.int_param("minimum_valid_until_ts", None)
        answers = await federation.notary.answers_for(check_server_name(server_name), minimum)
        return {"server_keys": answers}

    router.set_body_limit(f"{KEY}/", MAX_KEY_QUERY_BODY)
    router.add("GET", f"{KEY}/server", server_keys)
    router.add("POST", f"{KEY}/query", query)
    router.add("GET", f"{KEY}/query/{{server_name}}", query_one)
