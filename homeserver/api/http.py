"""The HTTP layer's plumbing: a small router, JSON in and out, errors, CORS, body caps.

Routes are (method, path pattern) -> async handler. Requests come from the lean
HTTP server in http_server.py, not twisted.web (docs/adr/0004). The router is
not a framework: measured, Klein costs ~45 % of a bare Resource's throughput
(docs/adr/0002-http-router.md), and every path here needs
the same Matrix conventions - `M_UNRECOGNIZED` for unknown paths (404) and
methods (405), CORS headers and `OPTIONS` everywhere, `{"errcode", "error"}`
bodies - which are easier to guarantee in one place than to bolt onto one.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from homeserver.api.connection_cap import ConnectionCap
from homeserver.api.forwarded import Network, client_address
from homeserver.api.http_server import HttpFactory, Request, safe_header_value
from homeserver.api.strict_json import JSON_DECODER, check_unicode
from homeserver.api.validate import NUL_MESSAGE, contains_nul
from homeserver.core.clock import Clock
from homeserver.disk_full import disk_watch, is_disk_full
from homeserver.errors import (
    BadJson,
    InvalidParam,
    MatrixError,
    MethodNotAllowed,
    NotJson,
    TooLarge,
    Unrecognized,
)
from homeserver.json_encoding import dumps_bytes
from homeserver.metrics import UNMATCHED, RequestMetrics

log = Logger()

JsonBody = dict[str, Any]
_D = TypeVar("_D")
Handler = Callable[..., Awaitable[Any]]

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, POST, PUT, DELETE, OPTIONS",
    # Range and Content-Range/Accept-Ranges: a web client fetching part of a media file
    # with its token (a `bytes=-n` suffix range is not CORS-safelisted).
    b"Access-Control-Allow-Headers": b"X-Requested-With, Content-Type, Authorization, Range",
    b"Access-Control-Expose-Headers": b"Content-Disposition, Link, Content-Range, Accept-Ranges",
}


@dataclass(frozen=True)
class Response:
    """A handler's answer when it is not a plain 200 JSON object."""

    body: Any
    status: int = 200
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class StreamBody:
    """A `Response.body` sent chunk by chunk (a file, an S3 object), never held whole.

    `chunks` is iterated only while the client keeps up (the transport pauses it);
    it is closed (`aclose`) when the response ends, early or not. `length`, when
    known, becomes the Content-Length.
    """

    chunks: AsyncIterator[bytes]
    length: int | None = None


class ApiRequest(Request):
    """A request as handlers see it: the body (capped while it arrived, see
    http_server), JSON helpers, query parameters, the caller's address and token."""

    # The template of the route that handles it (a metrics label), set by the router; and
    # what to call once the request is answered (e.g. a federation origin's slot freed).
    __slots__ = ("route", "_when_done")
    route: str
    _when_done: list[Callable[[], None]] | None

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the request is answered (or failed), whatever the handler did."""
        if self._when_done is None:
            self._when_done = []
        self._when_done.append(callback)

    # Convenience accessors used by handlers ---------------------------------

    def json_body(self) -> JsonBody:
        """The body as a JSON object, or M_NOT_JSON / M_BAD_JSON."""
        assert self.content is not None
        self.content.seek(0)
        raw = self.content.read()
        if not raw.strip():
            raise NotJson("Content not JSON.")
        try:
            # Decoded strictly first: json.loads(bytes) lets a UTF-8-encoded surrogate (ED A0 80,
            # not UTF-8) through as text, which no later encode, hash or INSERT can take.
            body = JSON_DECODER.decode(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: a body of deeply nested arrays is malformed input, not a server error.
            raise NotJson("Content not JSON.") from None
        if not isinstance(body, dict):
            raise BadJson("The body must be a JSON object")
        check_unicode(raw, body)
        # JSON can spell U+0000 only as an escape: look for one before walking the body.
        if b"\\u0000" in raw and contains_nul(body):
            raise BadJson(NUL_MESSAGE)
        return body

    def json_body_or_empty(self) -> JsonBody:
        """The body as a JSON object, or {} when there is none (e.g. a first UIA round of DELETE)."""
        assert self.content is not None
        self.content.seek(0)
        return self.json_body() if self.content.read().strip() else {}

    def query_param(self, name: str, default: str | None = None) -> str | None:
        values = self.args.get(name.encode(), [])
        if not values:
            return default
        value = values[-1].decode("utf-8", "replace")
        if "\x00" in value:
            raise InvalidParam(f"'{name}': {NUL_MESSAGE}")
        return value

    def query_params(self, name: str) -> list[str]:
        """Every value of a query parameter given more than once (`?t=a&t=b`), in order."""
        out = []
        for raw in self.args.get(name.encode(), []):
            value = raw.decode("utf-8", "replace")
            if "\x00" in value:
                raise InvalidParam(f"'{name}': {NUL_MESSAGE}")
            out.append(value)
        return out

    def int_param(self, name: str, default: _D) -> int | _D:
        """An integer query parameter (ASCII digits, at most 15 of them, an optional minus),
        or M_INVALID_PARAM; absent or empty: `default`. Range checks are the caller's."""
        raw = self.query_param(name)
        if not raw:
            return default
        digits = raw[1:] if raw.startswith("-") else raw
        if not digits.isascii() or not digits.isdigit() or len(digits) > 15:
            raise InvalidParam(f"'{name}' must be an integer")
        return int(raw)

    def json_param(self, name: str) -> Any:
        """A query parameter holding JSON (e.g. an inline filter), or M_BAD_JSON."""
        raw = self.query_param(name)
        if raw is None:
            return None
        try:
            return JSON_DECODER.decode(raw)
        except (ValueError, RecursionError):
            raise BadJson(f"'{name}' must be JSON") from None

    def client_ip(self) -> str:
        """The client's address: the TCP peer's, or the one a trusted load balancer names
        (`listen.trusted_proxies`, api/forwarded.py)."""
        peer = getattr(self.getClientAddress(), "host", "unknown")
        return client_address(peer, self.getHeader(b"x-forwarded-for"), self.channel.factory.trusted_proxies)

    def bearer_token(self) -> str | None:
        raw = self.getHeader(b"authorization")
        if raw is not None:
            header = raw.decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
        # Deprecated in v1.11 but still sent by older clients.
        return self.query_param("access_token")


@dataclass(frozen=True)
class Route:
    method: bytes
    handler: Handler
    template: str


def compile_path(template: str) -> re.Pattern[str]:
    """`/rooms/{roomId}/state/{type}/{stateKey:.*}` -> a regex with named groups."""
    out = ""
    pos = 0
    for m in re.finditer(r"\{(\w+)(?::([^}]+))?\}", template):
        out += re.escape(template[pos : m.start()])
        out += f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})"
        pos = m.end()
    out += re.escape(template[pos:])
    return re.compile(f"^{out}$")


_MATCH_CACHE_SIZE = 4096

# Room ids arrive percent-encoded in most paths (%21room%3Aserver), and the same few
# recur: decoding each once saves ~2 % of the reactor thread under load.
_unquote_segment = functools.lru_cache(maxsize=8192)(unquote)
_SEGMENT_PARAM = re.compile(r"^\{(\w+)(?::([^}/]+))?\}$")


@dataclass
class _Node:
    """A node of the route trie: one path segment deeper per level."""

    literal: dict[str, _Node] = field(default_factory=dict)
    params: list[tuple[str, re.Pattern[str] | None, _Node]] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


_CORS_LINES = b"".join(b"%s: %s\r\n" % item for item in CORS_HEADERS.items())
_JSON_HEAD = b"Content-Type: application/json\r\n" + _CORS_LINES


class Router:
    """Dispatches every path of the server to the registered async handlers.

    Templates whose parameters each fill one path segment live in a trie walked
    segment by segment (a request costs a few dict lookups, not a regex per
    route); the rest (a parameter spanning segments, like a state key) are
    matched by regex.
    """

    def __init__(self) -> None:
        # Only these need a regex: compiling one for each of ~150 routes cost ~8 ms at each start.
        self._routes: list[tuple[re.Pattern[str], Route]] = []
        self._exact: dict[str, list[Route]] = {}
        self._trie = _Node()
        self._templates: set[str] = set()
        self._get_matches: dict[str, list[tuple[Route, dict[str, str]]]] = {}
        self._body_limits: list[tuple[str, int, str | None]] = []
        self.access_log = True
        self.metrics: RequestMetrics | None = None
        self.in_flight = 0
        self._idle_waiters: list[Deferred[None]] = []
        # Called for a GET or HEAD that no route matches (the web client's files), so
        # every route keeps precedence over it.
        self.fallback: Handler | None = None
        # The data dir, to tell a full disk from an I/O error ("": only by errno and codes).
        self.data_dir = ""

    def add(self, method: str, template: str, handler: Handler) -> None:
        route = Route(method.upper().encode(), handler, template)
        segments = template.split("/")[1:]
        if "{" not in template:
            self._exact.setdefault(template, []).append(route)
        elif all("{" not in s or _SEGMENT_PARAM.match(s) for s in segments):
            self._add_to_trie(segments, route)
        else:
            self._routes.append((compile_path(template), route))
        self._templates.add(template)
        self._get_matches.clear()

    def _add_to_trie(self, segments: list[str], route: Route) -> None:
        node = self._trie
        for segment in segments:
            m = _SEGMENT_PARAM.match(segment)
            if m is None:
                node = node.literal.setdefault(segment, _Node())
                continue
            name, regex = m.group(1), m.group(2)
            for existing_name, pattern, child in node.params:
                if existing_name == name and (pattern.pattern if pattern else None) == regex:
                    node = child
                    break
            else:
                child = _Node()
                node.params.append((name, re.compile(regex) if regex else None, child))
                node = child
        node.routes.append(route)

    def _walk(
        self,
        node: _Node,
        segments: list[str],
        i: int,
        params: dict[str, str],
        found: list[tuple[Route, dict[str, str]]],
    ) -> None:
        if i == len(segments):
            found.extend((route, dict(params)) for route in node.routes)
            return
        segment = segments[i]
        child = node.literal.get(segment)
        if child is not None:
            self._walk(child, segments, i + 1, params, found)
        for name, pattern, param_child in node.params:
            # A plain {name} needs a non-empty segment; {name:regex} takes what the regex takes
            # (an empty state key is `/state/{type}/`).
            if (pattern is None and segment) or (pattern is not None and pattern.fullmatch(segment)):
                params[name] = _unquote_segment(segment)
                self._walk(param_child, segments, i + 1, params, found)
                del params[name]

    def templates(self) -> list[str]:
        return sorted(self._templates)

    def serves(self, method: str, path: str) -> bool:
        """Whether a request `method path` would reach a handler (for what /versions promises)."""
        wanted = method.upper().encode()
        return any(route.method == wanted for route, _ in self._match(path))

    def set_body_limit(self, path_prefix: str, max_bytes: int, message: str | None = None) -> None:
        """Cap request bodies on paths starting with `path_prefix` at `max_bytes`
        instead of the global limit (the longest matching prefix wins); `message` is the
        413's text if not the default."""
        self._body_limits = [item for item in self._body_limits if item[0] != path_prefix]
        self._body_limits.append((path_prefix, max_bytes, message))
        self._body_limits.sort(key=lambda item: len(item[0]), reverse=True)

    def body_limit_for(self, path: str) -> int | None:
        for prefix, max_bytes, _ in self._body_limits:
            if path.startswith(prefix):
                return max_bytes
        return None

    def _too_large_message(self, path: str, max_bytes: int) -> str:
        for prefix, _, message in self._body_limits:
            if path.startswith(prefix):
                if message is not None:
                    return message
                break
        return f"Request body exceeds {max_bytes} bytes"

    def _match_cached(self, path: str) -> list[tuple[Route, dict[str, str]]]:
        """`_match` for GETs, remembered per path: long-polls ask for the same /sync path
        over and over. Bounded by starting afresh when full."""
        found = self._get_matches.get(path)
        if found is None:
            if len(self._get_matches) >= _MATCH_CACHE_SIZE:
                self._get_matches.clear()
            found = self._get_matches[path] = self._match(path)
        return found

    def _match(self, path: str) -> list[tuple[Route, dict[str, str]]]:
        found: list[tuple[Route, dict[str, str]]] = [(r, {}) for r in self._exact.get(path, ())]
        self._walk(self._trie, path.split("/")[1:], 0, {}, found)
        for pattern, route in self._routes:
            m = pattern.match(path)
            if m:
                found.append((route, {k: unquote(v) for k, v in m.groupdict().items()}))
        return found

    def dispatch(self, request: ApiRequest) -> None:
        """Handle a complete request (called by the HTTP server); answers asynchronously."""
        self.in_flight += 1
        Deferred.fromCoroutine(self._run(request))

    async def _run(self, request: ApiRequest) -> None:
        # try/finally rather than an errback and a callback on the Deferred: two fewer
        # callback records per request, and less held by each waiting long-poll.
        request.route = UNMATCHED
        request._when_done = None
        try:
            await self._handle(request)
        except Exception:
            self._unexpected(Failure(), request)
        finally:
            if request._when_done is not None:
                for callback in request._when_done:
                    callback()
            self._finished(None)
            if self.metrics is not None:
                self.metrics.finished(request, request.route)

    def _finished(self, _: object) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)

    def wait_idle(self) -> Deferred[None]:
        """Fires when no request is being handled (for a clean shutdown)."""
        d: Deferred[None] = Deferred()
        if self.in_flight == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    async def _handle(self, request: ApiRequest) -> None:
        path = request.path.decode("utf-8", "replace")
        method = request.method
        try:
            if method == b"OPTIONS":
                self._write(request, Response({}))
                return
            if request.body_too_large:
                raise TooLarge(self._too_large_message(path, request.max_body_size))
            if "%00" in path:
                raise InvalidParam(f"The path: {NUL_MESSAGE}")
            matches = self._match_cached(path) if method == b"GET" else self._match(path)
            if not matches:
                if self.fallback is None or method not in (b"GET", b"HEAD"):
                    raise Unrecognized("Unrecognized request")
                matches = [(Route(b"GET", self.fallback, "(web client)"), {})]
            lookup = b"GET" if method == b"HEAD" else method
            for route, params in matches:
                if route.method == lookup:
                    result = await self._call(route, request, params)
                    break
            else:
                raise MethodNotAllowed("Unrecognized request")
            response = result if isinstance(result, Response) else Response(result)
            if isinstance(response.body, StreamBody):
                await self._write_stream(request, response, response.body)
                return
            self._write(request, response)
        except MatrixError as e:
            self._write(request, Response(e.to_json(), e.status))

    async def _call(self, route: Route, request: ApiRequest, params: dict[str, str]) -> Any:
        request.route = route.template
        metrics = self.metrics
        if metrics is None:
            return await route.handler(request, **params)
        metrics.begin(route.template)
        try:
            return await route.handler(request, **params)
        finally:
            metrics.end(route.template)

    def _unexpected(self, failure: Failure, request: ApiRequest) -> None:
        error = failure.value
        if error is not None and is_disk_full(error, self.data_dir):
            # A write no layer below turned into StorageFull: the same answer and one log line.
            refused = disk_watch.refused(self.data_dir, error, request.path.decode("utf-8", "replace"))
            if not request.finished and not request._disconnected:
                self._write(request, Response(refused.to_json(), refused.status))
            return
        log.failure(
            "unhandled error on {method} {path}",
            failure,
            method=request.method.decode(),
            path=request.path.decode("utf-8", "replace"),
        )
        if not request.finished and not request._disconnected:
            self._write(request, Response({"errcode": "M_UNKNOWN", "error": "Internal server error"}, 500))

    def _write(self, request: ApiRequest, response: Response) -> None:
        if request.finished or request._disconnected:
            return
        body = response.body
        if isinstance(body, bytes):
            data = body  # already encoded (e.g. a sync response built around cached event JSON)
        elif response.content_type == b"application/json":
            data = dumps_bytes(body)
        else:
            data = str(body).encode("utf-8")
        if response.content_type == b"application/json" and not response.headers and response.status != 429:
            head = _JSON_HEAD  # the common case: no per-response header to format
        else:
            lines = [b"Content-Type: %s\r\n" % safe_header_value(response.content_type), _CORS_LINES]
            lines.extend(b"%s: %s\r\n" % (name, safe_header_value(value)) for name, value in response.headers)
            if response.status == 429 and isinstance(body, dict) and "retry_after_ms" in body:
                # Whole seconds, rounded up: a client waiting this long is not refused again.
                lines.append(b"Retry-After: %d\r\n" % max(1, -(-int(body["retry_after_ms"]) // 1000)))
            head = b"".join(lines)
        request.respond(response.status, head, data)
        self._log_access(request, response)

    def _set_headers(self, request: ApiRequest, response: Response) -> None:
        request.setResponseCode(response.status)
        request.setHeader(b"Content-Type", response.content_type)
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        for name, value in response.headers:
            request.setHeader(name, value)

    async def _write_stream(self, request: ApiRequest, response: Response, body: StreamBody) -> None:
        """Send a StreamBody as the client takes it; a failure midway drops the connection."""
        try:
            if request.finished or request._disconnected:
                return
            self._set_headers(request, response)
            if body.length is not None:
                request.setHeader(b"Content-Length", str(body.length).encode())
            if request.method != b"HEAD" and not await self._pump(request, body):
                return
            if not request._disconnected:
                request.finish()
            self._log_access(request, response)
        finally:
            aclose = getattr(body.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _pump(self, request: ApiRequest, body: StreamBody) -> bool:
        """Write the chunks, waiting whenever the transport's buffer is full."""
        pacer = _Pacer()
        request.registerProducer(pacer, True)
        try:
            async for chunk in body.chunks:
                if request._disconnected:
                    return False
                request.write(chunk)
                await pacer.ready()
        except Exception:
            log.failure("response stream failed on {path}", path=request.path.decode("utf-8", "replace"))
            request.loseConnection()
            return False
        finally:
            request.unregisterProducer()
        return True

    def _log_access(self, request: ApiRequest, response: Response) -> None:
        if self.access_log:
            # Path only: query strings can carry secrets (tokens, client secrets).
            log.info(
                "{ip} {method} {path} {status} {ms:.1f}ms",
                ip=request.client_ip(),
                method=request.method.decode(),
                path=request.path.decode("utf-8", "replace"),
                status=response.status,
                ms=(time.monotonic() - request.started) * 1000,
            )


class _Pacer:
    """A push producer for a streamed response: the transport pauses it when its
    write buffer is full and resumes it once drained."""

    def __init__(self) -> None:
        self._paused: Deferred[None] | None = None

    def pauseProducing(self) -> None:  # noqa: N802 - twisted's name
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:  # noqa: N802 - twisted's name
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:  # noqa: N802 - twisted's name
        self.resumeProducing()

    async def ready(self) -> None:
        if self._paused is not None:
            await self._paused


def make_site(
    router: Router,
    max_body_size: int,
    clock: Clock,
    upgrades: dict[bytes, Any] | None = None,
    trusted_proxies: tuple[Network, ...] = (),
    cap: ConnectionCap | None = None,
) -> HttpFactory:
    """The listening side: HTTP connections whose requests go to `router`, and WebSocket
    upgrades on the paths of `upgrades` to their Autobahn factories; `clock` times them out.
    Requests from `trusted_proxies` are taken to come from the address they forward; `cap`
    bounds the connections open at once."""
    return HttpFactory(
        router.dispatch,  # type: ignore[arg-type]
        max_body_size,
        clock,
        body_limit_for=router.body_limit_for,
        request_factory=ApiRequest,
        upgrades=upgrades,
        trusted_proxies=trusted_proxies,
        cap=cap,
    )
