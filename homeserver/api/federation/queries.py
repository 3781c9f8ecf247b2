"""GET /_matrix/federation/v1/version, /query/profile, /query/directory, /publicRooms, and
/.well-known/matrix/server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.federation.auth import FEDERATION, require_origin
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional
from homeserver.errors import InvalidParam, NotFound

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    federation = hs.federation

    async def version(request: ApiRequest) -> dict[str, Any]:
        # The spec asks no signature here; one that is sent is still checked.
        if request.getHeader(b"authorization") is not None:
            await require_origin(hs, request)
        return federation.version()

    async def profile(request: ApiRequest) -> dict[str, Any]:
        await require_origin(hs, request)
        return await federation.profiles.answer(request.query_param("user_id"), request.query_param("field"))

    async def directory(request: ApiRequest) -> dict[str, Any]:
        await require_origin(hs, request)
        return await federation.directory.answer_alias(request.query_param("room_alias"))

    async def public_rooms(request: ApiRequest) -> dict[str, Any]:
        await require_origin(hs, request)
        if request.method == b"POST":
            body = request.json_body()
            search_filter = optional(body, "filter", dict) or {}
            term = optional(search_filter, "generic_search_term", str)
            return await federation.directory.answer_public_rooms(
                optional(body, "limit", int),
                optional(body, "since", str),
                term,
                search_filter.get("room_types"),
                optional(body, "include_all_networks", bool) or False,
                optional(body, "third_party_instance_id", str),
            )
        return await federation.directory.answer_public_rooms(
            request.int_param("limit", None),
            request.query_param("since"),
            None,
            None,
            _bool_param(request, "include_all_networks"),
            request.query_param("third_party_instance_id"),
        )

    async def well_known(request: ApiRequest) -> dict[str, Any]:
        answer = federation.well_known()
        if answer is None:
            raise NotFound("No server delegation is configured")
        return answer

    # Checked as the body arrives, before the signature: 413 M_TOO_LARGE, the rest unread.
    router.set_body_limit(f"{FEDERATION}/", federation.config.max_request_body_size)
    router.set_body_limit(f"{FEDERATION}/v1/send/", federation.config.max_transaction_size)
    router.add("GET", f"{FEDERATION}/v1/version", version)
    router.add("GET", f"{FEDERATION}/v1/query/profile", profile)
    router.add("GET", f"{FEDERATION}/v1/query/directory", directory)
    router.add("GET", f"{FEDERATION}/v1/publicRooms", public_rooms)
    router.add("POST", f"{FEDERATION}/v1/publicRooms", public_rooms)
    router.add("GET", "/.well-known/matrix/server", well_known)


def _bool_param(request: ApiRequest, name: str) -> bool:
    value = request.query_param(name)
    if value in (None, "", "false"):
        return False
    if value == "true":
        return True
    raise InvalidParam(f"'{name}' must be true or false")
