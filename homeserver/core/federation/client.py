"""Requests to other servers: discovery, TLS, X-Matrix signatures, JSON, bounded answers.

treq, twisted.web.client and twisted.names are imported by the first request, not at
start-up (docs/operations.md). Every request goes to a `matrix-federation://SERVER_NAME`
URL: the agent's endpoint factory connects where discovery said, with TLS checked for the
name discovery said, so pooled connections are kept per server name.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from signedjson.types import SigningKey
from twisted.logger import Logger
from zope.interface import implementer

from homeserver.config import FederationConfig
from homeserver.core.clock import Clock
from homeserver.core.federation.addresses import AddressRule, filtering_reactor
from homeserver.core.federation.discovery import Destination, ServerResolver, WellKnownAnswer
from homeserver.core.federation.request_auth import authorization_header
from homeserver.core.federation.tls import client_options, trust_root
from homeserver.errors import RemoteServerError
from homeserver.json_encoding import has_lone_surrogate

log = Logger()

# The largest answer read from another server (a state response can be large).
MAX_RESPONSE_BYTES = 50 * 1024 * 1024
MAX_WELL_KNOWN_BYTES = 50 * 1024
WELL_KNOWN_TIMEOUT_S = 10.0
SCHEME = b"matrix-federation"
# Bounds on what is kept per server name (names come from other people's input).
MAX_REMEMBERED = 10_000


class RemoteError(Exception):
    """The other server answered with an error status (its errcode when it gave one)."""

    def __init__(self, server_name: str, status: int, errcode: str, message: str) -> None:
        super().__init__(f"{server_name} answered {status} {errcode}: {message}")
        self.server_name = server_name
        self.status = status
        self.errcode = errcode
        self.message = message


class _TooLarge(Exception):
    pass


class ResponseTooLarge(RemoteServerError):
    """The answer passed the size the caller allowed (502 unless the caller says more)."""


def path_of(*segments: str) -> str:
    """A path from segments, each percent-encoded whole (user ids, server names)."""
    return "".join("/" + quote(segment, safe="") for segment in segments)


class FederationClient:
    # Where /.well-known/matrix/server is fetched: HTTPS's port, as the spec says (tests
    # point it at a listener of their own).
    well_known_port = 443

    def __init__(
        self, reactor: Any, clock: Clock, server_name: str, signing_key: SigningKey, config: FederationConfig
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self.config = config
        # Every connection resolves its host through this: blocked addresses are never reached.
        self.connecting = filtering_reactor(reactor, AddressRule(config))
        self.resolver = ServerResolver(clock, self._fetch_well_known, srv_lookup())
        self._destinations: dict[str, Destination] = {}
        self._http: Any = None  # treq HTTPClient over the federation agent, made on first use
        self._plain: Any = None  # unsigned requests: .well-known (https), media locations (http(s))
        self._trust: Any = None
        self._pool: Any = None

    async def close(self) -> None:
        """Close the kept-alive connections (shutdown)."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # The agent ---------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = self._pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool.maxPersistentPerHost = 5
            pool.cachedConnectionTimeout = 120
            endpoints = implementer(_endpoint_factory_interface())(_Endpoints)(self)
            agent = Agent.usingEndpointFactory(self.connecting, endpoints, pool=pool)
            self._http = HTTPClient(agent)
        return self._http

    def trust(self) -> Any:
        if self._trust is None:
            self._trust = trust_root(self.config.ca_file)
        return self._trust

    def endpoint_for(self, netloc: str) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        dest = self._destinations[netloc]
        plain: Any = HostnameEndpoint(self.connecting, dest.host, dest.port, timeout=10)
        return wrapClientTLS(client_options(dest.tls_name, self.trust()), plain)

    # Requests ----------------------------------------------------------------------------

    async def get_json(self, destination: str, path: str, query: dict[str, Any] | None = None) -> Any:
        return await self.request("GET", destination, path, query=query)

    async def post_json(self, destination: str, path: str, body: Any) -> Any:
        return await self.request("POST", destination, path, body=body)

    async def put_json(self, destination: str, path: str, body: Any) -> Any:
        return await self.request("PUT", destination, path, body=body)

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Send a signed request and return the JSON answer.

        Raises RemoteError for an error status, RemoteServerError when the server cannot be
        reached or answers something that is not JSON."""
        url, headers, data = await self._prepare(method, destination, path, query, body)
        status, raw, _ = await self._send(method, url, headers, data, destination)
        try:
            # Strict UTF-8, and no lone surrogate: text no UTF-8 encodes would fail later, when
            # we hash, store or answer our own client with it (a 500 instead of a bad answer).
            answer = json.loads(raw.decode("utf-8")) if raw else {}
            if has_lone_surrogate(raw, answer):
                answer = None
        except (ValueError, UnicodeDecodeError, RecursionError):
            answer = None
        if status != 200:
            error = answer if isinstance(answer, dict) else {}
            raise RemoteError(
                destination,
                status,
                str(error.get("errcode") or "M_UNKNOWN"),
                str(error.get("error") or raw[:200].decode("utf-8", "replace")),
            )
        if answer is None:
            raise RemoteServerError(f"{destination} answered with something that is not JSON")
        return answer

    async def get_raw(
        self, destination: str, path: str, query: dict[str, Any] | None, max_bytes: int
    ) -> tuple[int, str | None, bytes]:
        """A signed GET whose answer is not JSON (media): (status, Content-Type, body).

        RemoteServerError (502) when unreachable or the body passes `max_bytes`; 504 on a
        timeout. The status is the caller's to read."""
        url, headers, _ = await self._prepare("GET", destination, path, query, None)
        status, raw, content_type = await self._send("GET", url, headers, None, destination, max_bytes)
        return status, content_type, raw

    async def _prepare(
        self, method: str, destination: str, path: str, query: dict[str, Any] | None, body: Any
    ) -> tuple[bytes, dict[bytes, list[bytes]], bytes | None]:
        """Discovery, then the request's URL, its signed headers and body."""
        try:
            dest = await self.resolver.resolve(destination)
        except Exception as e:
            raise RemoteServerError(f"Cannot find server {destination}: {e}") from None
        if len(self._destinations) >= MAX_REMEMBERED and destination not in self._destinations:
            # Only read while a connection is made, synchronously after this line: safe to drop.
            self._destinations.clear()
        self._destinations[destination] = dest
        uri = path + ("?" + urlencode(query, doseq=True) if query else "")
        auth = authorization_header(method, uri, self.server_name, destination, self.signing_key, body)
        headers = {b"Host": [dest.host_header.encode()], b"Authorization": [auth.encode()]}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            headers[b"Content-Type"] = [b"application/json"]
        url = SCHEME + b"://" + destination.encode("ascii") + uri.encode("ascii")
        return url, headers, data

    async def _send(
        self,
        method: str,
        url: bytes,
        headers: dict[bytes, list[bytes]],
        data: bytes | None,
        destination: str,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> tuple[int, bytes, str | None]:
        from twisted.web.http_headers import Headers

        response, raw = await self._capped(
            self._client(),
            method,
            url,
            destination,
            max_bytes,
            headers=Headers(headers),
            data=data,
            allow_redirects=False,
        )
        return int(response.code), raw, _first_header(response, b"content-type")

    async def _capped(
        self, client: Any, method: str, url: bytes | str, what: str, max_bytes: int, **kwargs: Any
    ) -> tuple[Any, bytes]:
        """One request on `client` and its body up to `max_bytes` (ResponseTooLarge past it);
        RemoteServerError when `what` cannot be reached (504 when it does not answer in time).
        Redirects are not followed unless `kwargs` says so (a signed federation request is
        for its destination only)."""
        from twisted.internet.defer import CancelledError

        try:
            response = await client.request(
                method,
                url,
                timeout=self.config.request_timeout / 1000,
                **kwargs,
            )
            raw = await _read_capped(response, max_bytes)
        except _TooLarge:
            raise ResponseTooLarge(f"{what}'s answer is larger than {max_bytes} bytes") from None
        except Exception as e:
            if isinstance(e, CancelledError) or _timed_out(e):
                raise RemoteServerError(f"{what} did not answer in time", status=504) from None
            raise RemoteServerError(f"Cannot reach {what}: {_describe(e)}") from None
        return response, raw

    def _plain_client(self) -> Any:
        """treq over plain HTTP(S) (no X-Matrix signature), through the same address filter."""
        if self._plain is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

            policy = BrowserLikePolicyForHTTPS(trustRoot=self.trust())
            agent: Any = Agent(self.connecting, contextFactory=policy)
            self._plain = HTTPClient(agent)
        return self._plain

    async def get_url(self, url: str, max_bytes: int) -> tuple[int, str | None, str | None, bytes]:
        """A plain GET of a URL another server sent us to (media moved to a CDN), redirects
        followed, every hop's address filtered like federation's: (status, Content-Type,
        Content-Disposition, body). RemoteServerError (502, 504 on a timeout) when it
        cannot be fetched; ResponseTooLarge past `max_bytes`."""
        response, raw = await self._capped(
            self._plain_client(), "GET", url, url, max_bytes, allow_redirects=True
        )
        return (
            int(response.code),
            _first_header(response, b"content-type"),
            _first_header(response, b"content-disposition"),
            raw,
        )

    # Discovery's network side --------------------------------------------------------------

    async def _fetch_well_known(self, host: str) -> WellKnownAnswer:
        """GET https://host/.well-known/matrix/server (redirects followed, a bounded body)."""
        try:
            port = "" if self.well_known_port == 443 else f":{self.well_known_port}"
            response = await self._plain_client().get(
                f"https://{host}{port}/.well-known/matrix/server", timeout=WELL_KNOWN_TIMEOUT_S
            )
            raw = await _read_capped(response, MAX_WELL_KNOWN_BYTES)
        except Exception as e:
            log.info("no .well-known/matrix/server at {host}: {error}", host=host, error=_describe(e))
            return WellKnownAnswer(None)
        cache_control = response.headers.getRawHeaders(b"cache-control")
        return WellKnownAnswer(
            int(response.code), raw, b", ".join(cache_control).decode("latin-1") if cache_control else None
        )


def srv_lookup(resolver: Any = None) -> Any:
    """An SrvLookup over `resolver` (a twisted.names resolver; None: the system's, from
    /etc/resolv.conf); a name without records, or a failed lookup, gives []."""

    async def lookup(name: str) -> list[tuple[int, int, str, int]]:
        from twisted.names import client, dns, error

        try:
            answers, _, _ = await (resolver or client.getResolver()).lookupService(name)
        except (error.DNSNameError, error.DNSServerError, error.DNSQueryRefusedError, error.DomainError):
            return []
        except Exception as e:
            log.info("SRV lookup of {name} failed: {error}", name=name, error=_describe(e))
            return []
        return [
            (a.payload.priority, a.payload.weight, str(a.payload.target), a.payload.port)
            for a in answers
            if a.type == dns.SRV
        ]

    return lookup


def _first_header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


async def _read_capped(response: Any, limit: int) -> bytes:
    import treq

    chunks: list[bytes] = []
    size = 0

    def collect(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)

    await treq.collect(response, collect)
    return b"".join(chunks)


def _timed_out(error: BaseException) -> bool:
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import TimeoutError as ConnectTimeout

    reasons = [r.value for r in getattr(error, "reasons", None) or []]
    return isinstance(error, ConnectTimeout) or any(
        isinstance(r, (CancelledError, ConnectTimeout)) for r in reasons
    )


def _describe(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseNeverReceived and friends
    if reasons:
        return "; ".join(str(r.value) for r in reasons)
    return str(error) or type(error).__name__


def _endpoint_factory_interface() -> Any:
    from twisted.web.iweb import IAgentEndpointFactory

    return IAgentEndpointFactory


class _Endpoints:
    """The agent's endpoint factory: a connection for a matrix-federation:// URL goes where
    discovery sent its server name (resolved just before the request)."""

    def __init__(self, client: FederationClient) -> None:
        self.client = client

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - twisted's name
        return self.client.endpoint_for(uri.netloc.decode("ascii"))
