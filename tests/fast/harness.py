"""In-process helpers for the fast tier: no sockets, no processes, time moved by the test.

`TestClock` is the server's Clock over twisted's task.Clock. `make_server` builds a
whole HomeServer on SQLite in a temporary directory with that clock; the real
reactor only answers the database threads. `Client` speaks HTTP to the server's
own HttpChannel over a StringTransport, so requests go through the parser, the
router and the handlers as over a socket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock as ReactorClock
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransportWithDisconnection

from homeserver.api.http_server import HttpChannel, HttpFactory
from homeserver.config import parse_config
from homeserver.core.clock import Clock
from homeserver.server import HomeServer

# A realistic start: tokens and timestamps look like today's.
START_S = 1_800_000_000.0
CS = "/_matrix/client/v3"


class TestClock(Clock):
    """The server's clock on a twisted task.Clock: time moves only by `advance`."""

    __test__ = False

    def __init__(self, start_s: float = START_S) -> None:
        self.time = ReactorClock()
        self.time.advance(start_s)
        super().__init__(self.time)

    def advance(self, seconds: float) -> None:
        self.time.advance(seconds)


def real_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def turn(delay_s: float = 0.002) -> None:
    """Let the real reactor run (database threads answer through it); real time, never the clock."""
    await deferLater(real_reactor(), delay_s, lambda: None)


async def until(condition: Any, what: str, turns: int = 5000) -> None:
    """Wait until `condition()` holds: for work on the database threads, not for time."""
    for _ in range(turns):
        if condition():
            return
        await turn()
    raise AssertionError(f"never happened: {what}")


class Transport(StringTransportWithDisconnection):
    """A transport that records what is written and fires `closed` when the server closes."""

    dataBuffer = b""  # write_now() then takes Twisted's ordinary write path

    def __init__(self, peer: IAddress | None = None) -> None:
        super().__init__(peerAddress=peer or IPv4Address("TCP", "127.0.0.1", 40000))
        self.closed: Deferred[None] = Deferred()

    def loseConnection(self) -> None:
        was_connected = self.connected
        self.disconnecting = True
        super().loseConnection()
        if was_connected and not self.closed.called:
            self.closed.callback(None)


def connect(factory: HttpFactory, peer: IAddress | None = None) -> tuple[HttpChannel, Transport]:
    """A connection from `peer` (127.0.0.1 by default), as the listening port makes one."""
    peer = peer or IPv4Address("TCP", "127.0.0.1", 40000)
    channel = factory.buildProtocol(peer)
    assert isinstance(channel, HttpChannel)
    transport = Transport(peer)
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport


def request_bytes(
    factory: HttpFactory,
    method: str,
    target: str,
    token: str | None,
    body: bytes | None,
    content_type: str = "application/json",
) -> Deferred[tuple[int, dict[str, str], bytes]]:
    """One request whose body is these bytes (as no JSON library may write them); the
    Deferred fires with the response's (status, headers, body) once answered."""
    head = f"{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body is not None:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    _, transport = connect(factory)
    transport.protocol.dataReceived(head.encode() + b"\r\n" + (body or b""))
    return transport.closed.addCallback(lambda _: parse_response(transport.value()))


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The first response in `data` (Content-Length or chunked)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, rest[: int(headers["content-length"])]
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    return status, headers, body


class Client:
    """Requests to one HomeServer over its HttpChannel, one connection each."""

    def __init__(self, hs: HomeServer) -> None:
        self.factory = hs.http if hs.http is not None else hs.site()

    def start(
        self, method: str, path: str, token: str | None = None, body: Any = None, **params: str
    ) -> Deferred[tuple[int, dict[str, Any]]]:
        """Send the request; the Deferred fires with (status, JSON body) once answered."""
        target = path + ("?" + urlencode(params) if params else "")
        raw = None if body is None else json.dumps(body).encode()

        def answered(response: tuple[int, dict[str, str], bytes]) -> tuple[int, dict[str, Any]]:
            status, _, data = response
            return status, json.loads(data) if data else {}

        return request_bytes(self.factory, method, target, token, raw).addCallback(answered)

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        status, result = await self.start(method, CS + path, token, body)
        assert status == 200, f"{method} {path}: {status} {result}"
        return result

    def sync(
        self, token: str, since: str | None = None, timeout_ms: int = 0
    ) -> Deferred[tuple[int, dict[str, Any]]]:
        params = {"timeout": str(timeout_ms)}
        if since is not None:
            params["since"] = since
        return self.start("GET", CS + "/sync", token, **params)

    async def register(self, hs: HomeServer, name: str) -> dict[str, str]:
        """An account and a session: user_id, device_id, access_token."""
        user_id = await hs.accounts.register(name, "correct horse battery")
        login = await hs.accounts.create_session(user_id, None, None, refreshable=False, ip=None)
        return {"user_id": user_id, "device_id": login.device_id, "access_token": login.tokens.access_token}

    async def alice_and_bob(self, hs: HomeServer) -> tuple[dict[str, str], dict[str, str], str]:
        """Two accounts, alice and bob, in a public room alice created and bob joined."""
        alice = await self.register(hs, "alice")
        bob = await self.register(hs, "bob")
        created = await self.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"})
        await self.call("POST", f"/join/{created['room_id']}", bob["access_token"], {})
        return alice, bob, created["room_id"]


def room_path(room_id: str) -> str:
    return f"/rooms/{quote(room_id)}"


async def make_server(tmp_path: Path, clock: TestClock, **overrides: Any) -> HomeServer:
    raw: dict[str, Any] = {
        "server_name": "fast.test",
        "data_dir": str(tmp_path / "data"),
        "database": {"url": f"sqlite:///{tmp_path / 'hs.db'}"},
        "auth": {"password_hashing": "fast"},
        "rate_limits": {"enabled": False},
        "plugins": [],
        **overrides,
    }
    hs = HomeServer(parse_config(raw, "fast-test.yaml", env={}), real_reactor(), clock=clock)
    await hs.start()
    hs.site()
    return hs
