"""Behind a load balancer (`listen.trusted_proxies`) per-address limits count the client's
address from X-Forwarded-For; from anyone else the header is ignored, so a client cannot
dodge a limit by writing the header itself."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import CS, TestClock, connect, make_server, parse_response

from homeserver.api.forwarded import client_address, parse_networks
from homeserver.config import ConfigError, parse_config
from homeserver.server import HomeServer

pytestmark = pytest.mark.fast

# The harness's connections come from 127.0.0.1.
LOOPBACK = parse_networks(["127.0.0.1/32"])


def test_the_rightmost_untrusted_address_is_the_client() -> None:
    proxies = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])
    # The client wrote 1.2.3.4 itself; our proxies appended 203.0.113.9 and then 10.1.1.1.
    assert client_address("127.0.0.1", b"1.2.3.4, 203.0.113.9, 10.1.1.1", proxies) == "203.0.113.9"
    assert client_address("127.0.0.1", b"2001:db8::1", proxies) == "2001:db8::1"
    # An untrusted peer is taken at its word: its own address.
    assert client_address("192.0.2.7", b"203.0.113.9", proxies) == "192.0.2.7"
    # Nothing to go on past garbage: the last address a trusted proxy vouched for.
    assert client_address("127.0.0.1", b"203.0.113.9, not-an-address", proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", b"not-an-address, 10.1.1.1", proxies) == "10.1.1.1"
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    assert client_address("::ffff:127.0.0.1", b"203.0.113.9", proxies) == "203.0.113.9"


def test_bad_ranges_are_config_errors(tmp_path: Path) -> None:
    base = {"server_name": "fast.test", "data_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="trusted_proxies"):
        parse_config({**base, "listen": {"trusted_proxies": ["10.0.0.0/33"]}})
    config = parse_config({**base, "listen": {"trusted_proxies": ["10.0.0.0/8", "::1"]}})
    assert parse_networks(config.listen.trusted_proxies) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


async def login(hs: HomeServer, *forwarded_for: str) -> tuple[int, dict[str, Any]]:
    """A login attempt with one X-Forwarded-For line per argument."""
    body = json.dumps(
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "x"}
    ).encode()
    lines = "".join(f"X-Forwarded-For: {line}\r\n" for line in forwarded_for)
    head = (
        f"POST {CS}/login HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{lines}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    assert hs.http is not None
    _, transport = connect(hs.http)
    transport.protocol.dataReceived(head.encode() + body)
    await transport.closed
    status, _, data = parse_response(transport.value())
    return status, json.loads(data)


async def statuses(hs: HomeServer, forwarded_for: str, n: int) -> list[int]:
    return [(await login(hs, forwarded_for))[0] for _ in range(n)]


LIMITS = {"enabled": True, "login_per_ip": {"per_second": 0.01, "burst": 2}}


@pytest_twisted.ensureDeferred
async def test_login_limit_counts_the_forwarded_client_behind_a_trusted_proxy(tmp_path: Path) -> None:
    hs = await make_server(
        tmp_path, TestClock(), rate_limits=LIMITS, listen={"trusted_proxies": ["127.0.0.1/32"]}
    )
    hs.site()
    try:
        assert await statuses(hs, "203.0.113.1", 3) == [403, 403, 429]
        # Another client behind the same balancer has its own bucket.
        assert await statuses(hs, "203.0.113.2", 2) == [403, 403]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_behind_two_balancers_each_appending_a_line_the_client_is_on_the_first(tmp_path: Path) -> None:
    # HAProxy (`option forwardfor`) appends a line of its own rather than extending the last.
    # Read from the last line alone, every client would be the outer balancer (10.1.1.1) and
    # share its login bucket: one guesser would lock everyone out.
    hs = await make_server(
        tmp_path, TestClock(), rate_limits=LIMITS, listen={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]}
    )
    hs.site()
    try:
        outer = "10.1.1.1"
        assert [(await login(hs, "203.0.113.1", outer))[0] for _ in range(3)] == [403, 403, 429]
        assert (await login(hs, "203.0.113.2", outer))[0] == 403
        # A line the client wrote itself, before the balancers', proves nothing.
        assert (await login(hs, "198.51.100.7", "203.0.113.1", outer))[0] == 429
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_the_header_is_ignored_when_the_peer_is_not_a_trusted_proxy(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock(), rate_limits=LIMITS)
    hs.site()
    try:
        assert await statuses(hs, "203.0.113.1", 2) == [403, 403]
        # A new address in the header is no new bucket: the peer (127.0.0.1) is what counts.
        assert (await login(hs, "203.0.113.2"))[0] == 429
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_addresses_of_one_ipv6_64_share_a_login_bucket(tmp_path: Path) -> None:
    # A host is commonly given a whole /64: a fresh address per attempt must not be a
    # fresh bucket (password guessing would have no limit at all).
    hs = await make_server(
        tmp_path, TestClock(), rate_limits=LIMITS, listen={"trusted_proxies": ["127.0.0.1/32"]}
    )
    hs.site()
    try:
        assert await statuses(hs, "2001:db8:1:2::1", 1) + await statuses(hs, "2001:db8:1:2::2", 1) == [
            403,
            403,
        ]
        assert (await login(hs, "2001:db8:1:2::3"))[0] == 429
        assert (await login(hs, "2001:db8:1:3::1"))[0] == 403  # another /64
    finally:
        await hs.stop(None)
