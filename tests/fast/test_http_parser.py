"""The HTTP/1.1 parser's rules (docs/adr/0004, "Parsing rules") and its time limits, on a
StringTransport and a clock the test moves: whatever a front proxy could read differently
is refused with 400 and the connection closed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import TestClock, Transport, connect, parse_response

from homeserver.api.http_server import (
    BODY_TIMEOUT_S,
    HEAD_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    OUTPUT_STALL_S,
    SWEEP_EVERY_S,
    HttpChannel,
    HttpFactory,
    Request,
)


class Server:
    """An HttpFactory whose handler answers each request with what it read, or holds it."""

    def __init__(self, hold: bool = False) -> None:
        self.clock = TestClock()
        self.hold = hold
        self.requests: list[Request] = []
        self.factory = HttpFactory(self.handle, 1024 * 1024, self.clock)
        self.factory.doStart()

    def handle(self, request: Request) -> None:
        self.requests.append(request)
        if not self.hold:
            self.answer(request)

    @staticmethod
    def answer(request: Request) -> None:
        body = json.dumps({"method": request.method.decode(), "body": request.content.read().decode()})
        request.respond(200, b"Content-Type: application/json\r\n", body.encode())

    def connect(self) -> tuple[HttpChannel, Transport]:
        return connect(self.factory)

    def send(self, data: bytes) -> tuple[int, dict[str, str], bytes, Transport]:
        _, transport = self.connect()
        transport.protocol.dataReceived(data)
        status, headers, body = parse_response(transport.value())
        return status, headers, body, transport


def post(headers: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST /x " + version + b"\r\nHost: x\r\n" + headers + b"\r\n" + body


def chunked(chunks: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", chunks)


GOOD = [
    pytest.param(post(b"Content-Length: 5\r\n", b"hello"), "hello", id="content-length"),
    pytest.param(post(b"Content-Length: 005\r\n", b"hello"), "hello", id="leading zeros"),
    pytest.param(post(b"Content-Length:\t5 \r\n", b"hello"), "hello", id="blanks around the value"),
    pytest.param(chunked(b"5\r\nhello\r\n0\r\n\r\n"), "hello", id="chunked"),
    pytest.param(chunked(b"A\r\n0123456789\r\n0\r\n\r\n"), "0123456789", id="upper-case hex"),
    pytest.param(chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"), "hello", id="chunk extension"),
    pytest.param(chunked(b'5 ; a = "q \\" x";b\r\nhello\r\n0\r\n\r\n'), "hello", id="quoted extension"),
    pytest.param(chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\nY: two\r\n\r\n"), "hello", id="trailers"),
    pytest.param(post(b"Transfer-Encoding: Chunked\r\n", b"0\r\n\r\n"), "", id="chunked in any case"),
    pytest.param(b"\r\n\r\n" + post(b"Content-Length: 0\r\n"), "", id="empty lines first"),
    pytest.param(
        post(b"X-Odd: caf\xc3\xa9\t!\r\nContent-Length: 0\r\n"), "", id="obs-text and tab in a value"
    ),
]


@pytest.mark.parametrize(("request_bytes", "body"), GOOD)
def test_well_formed_requests_are_read(request_bytes: bytes, body: str) -> None:
    status, _, data, transport = Server().send(request_bytes)
    assert status == 200, data
    assert json.loads(data)["body"] == body
    assert not transport.disconnecting


BAD = [
    # Content-Length: ASCII digits only, once.
    pytest.param(post(b"Content-Length: +5\r\n", b"hello"), 400, id="CL sign"),
    pytest.param(post(b"Content-Length: 1_0\r\n", b"hello"), 400, id="CL underscore"),
    pytest.param(post(b"Content-Length: 5 5\r\n", b"hello"), 400, id="CL inner space"),
    pytest.param(post(b"Content-Length: 0x5\r\n", b"hello"), 400, id="CL hex"),
    pytest.param(post("Content-Length: ٥\r\n".encode(), b"hello"), 400, id="CL other digits"),
    pytest.param(post(b"Content-Length: " + b"9" * 19 + b"\r\n"), 400, id="CL too many digits"),
    pytest.param(post(b"Content-Length: " + b"1" * 5000 + b"\r\n"), 400, id="CL thousands of digits"),
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400, id="CL repeated"),
    pytest.param(post(b"Content-Length: 5, 5\r\n", b"hello"), 400, id="CL list"),
    pytest.param(post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"hello"), 400, id="CL conflicting"),
    # Transfer-Encoding: exactly chunked, alone, in HTTP/1.1.
    pytest.param(
        post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400, id="TE and CL"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
        id="TE repeated",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), 400, id="TE chunked not last"
    ),
    pytest.param(post(b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"), 400, id="TE without chunked"),
    pytest.param(post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400, id="TE lookalike"),
    pytest.param(
        post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501, id="TE unsupported coding"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", version=b"HTTP/1.0"), 400, id="TE in HTTP/1.0"
    ),
    # Chunk sizes: hex digits only.
    pytest.param(chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk 0x"),
    pytest.param(chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk sign"),
    pytest.param(chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk negative"),
    pytest.param(chunked(b"0_5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk underscore"),
    pytest.param(chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk leading space"),
    pytest.param(chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400, id="chunk trailing space"),
    pytest.param(chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, id="chunk empty size"),
    pytest.param(chunked(b"1" * 17 + b"\r\n"), 400, id="chunk too many digits"),
    pytest.param(chunked(b"5\nhello\r\n0\r\n\r\n"), 400, id="chunk bare LF"),
    pytest.param(chunked(b"5hello\r\n0\r\n\r\n"), 400, id="chunk data without line end"),
    pytest.param(chunked(b"5\r\nhelloXX0\r\n\r\n"), 400, id="chunk data without CRLF after"),
    # Chunk extensions: well-formed or refused.
    pytest.param(chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400, id="ext without name"),
    pytest.param(chunked(b"5;a=b c\r\nhello\r\n0\r\n\r\n"), 400, id="ext bad value"),
    pytest.param(chunked(b'5;a="open\r\nhello\r\n0\r\n\r\n'), 400, id="ext unclosed quote"),
    pytest.param(chunked(b"5;a=\x01\r\nhello\r\n0\r\n\r\n"), 400, id="ext control char"),
    pytest.param(chunked(b"5;a=" + b"b" * 1100 + b"\r\nhello\r\n0\r\n\r\n"), 400, id="ext too long"),
    pytest.param(chunked(b"5;a=" + b"b" * 1100), 400, id="ext too long, no line end yet"),
    # Trailers: header lines, bounded.
    pytest.param(chunked(b"0\r\nno colon\r\n\r\n"), 400, id="trailer without colon"),
    pytest.param(chunked(b"0\r\n folded: x\r\n\r\n"), 400, id="trailer folded"),
    pytest.param(chunked(b"0\r\nX-A: 1\nX-B: 2\r\n\r\n"), 400, id="trailer bare LF"),
    pytest.param(chunked(b"0\r\n" + b"X-T: 1234567890\r\n" * 600 + b"\r\n"), 431, id="trailers too large"),
    pytest.param(chunked(b"0\r\nX-T: " + b"a" * 9000), 431, id="trailer too large, no line end yet"),
    # The head: CRLF line ends only, token names, no fold, no controls.
    pytest.param(b"GET /x HTTP/1.1\nHost: x\r\n\r\n", 400, id="bare LF after request line"),
    pytest.param(
        b"GET /x HTTP/1.1\r\nX-A: 1\nTransfer-Encoding: chunked\r\n\r\n", 400, id="bare LF in a value"
    ),
    pytest.param(b"GET /x HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n", 400, id="bare CR in a value"),
    pytest.param(b"GET /x HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, id="NUL in a value"),
    pytest.param(b"GET /x HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n", 400, id="DEL in a value"),
    pytest.param(b"GET /x HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET /x HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400, id="obs-fold tab"),
    pytest.param(b"GET /x HTTP/1.1\r\nContent-Length : 0\r\n\r\n", 400, id="space before colon"),
    pytest.param(b"GET /x HTTP/1.1\r\nX(A): 1\r\n\r\n", 400, id="name not a token"),
    pytest.param(b"GET /x HTTP/1.1\r\n: 1\r\n\r\n", 400, id="empty name"),
    pytest.param(b"GET /x HTTP/1.1\r\nNo colon here\r\n\r\n", 400, id="no colon"),
    pytest.param(b"GET  /x HTTP/1.1\r\n\r\n", 400, id="two spaces in request line"),
    pytest.param(b"GET\t/x HTTP/1.1\r\n\r\n", 400, id="tab in request line"),
    pytest.param(b"G(T /x HTTP/1.1\r\n\r\n", 400, id="method not a token"),
    pytest.param(b"GET /x HTTP/2.0\r\n\r\n", 400, id="version"),
    pytest.param(b"GET /x http/1.1\r\n\r\n", 400, id="version case"),
    pytest.param(b"\n\nGET /x HTTP/1.1\r\n\r\n", 400, id="bare LF lines first"),
    pytest.param(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431, id="head too large"),
]


@pytest.mark.parametrize(("request_bytes", "status"), BAD)
def test_ambiguous_requests_are_refused_and_closed(request_bytes: bytes, status: int) -> None:
    server = Server()
    got, headers, _, transport = server.send(request_bytes)
    assert got == status
    assert headers["connection"] == "close"
    assert transport.disconnecting
    assert server.requests == [] or status == 501 or server.requests[0].body_too_large


def test_a_request_sent_a_byte_at_a_time_is_read_whole() -> None:
    server = Server()
    _, transport = server.connect()
    for byte in chunked(b"5;x=1\r\nhello\r\n3\r\n!!!\r\n0\r\nX-T: 1\r\n\r\n"):
        transport.protocol.dataReceived(bytes([byte]))
    status, _, body = parse_response(transport.value())
    assert status == 200 and json.loads(body)["body"] == "hello!!!"


# Time limits -------------------------------------------------------------------------------


def run_sweeps(server: Server, seconds: float, step: float = 1.0, feed: Any = None) -> None:
    """Move the clock `seconds` in steps, calling `feed()` after each."""
    moved = 0.0
    while moved < seconds:
        server.clock.advance(step)
        moved += step
        if feed is not None:
            feed()


def test_the_head_timeout_is_a_deadline_for_the_whole_head() -> None:
    """A client sending a byte a second never goes quiet, and is cut off all the same."""
    server = Server()
    _, transport = server.connect()
    endless = iter(b"GET /x HTTP/1.1\r\nX-Slow: " + b"a" * 1000)

    def one_byte() -> None:
        if not transport.disconnecting:
            transport.protocol.dataReceived(bytes([next(endless)]))

    one_byte()
    run_sweeps(server, HEAD_TIMEOUT_S - 1, feed=one_byte)
    assert not transport.disconnecting, "cut off before the deadline"
    run_sweeps(server, SWEEP_EVERY_S + 1, feed=one_byte)
    assert transport.disconnecting, "a head still arriving a byte a second was never cut off"
    assert server.requests == []


def test_the_head_deadline_starts_again_with_each_request() -> None:
    server = Server()
    _, transport = server.connect()
    request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):
        server.clock.advance(HEAD_TIMEOUT_S - 5)
        transport.protocol.dataReceived(request[:10])
        server.clock.advance(4)
        transport.protocol.dataReceived(request[10:])
    assert len(server.requests) == 3
    assert not transport.disconnecting


def test_a_body_may_pause_but_not_stall() -> None:
    server = Server()
    _, transport = server.connect()
    transport.protocol.dataReceived(post(b"Content-Length: 100\r\n", b"a" * 10))
    # Slow but steady: a few bytes every 20 s for well past the head deadline.
    for _ in range(4):
        server.clock.advance(BODY_TIMEOUT_S - 10)
        transport.protocol.dataReceived(b"a" * 10)
    assert not transport.disconnecting
    run_sweeps(server, BODY_TIMEOUT_S + SWEEP_EVERY_S, step=SWEEP_EVERY_S)
    assert transport.disconnecting
    assert server.requests == []


def test_an_idle_keep_alive_connection_closes_after_the_idle_timeout() -> None:
    server = Server()
    _, transport = server.connect()
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(server.requests) == 1
    run_sweeps(server, IDLE_TIMEOUT_S - SWEEP_EVERY_S, step=SWEEP_EVERY_S)
    assert not transport.disconnecting
    run_sweeps(server, 2 * SWEEP_EVERY_S, step=SWEEP_EVERY_S)
    assert transport.disconnecting


def test_a_request_being_handled_is_never_timed_out() -> None:
    server = Server(hold=True)
    _, transport = server.connect()
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    run_sweeps(server, IDLE_TIMEOUT_S * 2, step=SWEEP_EVERY_S)
    assert not transport.disconnecting
    Server.answer(server.requests[0])
    assert parse_response(transport.value())[0] == 200


def test_a_request_waits_while_the_last_response_is_not_taken() -> None:
    """The transport pauses its producer, the channel, when its send buffer is full: the
    request pipelined behind is not handled, nor is more read, until the buffer drains;
    a client that takes nothing for OUTPUT_STALL_S is cut off (aborted: a close would
    wait for the buffer to drain)."""
    server = Server(hold=True)
    channel, transport = server.connect()
    get = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    transport.protocol.dataReceived(get * 2)
    channel.pauseProducing()  # what Twisted does once the buffer is over its bufferSize
    Server.answer(server.requests[0])
    assert len(server.requests) == 1
    assert transport.producerState == "paused"  # reading stopped too
    channel.resumeProducing()  # drained
    assert len(server.requests) == 2
    assert transport.producerState == "producing"
    Server.answer(server.requests[1])
    channel.pauseProducing()
    run_sweeps(server, OUTPUT_STALL_S - SWEEP_EVERY_S, step=SWEEP_EVERY_S)
    assert not transport.disconnecting
    run_sweeps(server, 2 * SWEEP_EVERY_S, step=SWEEP_EVERY_S)
    assert transport.disconnected  # StringTransport.abortConnection's mark (loseConnection leaves it)


def test_a_last_response_still_in_the_buffer_is_sent_before_the_close() -> None:
    """`Connection: close` with the send buffer full: closed once it drains, not aborted."""
    server = Server(hold=True)
    channel, transport = server.connect()
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    channel.pauseProducing()
    Server.answer(server.requests[0])
    assert transport.disconnecting and not transport.disconnected


def test_the_date_header_comes_from_the_clock() -> None:
    server = Server()
    status, headers, _, _ = server.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["date"] == "Fri, 15 Jan 2027 08:00:00 GMT"


# Shutdown ----------------------------------------------------------------------------------


def test_drain_closes_idle_connections_and_waits_for_one_still_reading() -> None:
    server = Server()
    _, idle = server.connect()
    idle.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    _, reading = server.connect()
    reading.protocol.dataReceived(post(b"Content-Length: 10\r\n", b"hello"))
    _, in_head = server.connect()
    in_head.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHo")

    drained = server.factory.drain()
    assert idle.disconnecting, "an idle keep-alive connection stays open at shutdown"
    assert not reading.disconnecting and not in_head.disconnecting
    assert not drained.called, "shutdown did not wait for connections still reading a request"

    reading.protocol.dataReceived(b"world")
    assert not drained.called
    in_head.protocol.dataReceived(b"st: x\r\n\r\n")
    assert drained.called
    for transport, body in ((reading, "helloworld"), (in_head, "")):
        status, headers, data = parse_response(transport.value())
        assert status == 200 and json.loads(data)["body"] == body
        assert headers["connection"] == "close"
        assert transport.disconnecting


def test_drain_fires_at_once_with_nothing_being_read() -> None:
    server = Server(hold=True)
    _, busy = server.connect()
    busy.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    drained = server.factory.drain()
    assert drained.called  # a request with the handler is the router's to wait for
    assert not busy.disconnecting
    Server.answer(server.requests[0])
    assert parse_response(busy.value())[1]["connection"] == "close"
    assert busy.disconnecting


def test_a_reader_that_goes_away_no_longer_holds_the_drain() -> None:
    server = Server()
    _, reading = server.connect()
    reading.protocol.dataReceived(post(b"Content-Length: 10\r\n", b"hel"))
    drained = server.factory.drain()
    assert not drained.called
    reading.loseConnection()
    assert drained.called


def test_http10_keep_alive_cannot_reopen_a_draining_connection() -> None:
    server = Server()
    _, transport = server.connect()
    transport.protocol.dataReceived(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\nHo")
    server.factory.drain()
    transport.protocol.dataReceived(b"st: x\r\n\r\n")
    assert transport.disconnecting
