"""GET /health: whether this process takes new requests, for a load balancer's checks.

200 while it serves; 503 once it is shutting down (SIGTERM), during the drain delay in
which it still answers what arrives, so the balancer sends new requests elsewhere before
the listener closes (docs/architecture.md, "Past one process")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.api.http import ApiRequest, Response, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer

HEALTH_PATH = "/health"


def register(router: Router, hs: HomeServer) -> None:
    async def health(request: ApiRequest) -> Response:
        if hs.draining:
            return Response({"errcode": "M_UNKNOWN", "error": "Shutting down", "status": "draining"}, 503)
        return Response({"status": "ok", "instance": hs.topology.me})

    router.add("GET", HEALTH_PATH, health)
