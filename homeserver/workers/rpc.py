"""Requests between the instances of one server: a write forwarded to the instance that owns it.

`call(instance, method, args)` POSTs JSON to `http://<internal>/_homeserver/internal/<method>`
with the shared secret; the other side runs the handler `register`ed under that name. A
MatrixError raised there comes back as the same MatrixError here (status, errcode, message,
extra fields), so a forwarded request answers the client as a local one would. An instance
that cannot be reached is a 503 (ServiceUnavailable): clients and the balancer retry, and
the writers dedupe retried sends by transaction id. A call to this instance itself runs the
handler directly. Both ways the JSON is `dumps_internal`'s: whatever a process holds (an
integer past 64 bits in a client's to-device content) reaches the other intact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet import error as net_error
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.logger import Logger
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from homeserver.errors import LimitExceeded, MatrixError, ServiceUnavailable
from homeserver.json_encoding import dumps_internal, loads_internal
from homeserver.logs import log_failure

log = Logger()

INTERNAL_PREFIX = "/_homeserver/internal/"
RpcHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Transport(Protocol):
    async def post(self, instance: str, method: str, body: bytes) -> tuple[int, bytes]:
        """Send `body` to `instance`'s `method`; (status, response body). Raise ServiceUnavailable
        when the instance cannot be reached."""


class WorkerRpc:
    def __init__(self, me: str, secret: bytes, transport: Transport | None = None) -> None:
        self.me = me
        self.secret = secret
        self.transport = transport
        self._handlers: dict[str, RpcHandler] = {}

    def register(self, method: str, handler: RpcHandler) -> None:
        if method in self._handlers:
            raise ValueError(f"rpc method {method} registered twice")
        self._handlers[method] = handler

    async def call(self, instance: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if instance == self.me:
            return await self._handler(method)(args)
        if self.transport is None:
            raise ServiceUnavailable(f"instance {instance} cannot be reached (no transport)")
        status, raw = await self.transport.post(instance, method, dumps_internal(args))
        try:
            body = loads_internal(raw)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            log.warn(
                "rpc {method} to {instance}: {status} without a JSON object",
                method=method,
                instance=instance,
                status=status,
            )
            raise ServiceUnavailable(f"instance {instance} gave no answer to {method}")
        if status == 200:
            return body
        raise error_from_json(status, body)

    def _handler(self, method: str) -> RpcHandler:
        handler = self._handlers.get(method)
        if handler is None:
            raise MatrixError(f"no internal method {method}", "M_UNRECOGNIZED", status=404)
        return handler

    async def handle(self, method: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run a request from another instance: (status, body) to answer it with."""
        try:
            return 200, await self._handler(method)(args)
        except MatrixError as e:
            return e.status, e.to_json()
        except Exception:
            log_failure(log, f"internal request {method} failed")
            return 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}


def _subclasses(cls: type[MatrixError]) -> list[type[MatrixError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out += _subclasses(sub)
    return out


def error_from_json(status: int, body: dict[str, Any]) -> MatrixError:
    """The MatrixError another instance raised, from its JSON: the most specific class with the
    same status and errcode (a plain MatrixError when none)."""
    errcode = str(body.get("errcode") or "M_UNKNOWN")
    message = str(body.get("error") or "")
    extra = {k: v for k, v in body.items() if k not in ("errcode", "error")}
    cls: type[MatrixError] = MatrixError
    for candidate in _subclasses(MatrixError):
        if candidate.status == status and candidate.errcode == errcode:
            cls = candidate
            break
    error = cls.__new__(cls)
    MatrixError.__init__(error, message, errcode, status=status, **extra)
    if isinstance(error, LimitExceeded):
        error.retry_after_ms = int(extra.get("retry_after_ms", 0))
    return error


# The failures that mean "not reachable now" rather than "it answered".
_UNREACHABLE = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    TimeoutError,
    CancelledError,
    OSError,
)


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written at once (no cooperator turns)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802 - twisted's name
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802 - twisted's name
        pass

    def resumeProducing(self) -> None:  # noqa: N802 - twisted's name
        pass

    def stopProducing(self) -> None:  # noqa: N802 - twisted's name
        pass


class _Collect(protocol.Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - twisted's name
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - twisted's name
        from twisted.web.client import ResponseDone

        if self.done.called:
            return  # timed out (cancelled) before the body ended
        if reason is None or reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response: Any) -> Deferred[bytes]:
    """The whole body (twisted's readBody warns about the pool's connections)."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done))
    return done


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Connections to the internal listeners: an IP address straight to TCP. Twisted's
    HostnameEndpoint (Agent's default) reports a refused connection only after its 0.3 s
    attempt delay, so every request for a dead instance waited that long, or a multiple of it,
    before its 503 (the client's retry with it)."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - twisted's name
        from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

        host = uri.host.decode("ascii")
        try:
            family = ipaddress.ip_address(host).version
        except ValueError:
            return HostnameEndpoint(self.reactor, uri.host, uri.port, timeout=self.connect_timeout)
        tcp = TCP4ClientEndpoint if family == 4 else TCP6ClientEndpoint
        return tcp(self.reactor, host, uri.port, timeout=self.connect_timeout)


class HttpTransport:
    """POSTs to the instances' internal listeners over persistent connections."""

    def __init__(
        self, reactor: Any, addresses: Callable[[str], tuple[str, int]], secret: bytes, timeout_s: float
    ) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.addresses = addresses
        self.timeout_s = timeout_s
        self._auth = b"Bearer " + secret
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 16
        self._agent = Agent.usingEndpointFactory(
            reactor, _Endpoints(reactor, min(5.0, timeout_s)), pool=self._pool
        )

    async def post(self, instance: str, method: str, body: bytes) -> tuple[int, bytes]:
        from twisted.web.client import ResponseFailed
        from twisted.web.http_headers import Headers

        host, port = self.addresses(instance)
        url = f"http://{host}:{port}{INTERNAL_PREFIX}{method}".encode()
        headers = Headers({b"Authorization": [self._auth], b"Content-Type": [b"application/json"]})
        try:
            d = self._agent.request(b"POST", url, headers, _Body(body))  # type: ignore[arg-type]
            d.addTimeout(self.timeout_s, self.reactor)
            response = await d
            d2 = _read_body(response)
            d2.addTimeout(self.timeout_s, self.reactor)
            return int(response.code), await d2
        except (*_UNREACHABLE, ResponseFailed) as e:
            log.warn(
                "rpc {method} to {instance} failed: {error!r}", method=method, instance=instance, error=e
            )
            raise ServiceUnavailable(f"instance {instance} cannot be reached; try again") from None

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


class MemoryTransport:
    """Tests: the instances' WorkerRpc in one process, every request and answer through JSON
    (as over HTTP); `down` instances are unreachable."""

    def __init__(self) -> None:
        self.rpcs: dict[str, WorkerRpc] = {}
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []  # (instance, method), in order

    def add(self, rpc: WorkerRpc) -> None:
        self.rpcs[rpc.me] = rpc

    async def post(self, instance: str, method: str, body: bytes) -> tuple[int, bytes]:
        rpc = self.rpcs.get(instance)
        if rpc is None or instance in self.down:
            raise ServiceUnavailable(f"instance {instance} cannot be reached; try again")
        self.calls.append((instance, method))
        status, answer = await rpc.handle(method, loads_internal(body))
        return status, dumps_internal(answer)


def check_secret(expected: bytes, token: str | None) -> None:
    """403 unless `token` is the shared secret (compared in constant time)."""
    import hmac

    from homeserver.errors import Forbidden

    if token is None or not hmac.compare_digest(token.encode("utf-8"), expected):
        raise Forbidden("Internal requests need the workers' shared secret")
