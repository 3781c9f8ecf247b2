"""The X-Matrix check every federation route makes before anything else."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from homeserver.api.http import ApiRequest
from homeserver.errors import NotJson

if TYPE_CHECKING:
    from homeserver.server import HomeServer

FEDERATION = "/_matrix/federation"


async def require_origin(hs: "HomeServer", request: ApiRequest) -> str:
    """The origin server of a correctly signed request, else 401 M_UNAUTHORIZED."""
    content = None
    if request.method in (b"POST", b"PUT"):
        request.content.seek(0)
        raw = request.content.read()
        if raw.strip():
            try:
                content = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise NotJson("Content not JSON.") from None
    header = request.getHeader(b"authorization")
    return await hs.federation.authenticator.origin_of(
        request.method.decode("ascii"),
        request.uri.decode("utf-8", "replace"),
        header.decode("latin-1") if header is not None else None,
        content,
    )
