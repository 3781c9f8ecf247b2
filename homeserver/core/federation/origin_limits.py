"""Per-origin limits on inbound federation requests, applied once the X-Matrix signature
has named the origin (a forger cannot spend another server's allowance).

Two limits per origin server: a token bucket on the request rate (the shared RateLimiter,
on the injected clock), and a cap on requests handled at once. Past the cap a request
waits its turn in a bounded queue; past the queue it is refused. Both refusals are 429
M_LIMIT_EXCEEDED with retry_after_ms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred

from homeserver.config import FederationConfig
from homeserver.core.ratelimit import RateLimiter
from homeserver.errors import LimitExceeded

# When the queue is full nothing says when a slot frees (handlers take what they take):
# a second is long enough for a few of them to finish.
QUEUE_FULL_RETRY_MS = 1000

Release = Callable[[], None]


class OriginLimits:
    def __init__(self, ratelimiter: RateLimiter, config: FederationConfig) -> None:
        self.ratelimiter = ratelimiter
        self.config = config
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[Deferred[None]]] = {}

    async def admit(self, origin: str) -> Release:
        """Take one request of `origin` through the limits, waiting for a slot if need be;
        the caller must call the returned release once the request is answered.
        LimitExceeded when the origin is over its rate or its queue is full."""
        if not self.ratelimiter.enabled:
            return _nothing
        self.ratelimiter.check("federation_origin", origin, self.config.rc_requests)
        if self._running.get(origin, 0) < self.config.rc_concurrent:
            self._running[origin] = self._running.get(origin, 0) + 1
        else:
            queue = self._waiting.setdefault(origin, deque())
            if len(queue) >= self.config.rc_queued:
                raise LimitExceeded(retry_after_ms=QUEUE_FULL_RETRY_MS)
            turn: Deferred[None] = Deferred()
            queue.append(turn)
            await turn  # the slot is handed over by a release, still counted as running
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(origin)

        return release

    def _release(self, origin: str) -> None:
        queue = self._waiting.get(origin)
        if queue:
            queue.popleft().callback(None)
            if not queue:
                del self._waiting[origin]
            return
        left = self._running[origin] - 1
        if left:
            self._running[origin] = left
        else:
            del self._running[origin]

    def check_key_request(self, ip: str) -> None:
        """One request to the unsigned /_matrix/key/v2 routes from `ip`: they name no
        origin, and a notary query makes us fetch from up to ten servers, so a bucket per
        client address keeps one address from turning us into its fetcher.
        LimitExceeded when it is empty."""
        self.ratelimiter.check_address("federation_key_ip", ip, self.config.rc_key_requests_per_ip)

    def running(self, origin: str) -> int:
        return self._running.get(origin, 0)

    def waiting(self, origin: str) -> int:
        return len(self._waiting.get(origin, ()))


def _nothing() -> None:
    pass
