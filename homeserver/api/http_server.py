"""A lean HTTP/1.1 server on the Twisted reactor: parses requests, hands them to the router.

Why not `twisted.web.server.Site`: it costs ~40 % of a small request's CPU
(header objects, per-request query parsing, several writes per response,
producer bookkeeping) and ~6 KiB per idle long-poll. The router only needs a
method, a path, headers, a body and one write per response (docs/adr/0004).

What it does: keep-alive and pipelining (one request handled at a time per
connection), Content-Length and chunked request bodies capped per path while
they arrive (bodies over SPOOL_AT go to an anonymous temporary file), `Expect:
100-continue`, responses with a length or chunked, and WebSocket upgrades
handed to Autobahn with the bytes read so far.

The parser is strict (docs/adr/0004, "Parsing rules"): whatever two parsers
could read differently - a front proxy and this one - is refused with 400 and
the connection closed, never guessed at. A request head must arrive whole
within HEAD_TIMEOUT_S of its first byte; a body may pause for BODY_TIMEOUT_S;
an idle keep-alive connection is closed after IDLE_TIMEOUT_S. All time comes
from the injected clock (homeserver/core/clock.py). A connection over the caps of
`listen.max_connections` and `listen.max_connections_per_ip` is closed as it is accepted
(api/connection_cap.py).
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, INegotiated, IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from homeserver.api.connection_cap import ConnectionCap
from homeserver.api.forwarded import Network
from homeserver.core.clock import Clock

log = Logger()

MAX_HEAD_BYTES = 64 * 1024
MAX_TRAILER_BYTES = 8 * 1024
# A Content-Length of more digits than this is refused (int() of thousands of digits is slow
# or raises); a chunk size of more hex digits likewise.
MAX_LENGTH_DIGITS = 18
MAX_CHUNK_SIZE_DIGITS = 16
# A chunk-size line with its extensions (which are checked, then ignored).
MAX_CHUNK_LINE = 1024
SPOOL_AT = 100 * 1024
# A body over its cap is read and dropped (so the client, still sending, reads the 413)
# unless it announces more than this beyond the cap: then the answer comes first and
# the connection is closed.
DISCARD_AT_MOST = 16 * 1024 * 1024
# While a request is being handled, what the client pipelines behind it is buffered up
# to this much; then reading pauses until the response is out.
MAX_PIPELINED_BYTES = 1024 * 1024
# A keep-alive connection with no request in progress is closed after this long.
IDLE_TIMEOUT_S = 300.0
# A request head must be complete this long after its first byte (a deadline, not an
# inactivity timer: a client sending a byte a second is cut off all the same).
HEAD_TIMEOUT_S = 30.0
# A request body may pause this long between two reads.
BODY_TIMEOUT_S = 30.0
# A connection whose response the client is not taking (the transport's send buffer stays
# full: it stopped reading) is cut after this long, whatever it was doing; it holds one
# response's bytes meanwhile, as no further request is read until the buffer drains.
OUTPUT_STALL_S = 300.0
# The timeouts above are enforced by one sweep over all connections this often, so each
# fires up to this much late, never early.
SWEEP_EVERY_S = 10.0

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE = range(7)

_STATUS_LINES: dict[int, bytes] = {}
_METHODS = {m: m for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}
_VERSIONS = {b"HTTP/1.1": b"HTTP/1.1", b"HTTP/1.0": b"HTTP/1.0"}

# RFC 9110's token characters (method and header names); `bytes.translate(None, _TCHAR)`
# leaves what is not one.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEXDIG = b"0123456789abcdefABCDEF"
# The control characters: in a head, CR and LF only as the CRLF line ends and HTAB only
# inside values (checked separately), none of the others anywhere.
_CTL = bytes(c for c in range(0x20) if c != 0x09) + b"\x7f"
# Header names seen on almost every request: checked by lookup instead of character by character.
_COMMON_NAMES = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"authorization",
        b"connection",
        b"content-length",
        b"content-type",
        b"origin",
        b"referer",
        b"x-forwarded-for",
        b"x-real-ip",
    }
)


_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_RE = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# RFC 9112 7.1: the size in hex digits (nothing else), then `;name` or `;name=value`
# extensions with optional blanks around `;` and `=`.
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*"
    % (MAX_CHUNK_SIZE_DIGITS, _TOKEN_RE, _TOKEN_RE, _QUOTED_RE)
)


def _is_token(name: bytes) -> bool:
    return bool(name) and not name.translate(None, _TCHAR)


def _status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[code] = b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))
    return line


_date_second = 0
_date_header = b""


def _date(seconds: float) -> bytes:
    """The Date header at `seconds` (the clock's), formatted once per second."""
    global _date_second, _date_header
    now = int(seconds)
    if now != _date_second:
        _date_second = now
        _date_header = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_header


def parse_query(query: bytes) -> dict[bytes, list[bytes]]:
    """`a=1&b=x+y&a=%C3%A9` -> {b"a": [b"1", b"\xc3\xa9"], b"b": [b"x y"]}: parse_qs's rules
    (blank values kept, `+` is a space), on bytes, decoding only what needs it. Handlers
    decode UTF-8 themselves."""
    args: dict[bytes, list[bytes]] = {}
    for part in query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        if b"%" in name or b"+" in name:
            name = unquote_to_bytes(name.replace(b"+", b" "))
        if b"%" in value or b"+" in value:
            value = unquote_to_bytes(value.replace(b"+", b" "))
        values = args.get(name)
        if values is None:
            args[name] = [value]
        else:
            values.append(value)
    return args


def write_now(transport: Any, data: bytes) -> None:
    """Send `data` straight to the socket when nothing is queued before it, and hand
    Twisted only what the socket did not take.

    transport.write alone always queues, registers for writability (epoll_ctl), waits
    for the next reactor turn, sends, and unregisters: ~5 % of the reactor thread
    under load for a response that almost always fits the socket buffer at once.
    """
    if (
        transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataLen", 1)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or a dead peer: Twisted's own write path finds out
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def safe_header_value(value: bytes) -> bytes:
    """No CR or LF in a header value (one taken from user input must not start a new header)."""
    if b"\r" in value or b"\n" in value:
        return value.replace(b"\r", b" ").replace(b"\n", b" ")
    return value


class Request:
    """One HTTP request and its response, as the router sees it.

    The names of the response side (`setHeader`, `write`, `finish`,
    `registerProducer`) follow twisted.web's, so handlers and plugins read the same.
    """

    __slots__ = (
        "channel",
        "method",
        "path",
        "version",
        "query",
        "headers",
        "_content",
        "max_body_size",
        "body_too_large",
        "started",
        "finished",
        "_disconnected",
        "_args",
        "_code",
        "_out_headers",
        "_head_sent",
        "_chunked",
        "_received",
    )

    def __init__(
        self, channel: HttpChannel, method: bytes, uri: bytes, version: bytes, headers: dict[bytes, bytes]
    ) -> None:
        self.channel = channel
        self.method = method
        # Only the parts are kept (the URI is rebuilt on demand): a long-poll's target
        # carries an inline filter of several hundred bytes.
        path, _, query = uri.partition(b"?")
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        # Created on first use: most requests (every GET) have no body.
        self._content: IO[bytes] | None = None
        self.max_body_size = 0
        self.body_too_large = False
        self.started = time.monotonic()  # the access log's duration: it measures work (core/clock.py)
        self.finished = False
        self._disconnected = False
        self._args: dict[bytes, list[bytes]] | None = None
        self._code = 200
        self._out_headers: dict[bytes, tuple[bytes, bytes]] | None = None
        self._head_sent = False
        self._chunked = False
        self._received = 0

    # Request side ------------------------------------------------------------------------

    @property
    def uri(self) -> bytes:
        return self.path + b"?" + self.query if self.query else self.path

    @property
    def content(self) -> IO[bytes]:
        """The request body (empty when there was none), spooled to a file past SPOOL_AT."""
        content = self._content
        if content is None:
            content = self._content = io.BytesIO()
        return content

    @content.setter
    def content(self, value: IO[bytes]) -> None:
        self._content = value

    def forget_head(self) -> None:
        """Drop the query string, its parsed parameters and the headers.

        For a handler about to wait long (a /sync long-poll) once it has read what it
        needs: an idle request then keeps only its method and path (for the response
        and the access log). Afterwards `args` is empty and `getHeader` finds nothing.
        """
        self.query = b""
        self._args = None
        self.headers = {}

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query string's parameters, parsed on first use (most requests never ask)."""
        if self._args is None:
            self._args = parse_query(self.query) if self.query else {}
        return self._args

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 - twisted.web's name
        return self.headers.get(name.lower())

    def getClientAddress(self) -> IAddress:  # noqa: N802 - twisted.web's name
        return self.channel.peer  # type: ignore[no-any-return]

    # Response side -----------------------------------------------------------------------

    def setResponseCode(self, code: int) -> None:  # noqa: N802 - twisted.web's name
        self._code = code

    def setHeader(self, name: bytes, value: bytes) -> None:  # noqa: N802 - twisted.web's name
        if self._out_headers is None:
            self._out_headers = {}
        self._out_headers[name.lower()] = (name, safe_header_value(value))

    def respond(self, code: int, head: bytes, body: bytes) -> None:
        """The whole response in one write: `head` is its header lines (each ending CRLF,
        without Content-Length), `body` is sent unless the method is HEAD."""
        if self.finished or self._disconnected:
            return
        channel = self.channel
        keep = channel.keep_alive
        data = b"".join(
            (
                _status_line(code),
                _date(channel.factory.clock.seconds()),
                head,
                b"Content-Length: %d\r\n" % len(body),
                b"\r\n" if keep else b"Connection: close\r\n\r\n",
                b"" if self.method == b"HEAD" else body,
            )
        )
        self._code = code
        self._head_sent = True
        self.finished = True
        if channel.plain_tcp:
            write_now(channel.transport, data)
        else:
            channel.transport.write(data)  # TLS: the bytes must go through the TLS layer
        channel.request_done(self)

    def _send_head(self) -> None:
        self._head_sent = True
        headers = self._out_headers
        if headers is None:
            headers = self._out_headers = {}
        if b"content-length" not in headers and self.method != b"HEAD":
            self._chunked = True
            headers[b"transfer-encoding"] = (b"Transfer-Encoding", b"chunked")
        lines = [_status_line(self._code), _date(self.channel.factory.clock.seconds())]
        lines.extend(b"%s: %s\r\n" % pair for pair in headers.values())
        if not self.channel.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self.channel.transport.write(b"".join(lines))

    def write(self, data: bytes) -> None:
        if self.finished or self._disconnected:
            return
        if not self._head_sent:
            self._send_head()
        if self.method == b"HEAD" or not data:
            return
        transport = self.channel.transport
        assert transport is not None
        if self._chunked:
            transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)

    def finish(self) -> None:
        if self.finished or self._disconnected:
            return
        if not self._head_sent:
            if self._out_headers is None or b"content-length" not in self._out_headers:
                self.setHeader(b"Content-Length", b"0")
            self._send_head()
        if self._chunked:
            self.channel.transport.write(b"0\r\n\r\n")
        self.finished = True
        self.channel.request_done(self)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802 - twisted's name
        """A push producer for this response: paused while the client's send buffer is full
        (the channel, the transport's producer, passes its calls on)."""
        channel = self.channel
        if self._disconnected:
            producer.stopProducing()
            return
        channel._producer = producer
        if channel._output_full:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:  # noqa: N802 - twisted's name
        self.channel._producer = None

    def loseConnection(self) -> None:  # noqa: N802 - twisted's name
        self._disconnected = True
        self.channel.close()


RequestFactory = Callable[["HttpChannel", bytes, bytes, bytes, dict[bytes, bytes]], Request]


@implementer(IPushProducer)
class HttpChannel(Protocol):
    """One client connection: a parser state machine feeding one request at a time.

    Registered as the producer on its transport, to hear when the send buffer fills
    (pauseProducing) and drains (resumeProducing): while a response waits for the client
    to take it, the next request is neither read nor handled, so a client that sends
    requests and never reads the answers holds at most one response's bytes. A streamed
    response's producer (Request.registerProducer) hears the same through the channel.
    """

    factory: HttpFactory
    transport: Any  # a tcp.Server (zope interfaces do not type-check as classes)
    # Class defaults (no entry per connection until set): the transport's send buffer is
    # full and has not drained since (and when it filled); a streamed response's producer.
    _output_full = False
    _full_since = 0.0
    _producer: Any = None
    # The key the factory's ConnectionCap counts this connection under; None: not counted.
    _cap_key: str | None = None

    def __init__(self) -> None:
        self._buf = b""
        self._state = _HEAD
        self._request: Request | None = None
        self._busy = False  # a request is with the router
        self._in_process = False  # guards against re-entering _process from request_done
        self._remaining = 0  # body or chunk bytes still to read
        self._trailer_bytes = 0  # of the trailer section read so far
        self._discard = False  # the body is over its cap: read and dropped
        self.keep_alive = True
        self.last_active = 0.0  # the clock's seconds at the last byte read or response sent
        self._head_started = 0.0  # ... at the first byte of the request head being read
        self.peer: Any = None
        self._upgraded = False
        self._paused = False
        # A bare TCP connection, whose socket write_now may write to directly (not TLS, whose
        # wrapper forwards `socket` to the TCP transport underneath).
        self.plain_tcp = True

    def connectionMade(self) -> None:  # noqa: N802 - twisted's name
        self.peer = self.transport.getPeer()
        cap = self.factory.cap
        if cap is not None:
            key = cap.admit(self.peer)
            if key is None:
                # Over a cap: closed before anything is read, with no answer (one would
                # cost what the cap saves: a write per refused connection).
                self.transport.abortConnection()
                return
            self._cap_key = key
        self.plain_tcp = not INegotiated.providedBy(self.transport)  # TLSMemoryBIOProtocol is
        self.last_active = self.factory.clock.seconds()
        self.factory.channels.add(self)
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: N802, B008
        factory = self.factory
        factory.channels.discard(self)
        key = self._cap_key
        if key is not None:
            self._cap_key = None
            factory.cap.release(key)  # type: ignore[union-attr]
        request = self._request
        self._request = None
        if request is not None:
            request._disconnected = True
            if not self._busy and request._content is not None:
                request._content.close()  # a body cut short is never handed on
        if factory.draining:
            factory.check_drained()

    def close(self, abort: bool = False) -> None:
        """Close once what is written is sent; `abort`: at once, dropping it."""
        if self.transport is not None:
            if abort:
                self.transport.abortConnection()
            else:
                # This channel is its transport's producer, and a TLS transport does not shut
                # down while one is registered (Twisted's TLSMemoryBIOProtocol waits for
                # unregisterProducer): step down first, or the connection never closes.
                self.transport.unregisterProducer()
                self.transport.loseConnection()

    # The transport's producer calls (its send buffer) ------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802 - twisted's name
        if not self._output_full:
            self._output_full = True
            self._full_since = self.factory.clock.seconds()
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - twisted's name
        self._output_full = False
        if self._producer is not None:
            self._producer.resumeProducing()
        if self._busy or self._upgraded or self.transport is None:
            return
        if self._buf:
            # The request held back behind the response: its head deadline starts now.
            self._head_started = self.factory.clock.seconds()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if self._buf and not self._in_process:
            self._process()

    def stopProducing(self) -> None:  # noqa: N802 - twisted's name
        if self._producer is not None:
            self._producer.stopProducing()

    # Reading -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - twisted's name
        now = self.factory.clock.seconds()
        self.last_active = now
        if self._buf:
            self._buf += data
        else:
            if self._state == _HEAD and not self._busy:
                self._head_started = now  # the first byte of a head: its deadline starts
            self._buf = data
        if self._busy:
            if len(self._buf) > MAX_PIPELINED_BYTES and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def reading(self) -> bool:
        """Part-way through reading a request (its head, or a body not yet complete)."""
        if self._busy or self._upgraded:
            return False
        state = self._state
        return bool(self._buf) if state == _HEAD else state != _DONE

    def _process(self) -> None:
        self._in_process = True
        try:
            while self._buf and not self._busy and not self._upgraded and self.connected:
                state = self._state
                if state == _HEAD:
                    if self._output_full:
                        # The last response is not out yet: the next request waits, and so
                        # does reading (resumeProducing goes on).
                        if not self._paused:
                            self._paused = True
                            self.transport.pauseProducing()
                        return
                    if not self._read_head():
                        return
                elif state == _BODY:
                    self._read_body_bytes()
                elif state == _CHUNK_SIZE:
                    if not self._read_chunk_size():
                        return
                elif state == _CHUNK_DATA:
                    self._read_body_bytes()
                elif state == _CHUNK_END:
                    if len(self._buf) < 2:
                        return
                    if self._buf[:2] != b"\r\n":
                        return self._refuse(400, b"Bad chunk")
                    self._buf = self._buf[2:]
                    self._state = _CHUNK_SIZE
                elif state == _TRAILERS:
                    if not self._read_trailer():
                        return
                else:
                    return
        finally:
            self._in_process = False

    def _read_head(self) -> bool:
        buf = self._buf
        while buf[:2] == b"\r\n":  # empty lines between requests are allowed (CRLF only)
            buf = buf[2:]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._buf = buf
            if len(buf) > MAX_HEAD_BYTES:
                self._refuse(431, b"Request head too large")
            return False
        if end > MAX_HEAD_BYTES:
            self._refuse(431, b"Request head too large")
            return False
        head, self._buf = buf[:end], buf[end + 4 :]
        lines = head.split(b"\r\n")
        # Lines end in CRLF only (a bare CR or LF is a line end to some parsers and not to
        # others), and no other control character anywhere: the only ones are the CRLFs.
        if len(head) - len(head.translate(None, _CTL)) != 2 * (len(lines) - 1):
            self._refuse(400, b"Bad characters in request head")
            return False
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] not in _VERSIONS or b"\t" in lines[0]:
            self._refuse(400, b"Bad request line")
            return False
        method, target, version = parts
        # The usual methods and versions as shared constants, not one copy per request.
        known = _METHODS.get(method)
        if known is None and not _is_token(method):
            self._refuse(400, b"Bad request line")
            return False
        method = known or method
        version = _VERSIONS[version]
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            name = name.lower()
            # No obs-fold (a line starting with whitespace), no whitespace before the colon.
            if not sep or (name not in _COMMON_NAMES and not _is_token(name)):
                self._refuse(400, b"Bad header")
                return False
            value = value.strip(b" \t")
            if name in headers:
                if name == b"content-length" or name == b"transfer-encoding":
                    self._refuse(400, b"Repeated " + name)
                    return False
                headers[name] += b", " + value
            else:
                headers[name] = value
        if target[:1] != b"/":
            # absolute-form (a proxy's): keep the path from the authority on
            scheme_end = target.find(b"://")
            if scheme_end < 0:
                self._refuse(400, b"Bad request target")
                return False
            slash = target.find(b"/", scheme_end + 3)
            target = target[slash:] if slash >= 0 else b"/"
        connection = headers.get(b"connection", b"").lower()
        if version == b"HTTP/1.0":
            # `and`: once shutdown has cleared keep-alive, no request turns it back on.
            self.keep_alive = self.keep_alive and b"keep-alive" in connection
        elif b"close" in connection:
            self.keep_alive = False

        if b"upgrade" in headers and b"websocket" in headers[b"upgrade"].lower():
            upgrade = self.factory.upgrades.get(target.partition(b"?")[0])
            if upgrade is not None:
                self._hand_over(upgrade, buf[: end + 4])
                return False

        request = self.factory.request_factory(self, method, target, version, headers)
        self._request = request
        limit = self.factory.body_limit_for(request.path)
        request.max_body_size = limit
        return self._start_body(request, headers, limit)

    def _start_body(self, request: Request, headers: dict[bytes, bytes], limit: int) -> bool:
        te = headers.get(b"transfer-encoding")
        cl = headers.get(b"content-length")
        if te is not None:
            # Framing two parsers could disagree on is refused, never guessed (RFC 9112 6.1).
            if cl is not None:
                self._refuse(400, b"Both Content-Length and Transfer-Encoding")
                return False
            if request.version == b"HTTP/1.0":
                self._refuse(400, b"Transfer-Encoding in an HTTP/1.0 request")
                return False
            coding = te.lower()
            if coding != b"chunked":
                if coding.rpartition(b",")[2].strip(b" \t") != b"chunked":
                    self._refuse(400, b"Transfer-Encoding must end with chunked")
                else:
                    self._refuse(501, b"Unsupported Transfer-Encoding")
                return False
            self._state = _CHUNK_SIZE
            self._trailer_bytes = 0
        elif cl is not None:
            # ASCII digits only: int() would also take '+', '_', spaces and other scripts' digits.
            if not cl.isdigit() or len(cl) > MAX_LENGTH_DIGITS:
                self._refuse(400, b"Bad Content-Length")
                return False
            self._remaining = int(cl)
            if self._remaining > limit:
                request.body_too_large = True
                expects = b"100-continue" in headers.get(b"expect", b"").lower()
                if self._remaining - limit > DISCARD_AT_MOST or expects:
                    # Answer now and close rather than read it all.
                    self.keep_alive = False
                    self._dispatch()
                    return True
                self._discard = True
            if self._remaining == 0:
                self._dispatch()
                return True
            self._state = _BODY
        else:
            self._dispatch()
            return True
        if b"100-continue" in headers.get(b"expect", b"").lower() and request.version == b"HTTP/1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _read_chunk_size(self) -> bool:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_CHUNK_LINE:
                self._refuse(400, b"Bad chunk size")
            return False
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        # Hex digits and nothing else (no sign, `0x`, `_` or blanks), then well-formed
        # extensions only: a bare LF or a stray quote in one must not hide a line end.
        if line and len(line) <= MAX_CHUNK_SIZE_DIGITS and not line.translate(None, _HEXDIG):
            size = int(line, 16)
        else:
            match = _CHUNK_LINE.fullmatch(line) if len(line) <= MAX_CHUNK_LINE else None
            if match is None:
                self._refuse(400, b"Bad chunk size")
                return False
            size = int(match.group(1), 16)
        if size == 0:
            self._state = _TRAILERS
        else:
            self._remaining = size
            self._state = _CHUNK_DATA
        return True

    def _read_trailer(self) -> bool:
        """One line of the trailer section: checked as a header line, then dropped."""
        end = self._buf.find(b"\r\n")
        taken = (end if end >= 0 else len(self._buf)) + 2
        if self._trailer_bytes + taken > MAX_TRAILER_BYTES:
            self._refuse(431, b"Request trailers too large")
            return False
        if end < 0:
            return False
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        self._trailer_bytes += taken
        if not line:
            self._dispatch()
            return True
        name, sep, _ = line.partition(b":")
        if not sep or not _is_token(name) or len(line.translate(None, _CTL)) != len(line):
            self._refuse(400, b"Bad trailer")
            return False
        return True

    def _read_body_bytes(self) -> None:
        request = self._request
        assert request is not None
        take = self._buf[: self._remaining]
        self._buf = self._buf[len(take) :]
        self._remaining -= len(take)
        request._received += len(take)
        if not self._discard and request._received > request.max_body_size:
            self._discard = True
            request.body_too_large = True
            if request._content is not None:
                request._content.close()
            request._content = None
        if not self._discard:
            content = request.content
            if request._received > SPOOL_AT and isinstance(content, io.BytesIO):
                spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the request
                spool.write(content.getbuffer())
                request.content = content = spool
            content.write(take)
        elif request._received > request.max_body_size + DISCARD_AT_MOST:
            # Still coming, far past the cap: answer now and close.
            self.keep_alive = False
            self._dispatch()
            return
        if self._remaining == 0:
            if self._state == _BODY:
                self._dispatch()
            else:
                self._state = _CHUNK_END

    def _dispatch(self) -> None:
        request = self._request
        assert request is not None
        self._state = _DONE
        self._discard = False
        if request._content is not None:
            request._content.seek(0)
        self._busy = True
        factory = self.factory
        factory.handle(request)
        if factory.draining:
            factory.check_drained()

    # Writing -----------------------------------------------------------------------------

    def request_done(self, request: Request) -> None:
        """The router finished `request`: close, or go on with what was pipelined behind it."""
        if request is not self._request:
            return
        if request._content is not None:
            request._content.close()
        self._request = None
        self._busy = False
        self._state = _HEAD
        # What was pipelined behind it is the next head: its deadline starts now.
        self.last_active = self._head_started = self.factory.clock.seconds()
        if not self.keep_alive:
            self.close()
            return
        if self._paused and self.transport is not None and not self._output_full:
            self._paused = False
            self.transport.resumeProducing()
        if self._buf and not self._in_process:
            self._process()

    def _refuse(self, code: int, reason: bytes) -> None:
        """A request we cannot parse: a plain answer, then the connection closes."""
        body = b'{"errcode":"M_UNKNOWN","error":"%s"}' % reason
        self.transport.write(
            _status_line(code)
            + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        self._buf = b""
        self._state = _DONE
        self.close()
        if self.factory.draining:
            self.factory.check_drained()

    # Upgrades and timeouts -----------------------------------------------------------------

    def _hand_over(self, factory: ServerFactory, head: bytes) -> None:
        """A WebSocket handshake: the connection now belongs to `factory`'s protocol, which
        reads the handshake from the start (the head) and anything sent after it."""
        self._upgraded = True
        self.factory.channels.discard(self)
        transport: Any = self.transport
        protocol = factory.buildProtocol(self.peer)
        assert protocol is not None
        key = self._cap_key
        if key is not None:
            # Still one connection: counted until the new protocol's end.
            self._cap_key = None
            self.factory.cap.hand_over(protocol, key)  # type: ignore[union-attr]
        rest, self._buf = self._buf, b""
        transport.unregisterProducer()  # the new protocol registers its own
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(head + rest)
        if self.factory.draining:
            self.factory.check_drained()

    def stale(self, now: float) -> bool:
        """Past a timeout: idle too long, a head not complete by its deadline, a body stalled,
        a response the client has not taken for OUTPUT_STALL_S."""
        if self._output_full:
            # Waiting for the client to take a response (a pipelined head waits with it).
            return now - self._full_since > OUTPUT_STALL_S
        if self._busy:
            return False
        state = self._state
        if state == _HEAD:
            if not self._buf:
                return now - self.last_active > IDLE_TIMEOUT_S
            return now - self._head_started > HEAD_TIMEOUT_S
        return now - self.last_active > BODY_TIMEOUT_S


class HttpFactory(ServerFactory):
    """Builds channels; `handle` gets each complete request (the router's dispatch)."""

    protocol = HttpChannel  # type: ignore[assignment]

    def __init__(
        self,
        handle: Callable[[Any], None],
        max_body_size: int,
        clock: Clock,
        body_limit_for: Callable[[str], int | None] | None = None,
        request_factory: RequestFactory = Request,
        upgrades: dict[bytes, ServerFactory] | None = None,
        trusted_proxies: tuple[Network, ...] = (),
        cap: ConnectionCap | None = None,
    ) -> None:
        self.handle = handle
        self.max_body_size = max_body_size
        self.clock = clock
        self._body_limit_for = body_limit_for
        self.request_factory = request_factory
        self.upgrades = upgrades or {}
        # Load balancers whose X-Forwarded-For is believed (ApiRequest.client_ip).
        self.trusted_proxies = trusted_proxies
        # Bounds the connections open at once (None: no bound, the internal and metrics
        # listeners); the client and federation listeners share one.
        self.cap = cap
        self.channels: set[HttpChannel] = set()
        self._sweeper: LoopingCall | None = None
        # Shutting down: no connection starts another request (drain()).
        self.draining = False
        self._drain_waiters: list[Deferred[None]] = []

    def body_limit_for(self, path: bytes) -> int:
        if self._body_limit_for is not None:
            limit = self._body_limit_for(path.decode("utf-8", "replace"))
            if limit is not None:
                return limit
        return self.max_body_size

    def startFactory(self) -> None:  # noqa: N802 - twisted's name
        self._sweeper = self.clock.looping_call(SWEEP_EVERY_S, self._sweep)

    def stopFactory(self) -> None:  # noqa: N802 - twisted's name
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for channel in [c for c in self.channels if c.stale(now)]:
            # A close waits for the send buffer to drain, which a client that is not reading
            # never lets happen: such a connection is aborted.
            channel.close(abort=channel._output_full)

    # Shutdown ------------------------------------------------------------------------------

    def drain(self) -> Deferred[None]:
        """For shutdown, once the port has stopped listening: fires when no connection is
        part-way through reading a request (each one read is with the handler by then).

        Idle connections close now; every other one answers its request with
        `Connection: close` and closes. The caller bounds the wait (a client may stall).
        """
        self.draining = True
        for channel in list(self.channels):
            channel.keep_alive = False
            if not channel._busy and not channel.reading():
                channel.close()
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)
        self.check_drained()
        return d

    def check_drained(self) -> None:
        """Called while draining whenever a connection finishes reading or goes away."""
        if self._drain_waiters and not any(c.reading() for c in self.channels):
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
