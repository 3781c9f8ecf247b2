"""Outgoing POSTs (Web Push endpoints, forward targets) that cannot be turned on the
server's own network (server-side request forgery).

Blocking: run it with `PluginApi.run_blocking`. The host name is resolved once, every
address it resolves to is checked (loopback, private, link-local, shared, multicast,
reserved and unspecified ranges, their IPv4-mapped, 6to4, Teredo and NAT64 forms, and
the configured blacklist; the whitelist wins), and the connection goes to a checked
address, so a second resolution (DNS rebinding) cannot swap in an internal one.
Redirects are not followed: a push service or gateway has no reason to send one.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from homeserver.plugins import address_blocked
from plugins.push.gateway.config import IpNetwork

# A push service answers in a few bytes; a gateway's `rejected` list is short.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "homeserver-push-gateway"


class BlockedAddress(Exception):
    """The target resolves to an address outgoing requests may not reach."""


class Unreachable(Exception):
    """No answer: the name did not resolve, the connection failed or timed out."""


@dataclass(frozen=True)
class IpPolicy:
    blacklist: tuple[IpNetwork, ...] = ()
    whitelist: tuple[IpNetwork, ...] = ()

    def blocks(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return address_blocked(ip, self.blacklist, self.whitelist)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, policy: IpPolicy) -> HttpAnswer:
    """POST `body` to `url` (http or https) if its host passes `policy`.

    @raise BlockedAddress: the host resolves to a blocked address.
    @raise Unreachable: no HTTP answer.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise BlockedAddress(f"not an http(s) URL: {url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _checked_address(host, port, policy)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)

    # Connect to the checked address, never to a new resolution of the name (TLS still
    # checks the certificate against the host name).
    def connect_checked(_addr: Any, timeout: float | None = None, source: Any = None) -> socket.socket:
        return socket.create_connection((address, port), timeout, source)

    conn._create_connection = connect_checked  # type: ignore[attr-defined]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers={"User-Agent": USER_AGENT, **headers})
        response = conn.getresponse()
        return HttpAnswer(response.status, response.read(MAX_RESPONSE_BYTES))
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"{parts.netloc}: {e.__class__.__name__}: {e}") from None
    finally:
        conn.close()


def _checked_address(host: str, port: int, policy: IpPolicy) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Unreachable(f"cannot resolve {host}: {e}") from None
    addresses = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]
        if policy.blocks(ipaddress.ip_address(raw)):
            raise BlockedAddress(f"{host} resolves to {raw}, which outgoing requests may not reach")
        addresses.append(raw)
    if not addresses:
        raise Unreachable(f"cannot resolve {host}")
    return addresses[0]
