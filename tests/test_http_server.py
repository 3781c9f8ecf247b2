"""The HTTP server itself (homeserver/api/http_server.py), on a real server process over raw sockets:
keep-alive, pipelining, HTTP/1.0, chunked and 100-continue bodies, HEAD, and what it refuses."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import parse_qs, quote, quote_plus, urlencode

import requests
from conftest import ServerProcess
from hypothesis import given
from hypothesis import strategies as st

from homeserver.api.http_server import parse_query

VERSIONS = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n"
LOGIN_PATH = b"/_matrix/client/v3/login"


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_response(
    sock: socket.socket, buf: bytearray, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket (Content-Length or chunked; just the head for a HEAD
    request); what follows stays in `buf`."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed mid-response: {bytes(buf)!r}"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[: end + 4]
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only:
        return status, headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buf) < length:
            buf += sock.recv(65536)
        body = bytes(buf[:length])
        del buf[:length]
        return status, headers, body
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        while b"\r\n" not in buf:
            buf += sock.recv(65536)
        line_end = buf.index(b"\r\n")
        size = int(bytes(buf[:line_end]), 16)
        del buf[: line_end + 2]
        while len(buf) < size + 2:
            buf += sock.recv(65536)
        body += bytes(buf[:size])
        del buf[: size + 2]
        if size == 0:
            return status, headers, body


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_serves_several_requests_on_one_connection(server: ServerProcess) -> None:
    with connect(server) as sock:
        buf = bytearray()
        for _ in range(3):
            sock.sendall(VERSIONS)
            status, headers, body = read_response(sock, buf)
            assert status == 200
            assert json.loads(body)["versions"][0] == "r0.6.1"
            assert headers["content-type"] == "application/json"
            assert headers["access-control-allow-origin"] == "*"
            assert "date" in headers


def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    unknown = b"GET /_matrix/client/v3/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(VERSIONS + unknown + VERSIONS)
        buf = bytearray()
        statuses = [read_response(sock, buf)[0] for _ in range(3)]
    assert statuses == [200, 404, 200]


def test_a_client_that_stops_reading_gets_no_further_request_handled(server: ServerProcess) -> None:
    """Back-pressure on responses: a client that sends requests and never reads the answers
    holds one response in the server, not one per request (each of these is ~2 MB: the
    kernel's send buffer, up to 4 MiB, takes a couple more); once it reads, the rest are
    answered in order."""
    user = server.register(f"reader{time.monotonic_ns()}")
    auth = {"Authorization": f"Bearer {user['access_token']}"}
    client = f"http://127.0.0.1:{server.port}/_matrix/client/v3"
    room = requests.post(f"{client}/createRoom", json={}, headers=auth, timeout=10).json()["room_id"]
    for i in range(40):
        r = requests.put(
            f"{client}/rooms/{quote(room)}/send/m.room.message/big{i}",
            json={"msgtype": "m.text", "body": f"{i} " + "x" * 50_000},
            headers=auth,
            timeout=10,
        )
        assert r.status_code == 200, r.text
    path = f"/_matrix/client/v3/rooms/{quote(room, safe='')}/messages"
    request = (
        f"GET {path}?dir=b&limit=40 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n\r\n"
    )
    served_line = f"GET {path} 200"
    count = 20
    # A tiny receive window: the server's send buffer fills with the first answer.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    with sock:
        sock.sendall(request.encode() * count)
        server.wait_for_log(served_line)
        # Handling all 20 takes about a second; they wait for the client instead.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            served = server.log_text().count(served_line)
            assert served <= 4, f"{served} answers queued for a client that reads none"
            time.sleep(0.1)
        buf = bytearray()
        for _ in range(count):
            status, _, body = read_response(sock, buf)
            assert status == 200 and len(json.loads(body)["chunk"]) == 40
    assert server.wait_for_log(served_line).count(served_line) == count


def test_http_1_0_closes_unless_keep_alive_is_asked(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /_matrix/client/versions HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(sock, bytearray())
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_server(sock)
    with connect(server) as sock:
        buf = bytearray()
        request = b"GET /_matrix/client/versions HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        for _ in range(2):
            sock.sendall(request)
            assert read_response(sock, buf)[0] == 200


def test_connection_close_is_honoured(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200
        assert closed_by_server(sock)


def login_body() -> bytes:
    # A well-formed login for nobody: the handler answers 403, proving it read the whole body.
    return json.dumps(
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "x"}
    ).encode()


def test_chunked_request_bodies_are_reassembled(server: ServerProcess) -> None:
    body = login_body()
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )
    request = (
        b"POST " + LOGIN_PATH + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n" + chunks + b"0\r\nX-Trailer: 1\r\n\r\n"
    )
    with connect(server) as sock:
        # Sent a few bytes at a time, so every parser state meets a split.
        for i in range(0, len(request), 5):
            sock.sendall(request[i : i + 5])
            time.sleep(0.001)
        sock.sendall(VERSIONS)
        buf = bytearray()
        status, _, answer = read_response(sock, buf)
        assert (status, json.loads(answer)["errcode"]) == (403, "M_FORBIDDEN")
        assert read_response(sock, buf)[0] == 200


def test_expect_100_continue_gets_an_interim_answer(server: ServerProcess) -> None:
    body = login_body()
    with connect(server) as sock:
        sock.sendall(
            b"POST " + LOGIN_PATH + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_response(sock, bytearray())[0] == 403


def test_head_has_the_length_but_no_body(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(VERSIONS.replace(b"GET", b"HEAD") + VERSIONS)
        buf = bytearray()
        status, headers, _ = read_response(sock, buf, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        # No body on the wire: the next response starts right after the head.
        assert read_response(sock, buf)[0] == 200


def test_absolute_form_targets_are_routed_by_their_path(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET http://example.org/_matrix/client/versions HTTP/1.1\r\nHost: example.org\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200


def test_malformed_requests_are_refused_and_closed(server: ServerProcess) -> None:
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /_matrix/client/versions HTTP/2.0\r\n\r\n", 400),
        (b"GET /_matrix/client/versions HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET /_matrix/client/versions HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        # chunked not last: the length cannot be known (RFC 9112 6.1); a coding we lack: 501.
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431),
    ]
    for request, expected in cases:
        with connect(server) as sock:
            sock.sendall(request)
            status, headers, body = read_response(sock, bytearray())
            assert status == expected, request[:60]
            assert headers["connection"] == "close"
            assert json.loads(body)["errcode"] == "M_UNKNOWN"
            assert closed_by_server(sock)
    # The server is unharmed.
    with connect(server) as sock:
        sock.sendall(VERSIONS)
        assert read_response(sock, bytearray())[0] == 200


def test_percent_encoded_utf8_query_values_reach_handlers(server: ServerProcess) -> None:
    # /register/available decodes the username: an invalid (non-ASCII) localpart is
    # M_INVALID_USERNAME, not a server error from the query parser.
    with connect(server) as sock:
        sock.sendall(
            b"GET /_matrix/client/v3/register/available?username=%C3%A9t%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status, _, body = read_response(sock, bytearray())
    assert status == 400 and json.loads(body)["errcode"] == "M_INVALID_USERNAME"


@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=6), st.booleans())
def test_query_parsing_follows_parse_qs(pairs: list[tuple[str, str]], plus_for_space: bool) -> None:
    query = urlencode(pairs, quote_via=quote_plus if plus_for_space else quote).encode()
    expected = parse_qs(query.decode(), keep_blank_values=True)
    parsed = parse_query(query)
    assert {k.decode(): [v.decode() for v in vs] for k, vs in parsed.items()} == expected
    assert parse_query(b"a&b=&=c&&d=%zz&e=%C3%A9") == {
        b"a": [b""],
        b"b": [b""],
        b"": [b"c"],
        b"d": [b"%zz"],
        b"e": ["é".encode()],
    }
