"""A remote server's media answer may be a redirect (`Location`: media moved to a CDN). We
follow it, but every hop goes through federation's address filter: a server cannot use a
redirect to make ours fetch from a loopback or private address it may not reach."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from signedjson.key import generate_signing_key
from twisted.internet import reactor as _reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from homeserver.config import FederationConfig
from homeserver.core.clock import Clock
from homeserver.core.federation.client import FederationClient
from homeserver.errors import RemoteServerError

reactor: Any = _reactor


class _Counting(Resource):
    """Answers every GET with a small file, counting them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 - twisted's name
        self.hits += 1
        request.setHeader(b"content-type", b"text/plain")
        return b"the file"


class _Redirecting(Resource):
    isLeaf = True

    def __init__(self, to: str) -> None:
        super().__init__()
        self.to = to

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 - twisted's name
        request.redirect(self.to.encode())
        return b""


@pytest.fixture
def hosts() -> Any:
    """A file on 127.0.0.2 and, on 127.0.0.1, a redirect to it."""
    target = _Counting()
    target_port = reactor.listenTCP(0, Site(target), interface="127.0.0.2")
    url = f"http://127.0.0.2:{target_port.getHost().port}/file"
    redirect_port = reactor.listenTCP(0, Site(_Redirecting(url)), interface="127.0.0.1")
    yield target, url, f"http://127.0.0.1:{redirect_port.getHost().port}/moved"
    target_port.stopListening()
    redirect_port.stopListening()


def _client(whitelist: list[str]) -> FederationClient:
    return FederationClient(
        reactor,
        Clock(reactor),
        "tester.example",
        generate_signing_key("t"),
        FederationConfig(ip_range_whitelist=whitelist),
    )


@pytest_twisted.ensureDeferred
async def test_a_redirect_to_a_blocked_address_is_not_followed(hosts: Any) -> None:
    target, _, moved = hosts
    # 127.0.0.1 may be reached (as a server on the same host in tests), 127.0.0.2 may not.
    client = _client(["127.0.0.1/32"])
    with pytest.raises(RemoteServerError):
        await client.get_url(moved, 1024)
    assert target.hits == 0


@pytest_twisted.ensureDeferred
async def test_a_blocked_location_is_not_fetched(hosts: Any) -> None:
    target, url, _ = hosts
    client = _client([])  # the default: no loopback at all
    with pytest.raises(RemoteServerError):
        await client.get_url(url, 1024)
    assert target.hits == 0


@pytest_twisted.ensureDeferred
async def test_an_allowed_redirect_is_followed(hosts: Any) -> None:
    """The same redirect, both addresses allowed: the file arrives (so the refusals above
    are the filter's doing)."""
    target, _, moved = hosts
    client = _client(["127.0.0.0/8"])
    status, content_type, _, body = await client.get_url(moved, 1024)
    assert (status, content_type, body) == (200, "text/plain", b"the file")
    assert target.hits == 1
