"""Where to connect for a server name (Server-Server API, "Server discovery", "Resolving
server names").

In order: an IP literal or an explicit port is used as is; else the host's
/.well-known/matrix/server may delegate to another host (whose own explicit port, SRV
records or 8448 then apply); else SRV `_matrix-fed._tcp` then the deprecated `_matrix._tcp`;
else port 8448. Each answer also says what the Host header and the TLS certificate must
name, which differ between the cases.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from homeserver.core.clock import Clock

DEFAULT_PORT = 8448

# .well-known answers are kept as long as Cache-Control says, 24 h without one, never over
# 48 h; a failed or invalid answer is asked again after FAILURE_CACHE_S (spec: at most an hour).
WELL_KNOWN_DEFAULT_S = 24 * 3600
WELL_KNOWN_MAX_S = 48 * 3600
WELL_KNOWN_MIN_S = 60
FAILURE_CACHE_S = 600
# Host names whose answers are kept at most (the names come from other people's input).
MAX_CACHED_HOSTS = 10_000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*no-(?:store|cache)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Destination:
    """How to reach a server: connect to `host`:`port`, send `host_header`, and expect a
    certificate for `tls_name`."""

    host: str
    port: int
    host_header: str
    tls_name: str


@dataclass(frozen=True)
class WellKnownAnswer:
    """A fetched /.well-known/matrix/server: status, body and Cache-Control (None: failed)."""

    status: int | None
    body: bytes = b""
    cache_control: str | None = None


# fetch_well_known(host) -> the answer of GET https://host/.well-known/matrix/server
WellKnownFetcher = Callable[[str], Awaitable[WellKnownAnswer]]
# lookup_srv(name) -> [(priority, weight, target, port)], [] when there is none
SrvLookup = Callable[[str], Awaitable[list[tuple[int, int, str, int]]]]


def split_server_name(server_name: str) -> tuple[str, int | None]:
    """(host, port or None); the host of an IPv6 literal keeps its brackets. ValueError if bad."""
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::(\d{1,5}))?", server_name)
    if m is None:
        raise ValueError(f"not a server name: {server_name!r}")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port}")
    return m.group(1), port


def ip_literal(host: str) -> str | None:
    """The address if `host` is an IPv4 or bracketed IPv6 literal."""
    try:
        return str(ipaddress.ip_address(host[1:-1] if host.startswith("[") else host))
    except ValueError:
        return None


def well_known_lifetime(status: int | None, cache_control: str | None) -> float:
    """Seconds to keep a .well-known answer."""
    if status != 200:
        return FAILURE_CACHE_S
    if cache_control and _NO_STORE.search(cache_control):
        return WELL_KNOWN_MIN_S
    m = _MAX_AGE.search(cache_control or "")
    if m is None:
        return WELL_KNOWN_DEFAULT_S
    return float(min(max(int(m.group(1)), WELL_KNOWN_MIN_S), WELL_KNOWN_MAX_S))


def delegated_name(answer: WellKnownAnswer) -> str | None:
    """The valid `m.server` of an answer, else None (then discovery goes on without it)."""
    if answer.status != 200:
        return None
    try:
        body = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    delegated = body.get("m.server") if isinstance(body, dict) else None
    if not isinstance(delegated, str):
        return None
    try:
        split_server_name(delegated)
    except ValueError:
        return None
    return delegated


class ServerResolver:
    """Resolves server names to Destinations, keeping .well-known answers for their lifetime."""

    def __init__(self, clock: Clock, fetch_well_known: WellKnownFetcher, lookup_srv: SrvLookup) -> None:
        self.clock = clock
        self.fetch_well_known = fetch_well_known
        self.lookup_srv = lookup_srv
        self._well_known: dict[str, tuple[str | None, float]] = {}  # host -> (m.server, expiry)

    async def resolve(self, server_name: str) -> Destination:
        host, port = split_server_name(server_name)
        address = ip_literal(host)
        if address is not None:
            return Destination(address, port or DEFAULT_PORT, server_name, address)
        if port is not None:
            return Destination(host, port, server_name, host)
        delegated = await self._delegation(host)
        if delegated is not None:
            d_host, d_port = split_server_name(delegated)
            d_address = ip_literal(d_host)
            if d_address is not None:
                return Destination(d_address, d_port or DEFAULT_PORT, delegated, d_address)
            if d_port is not None:
                return Destination(d_host, d_port, delegated, d_host)
            return await self._by_srv(d_host)
        return await self._by_srv(host)

    async def _by_srv(self, host: str) -> Destination:
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            records = await self.lookup_srv(f"{service}.{host}")
            # The lowest priority first, and the heaviest among equals (no failover yet).
            usable = sorted((r for r in records if r[2] not in ("", ".")), key=lambda r: (r[0], -r[1]))
            if usable:
                _, _, target, port = usable[0]
                return Destination(target.rstrip("."), port, host, host)
        return Destination(host, DEFAULT_PORT, host, host)

    async def _delegation(self, host: str) -> str | None:
        now = self.clock.seconds()
        cached = self._well_known.get(host)
        if cached is not None and cached[1] > now:
            return cached[0]
        answer = await self.fetch_well_known(host)
        delegated = delegated_name(answer)
        lifetime = well_known_lifetime(answer.status if delegated else None, answer.cache_control)
        if len(self._well_known) >= MAX_CACHED_HOSTS:
            self._well_known = {h: v for h, v in self._well_known.items() if v[1] > now}
            if len(self._well_known) >= MAX_CACHED_HOSTS:
                self._well_known.clear()
        self._well_known[host] = (delegated, now + lifetime)
        return delegated
