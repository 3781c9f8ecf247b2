"""The WebSocket stream's path, its plain-HTTP answer, and the upgrade that loads it.

Autobahn (api/ws.py) takes a tenth of a second or more to import: the stream's module is
loaded by the first upgrade, not at start-up, so a restarted server answers sooner
(docs/operations.md, "Start-up").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from homeserver.api.http import ApiRequest, Response, Router

if TYPE_CHECKING:
    from homeserver.api.ws import StreamFactory

WS_PATH = b"/_homeserver/ws"


def add_upgrade_required_route(router: Router) -> None:
    """A plain GET of WS_PATH (no WebSocket upgrade) gets a Matrix-shaped 426."""

    async def upgrade_required(request: ApiRequest) -> Response:
        return Response(
            {"errcode": "M_UNRECOGNIZED", "error": "This endpoint only speaks WebSocket (docs/api.md)"},
            426,
            headers=((b"Upgrade", b"websocket"),),
        )

    router.add("GET", WS_PATH.decode(), upgrade_required)


class LazyUpgrade:
    """What the HTTP server hands an upgrade of WS_PATH to: the stream factory, made on the
    first upgrade by `make()`."""

    def __init__(self, make: Callable[[], StreamFactory]) -> None:
        self._make = make

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - twisted's name
        return self._make().buildProtocol(addr)
