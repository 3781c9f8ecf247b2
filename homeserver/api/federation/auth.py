"""The X-Matrix check every federation route makes before anything else, and the limits
on each origin server's requests that follow it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.api.http import ApiRequest
from homeserver.api.strict_json import loads_strict

if TYPE_CHECKING:
    from homeserver.server import HomeServer

FEDERATION = "/_matrix/federation"


async def require_origin(hs: "HomeServer", request: ApiRequest) -> str:
    """The origin server of a correctly signed request, else 401 M_UNAUTHORIZED; 429
    M_LIMIT_EXCEEDED when that origin is over its limits. The origin's slot is freed
    when the request is answered."""
    content = None
    if request.method in (b"POST", b"PUT"):
        request.content.seek(0)
        raw = request.content.read()
        if raw.strip():
            content = loads_strict(raw)
    header = request.getHeader(b"authorization")
    origin, release = await hs.federation.admit(
        request.method.decode("ascii"),
        request.uri.decode("utf-8", "replace"),
        header.decode("latin-1") if header is not None else None,
        content,
    )
    request.when_done(release)
    # A server that calls us is up: if we were backing off from it, send to it now.
    hs.federation_sender.remote_is_up(origin)
    return origin
