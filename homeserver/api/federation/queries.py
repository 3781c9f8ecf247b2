"""GET /_matrix/federation/v1/version and /query/profile, and /.well-known/matrix/server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.federation.auth import FEDERATION, require_origin
from homeserver.api.http import ApiRequest, Router
from homeserver.errors import NotFound

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
    router.add("GET", "/.well-known/matrix/server", well_known)
