"""Token-bucket rate limits keyed by (action, ip) or (action, account)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable

from homeserver.config import RateLimit, RateLimitsConfig
from homeserver.core.clock import Clock
from homeserver.errors import LimitExceeded

# Past this many buckets, full (idle) ones are dropped so memory stays bounded.
_MAX_BUCKETS = 100_000


def _whole_ms(wait_s: float) -> int:
    """Rounded up (a client waiting that long finds a token), past float noise."""
    return max(1, math.ceil(round(wait_s * 1000, 6)))


# What one account does, each limited by `rate_limits.<action>_per_user`.
USER_ACTIONS = (
    "send",
    "create_room",
    "join",
    "invite",
    "media_upload",
    "report",
    "profile_update",
    "create_alias",
    "typing",
    "to_device",
    "receipt",
)


class RateLimiter:
    def __init__(self, clock: Clock, enabled: bool = True, limits: RateLimitsConfig | None = None) -> None:
        self.clock = clock
        self.enabled = enabled
        self.limits = limits or RateLimitsConfig()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        # Several processes (homeserver/workers/shared_limits.py): called as
        # on_take(action, key, cost, limit) after each take here, so the others take it too.
        self.on_take: Callable[[str, str, float, RateLimit], None] | None = None

    def check_user(self, action: str, user_id: str, cost: float = 1.0, *, overdraw: bool = False) -> None:
        """Take `cost` of `action` (one of USER_ACTIONS) from `user_id`'s bucket, or raise
        LimitExceeded. `overdraw`: one token is enough and the bucket may go below zero (a
        cost past the burst is let through once, then the bucket refills from below)."""
        if action not in USER_ACTIONS:
            raise ValueError(f"unknown rate-limited action {action!r}")
        self.check(action, user_id, getattr(self.limits, f"{action}_per_user"), cost, overdraw=overdraw)

    def check(
        self, action: str, key: str, limit: RateLimit, cost: float = 1.0, *, overdraw: bool = False
    ) -> None:
        """Take `cost` from the bucket; raise LimitExceeded (with retry_after_ms) if empty.
        `overdraw`: at most one token must be there, and the bucket may go below zero."""
        if not self.enabled:
            return
        now = self.clock.monotonic()
        tokens, last = self._buckets.get((action, key), (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.per_second)
        need = min(cost, 1.0) if overdraw else cost
        if tokens < need:
            self._buckets[(action, key)] = (tokens, now)
            wait_s = (need - tokens) / limit.per_second if limit.per_second > 0 else 3600.0
            raise LimitExceeded(retry_after_ms=_whole_ms(wait_s))
        self._buckets[(action, key)] = (tokens - cost, now)
        if len(self._buckets) > _MAX_BUCKETS:
            self._prune(now)
        if self.on_take is not None:
            self.on_take(action, key, cost, limit)

    def check_address(self, action: str, ip: str, limit: RateLimit, cost: float = 1.0) -> None:
        """`check` for a client address, by its block (address_block)."""
        self.check(action, address_block(ip), limit, cost)

    def taken_elsewhere(self, action: str, key: str, cost: float, limit: RateLimit) -> None:
        """Another process let `cost` through for this key: take it here too, never raising
        (the bucket may go below zero: this process then waits for it to refill)."""
        now = self.clock.monotonic()
        tokens, last = self._buckets.get((action, key), (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.per_second)
        self._buckets[(action, key)] = (tokens - cost, now)

    def peek(self, action: str, key: str, limit: RateLimit) -> None:
        """Raise LimitExceeded if the bucket is empty, without taking from it."""
        if not self.enabled:
            return
        now = self.clock.monotonic()
        tokens, last = self._buckets.get((action, key), (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.per_second)
        if tokens < 1:
            wait_s = (1 - tokens) / limit.per_second if limit.per_second > 0 else 3600.0
            raise LimitExceeded(retry_after_ms=_whole_ms(wait_s))

    def _prune(self, now: float) -> None:
        # A bucket idle for an hour has refilled for any sane limit.
        buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 3600}
        if len(buckets) > _MAX_BUCKETS // 2:
            # All in use (one client with many addresses can do that): keep the most recently
            # used half, so the table stays bounded and the next scan is _MAX_BUCKETS / 2
            # requests away rather than on every request. A dropped bucket starts full again.
            newest = sorted(buckets.items(), key=lambda item: item[1][1], reverse=True)
            buckets = dict(newest[: _MAX_BUCKETS // 2])
        self._buckets = buckets


_FIRST_64_BITS = ((1 << 64) - 1) << 64


def address_block(ip: str) -> str:
    """The bucket key of a client address: an IPv6 address by its /64, since one host is
    commonly given a whole /64 and could take a fresh address (a fresh bucket) for every
    request; IPv4, an IPv4-mapped IPv6 address and anything unparsed as the address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # The network's text without building an IPv6Network (a quarter of the time: this
        # runs for every connection accepted, api/connection_cap.py).
        return f"{ipaddress.IPv6Address(int(address) & _FIRST_64_BITS)}/64"
    return str(address)
