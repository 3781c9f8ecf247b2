"""How many connections the client-facing listeners hold, in total and per client address.

Each connection is a file descriptor. Without a bound, one machine could open tens of
thousands (idle keep-alives, heads sent a byte at a time up to their deadline, /sync
long-polls held for their timeout) until accept() fails with EMFILE for everyone. A
connection past either cap is closed as soon as it is accepted, before anything is read
(HttpChannel.connectionMade); its place comes back when it closes, however that happens
(HttpChannel.connectionLost, or the WebSocket stream's end once handed over).
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.logger import Logger

from homeserver.api.forwarded import Network, is_trusted
from homeserver.core.clock import Clock
from homeserver.core.ratelimit import address_block

log = Logger()

# A warning per address (and one for the total cap) at most this often, not one a connection.
WARN_EVERY_S = 60.0
# File descriptors the process keeps for itself when `listen.max_connections` is derived:
# the database pool, Redis, the listening sockets, logs, outgoing federation, push and
# worker connections.
RESERVED_FDS = 256


def raise_open_files_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one (Debian's soft default is 1,024, its
    hard one far more); the new soft limit. Run at start, before the caps are derived."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft  # a hard limit the kernel refuses as soft (over fs.nr_open): keep it
        return hard
    return soft


def default_max_connections() -> int:
    """`listen.max_connections` when the config leaves it empty: of the soft RLIMIT_NOFILE,
    RESERVED_FDS kept back, then a quarter of the rest for what requests open (media files,
    bodies spooled to temporary files) and for outgoing connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, (soft - RESERVED_FDS) * 3 // 4)


class ConnectionCap:
    """The count behind both caps; shared by the listeners it guards.

    A connection is counted under a key: its client address (an IPv6 client by its /64,
    as the rate limits count it), or "" for one counted in the total only (from a trusted
    proxy, which brings every client: the balancer enforces the per-address cap there).
    """

    def __init__(
        self, clock: Clock, per_address: int, total: int, trusted_proxies: tuple[Network, ...] = ()
    ) -> None:
        self.clock = clock
        self.per_address = per_address
        self.total = total
        self.trusted_proxies = trusted_proxies
        self.open = 0
        self.refused_per_address = 0
        self.refused_total = 0
        self._by_address: dict[str, int] = {}
        # Connections handed to another protocol (a WebSocket stream), with their keys.
        self._handed_over: dict[Any, str] = {}
        # The clock's seconds of the last warning, by key ("": the total cap).
        self._warned: dict[str, float] = {}

    def admit(self, peer: Any) -> str | None:
        """The key a new connection from `peer` (an IAddress) is counted under, or None
        when it is over a cap: the caller closes it and must not release it."""
        if self.open >= self.total:
            self.refused_total += 1
            self._warn(
                "", "{open} connections open, listen.max_connections: refusing new ones", open=self.open
            )
            return None
        host = getattr(peer, "host", None)  # None: a UNIX socket
        key = ""
        if host is not None and not is_trusted(host, self.trusted_proxies):
            key = address_block(host)
            count = self._by_address.get(key, 0)
            if count >= self.per_address:
                self.refused_per_address += 1
                self._warn(
                    key,
                    "{count} connections open from {address}, listen.max_connections_per_ip:"
                    " refusing its new ones",
                    count=count,
                    address=key,
                )
                return None
            self._by_address[key] = count + 1
        self.open += 1
        return key

    def release(self, key: str) -> None:
        """A connection admitted under `key` closed."""
        self.open -= 1
        if key:
            count = self._by_address[key] - 1
            if count:
                self._by_address[key] = count
            else:
                del self._by_address[key]

    def hand_over(self, protocol: Any, key: str) -> None:
        """The connection admitted under `key` now belongs to `protocol`, which calls
        handed_over_lost when it closes."""
        self._handed_over[protocol] = key

    def handed_over_lost(self, protocol: Any) -> None:
        key = self._handed_over.pop(protocol, None)
        if key is not None:
            self.release(key)

    def _warn(self, key: str, text: str, **fields: Any) -> None:
        now = self.clock.seconds()
        last = self._warned.get(key)
        if last is not None and now - last < WARN_EVERY_S:
            return
        if len(self._warned) >= 1024:
            self._warned = {k: t for k, t in self._warned.items() if now - t < WARN_EVERY_S}
        self._warned[key] = now
        log.warn(text + " (logged once a minute)", **fields)
