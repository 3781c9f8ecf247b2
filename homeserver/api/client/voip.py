"""Calls and bridges asked about at start-up: /voip/turnServer, /thirdparty/protocols."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    async def turn_server(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.voip.turn_server(requester.user_id)

    async def thirdparty_protocols(request: ApiRequest, version: str) -> dict[str, Any]:
        # No application services (bridges) here, so no third-party protocols.
        await require_user(hs, request)
        return {}

    router.add("GET", f"{CLIENT}/voip/turnServer", turn_server)
    router.add("GET", f"{CLIENT}/thirdparty/protocols", thirdparty_protocols)
