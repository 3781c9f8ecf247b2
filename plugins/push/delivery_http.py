"""POST one notification to a push gateway, and what its answer means.

Outgoing requests go through treq on an Agent whose name resolver drops every address
the server's policy refuses (`api.push_address_allowed`: by default anything but public
unicast). The connection is made to an address that was checked, in the same resolution,
so a host name that resolves to a public address when the pusher is set and to a private
one later (DNS rebinding) reaches nothing. A URL with a literal address is checked before
any connection too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver, IResolutionReceiver
from zope.interface import implementer

MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Sent:
    """2xx: delivered; `rejected` are the pushkeys the gateway says are dead."""

    rejected: tuple[str, ...]


@dataclass(frozen=True)
class TryAgain:
    """The gateway could not be reached, timed out, or answered 5xx, 408 or 429."""

    reason: str


@dataclass(frozen=True)
class Refused:
    """No point trying again: the address is not allowed, or the gateway answered another 4xx."""

    reason: str


Outcome = Sent | TryAgain | Refused


class _AnswerTooLarge(Exception):
    pass


@implementer(IResolutionReceiver)
class _Filtered:
    """Passes on the resolution, less the addresses the policy refuses."""

    def __init__(self, receiver: Any, host: str, resolver: "PolicyResolver") -> None:
        self._receiver = receiver
        self._host = host
        self._resolver = resolver

    def resolutionBegan(self, resolution: Any) -> None:  # noqa: N802 - Twisted's interface
        self._receiver.resolutionBegan(resolution)

    def addressResolved(self, address: Any) -> None:  # noqa: N802
        if self._resolver.allowed(address.host):
            self._receiver.addressResolved(address)
        else:
            self._resolver.refused_hosts.add(self._host)

    def resolutionComplete(self) -> None:  # noqa: N802
        self._receiver.resolutionComplete()


@implementer(IHostnameResolver)
class PolicyResolver:
    """A name resolver that passes on only the addresses `allowed` accepts, and remembers the
    host names that resolved to refused ones (to tell "refused" from "unreachable")."""

    def __init__(self, resolver: Any, allowed: Callable[[str], bool]) -> None:
        self._resolver = resolver
        self.allowed = allowed
        self.refused_hosts: set[str] = set()

    def resolveHostName(  # noqa: N802 - Twisted's interface
        self,
        resolutionReceiver: Any,  # noqa: N803
        hostName: str,  # noqa: N803
        portNumber: int = 0,  # noqa: N803
        addressTypes: Any = None,  # noqa: N803
        transportSemantics: str = "TCP",  # noqa: N803
    ) -> Any:
        receiver = _Filtered(resolutionReceiver, hostName, self)
        return self._resolver.resolveHostName(
            receiver, hostName, portNumber, addressTypes, transportSemantics
        )


@implementer(IReactorPluggableNameResolver)
class _ResolvingReactor:
    """The reactor, with `nameResolver` replaced: what HostnameEndpoint resolves through."""

    def __init__(self, reactor: Any, resolver: Any) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: Any) -> Any:  # noqa: N802
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class GatewayClient:
    """POSTs to push gateways: at most `max_concurrent` at once, each bounded by `timeout_s`
    on the server's clock."""

    def __init__(
        self, reactor: Any, clock: Any, allowed: Callable[[str], bool], timeout_s: float, max_concurrent: int
    ) -> None:
        self._clock = clock
        self._allowed = allowed
        self._timeout_s = timeout_s
        self._slots = DeferredSemaphore(max_concurrent)
        self._reactor = reactor
        self._max_concurrent = max_concurrent
        self.resolver = PolicyResolver(reactor.nameResolver, allowed)
        # Made by the first push: treq and twisted.web.client take a tenth of a second to
        # import, which every start would pay before it answers (issue 16's start-up time).
        self._pool: Any = None
        self._http: Any = None

    def _client(self) -> Any:
        if self._http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(self._reactor, persistent=True)
            self._pool.maxPersistentPerHost = self._max_concurrent
            agent: Any = Agent(
                _ResolvingReactor(self._reactor, self.resolver),
                connectTimeout=self._timeout_s,
                pool=self._pool,
            )
            self._http = HTTPClient(agent)
        return self._http

    async def post(self, url: str, body: dict[str, Any]) -> Outcome:
        host = urlsplit(url).hostname or ""
        literal = _literal(host)
        if literal is not None and not self._allowed(literal):
            return Refused(f"{host} is not an allowed address")
        await self._slots.acquire()
        try:
            return await self._post(url, host, json.dumps(body).encode("utf-8"))
        finally:
            self._slots.release()

    async def _post(self, url: str, host: str, data: bytes) -> Outcome:
        self.resolver.refused_hosts.discard(host)
        request: Deferred[Any] = Deferred.fromCoroutine(self._exchange(url, data))
        timer = self._clock.callLater(self._timeout_s, request.cancel)
        try:
            status, answer = await request
        except Exception as e:
            if host in self.resolver.refused_hosts:
                return Refused(f"{host} resolves only to addresses that are not allowed")
            return TryAgain(f"{type(e).__name__}: {e}"[:200])
        finally:
            if timer.active():
                timer.cancel()
        if 200 <= status < 300:
            rejected = answer.get("rejected") if isinstance(answer, dict) else None
            if not isinstance(rejected, list):
                rejected = []
            return Sent(tuple(k for k in rejected if isinstance(k, str)))
        if status >= 500 or status in (408, 429):
            return TryAgain(f"HTTP {status}")
        return Refused(f"HTTP {status}")

    async def _exchange(self, url: str, data: bytes) -> tuple[int, Any]:
        import treq
        from twisted.web.http_headers import Headers

        response = await self._client().post(
            url, data=data, headers=Headers({b"Content-Type": [b"application/json"]})
        )
        received: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _AnswerTooLarge()
            received.append(chunk)

        try:
            await treq.collect(response, collect)
        except _AnswerTooLarge:
            pass  # the status is what matters; an answer this large carries no list we read
        try:
            answer = json.loads(b"".join(received)) if received else None
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            answer = None
        return int(response.code), answer

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.closeCachedConnections()


def _literal(host: str) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
