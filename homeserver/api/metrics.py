"""Serving the Prometheus metrics: GET /metrics on the metrics listener, and
GET /_homeserver/metrics on the main listener for a scraper holding the bearer secret."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from homeserver.api.http import ApiRequest, Response, Router
from homeserver.errors import MissingToken, UnknownToken
from homeserver.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from homeserver.server import HomeServer

LISTENER_PATH = "/metrics"
MAIN_LISTENER_PATH = "/_homeserver/metrics"
_CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


def metrics_router(hs: HomeServer) -> Router:
    """The metrics listener's routes: only GET /metrics (the listener is loopback unless the
    operator says otherwise, so it asks for no credential)."""
    router = Router()
    router.access_log = False

    async def scrape(request: ApiRequest) -> Response:
        return Response(hs.server_metrics.render(), content_type=_CONTENT_TYPE)

    router.add("GET", LISTENER_PATH, scrape)
    return router


def register(router: Router, hs: HomeServer) -> None:
    """GET /_homeserver/metrics, only when `metrics.bearer_secret` is set (else it is 404)."""
    secret = hs.config.metrics.bearer_secret.encode()
    if not secret:
        return

    async def scrape(request: ApiRequest) -> Response:
        token = request.bearer_token()
        if token is None:
            raise MissingToken("Missing bearer secret")
        if not hmac.compare_digest(token.encode(), secret):
            raise UnknownToken("Wrong bearer secret")
        return Response(hs.server_metrics.render(), content_type=_CONTENT_TYPE)

    router.add("GET", MAIN_LISTENER_PATH, scrape)
