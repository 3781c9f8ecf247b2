"""Routing a notification's devices to their apps, with retries, and the answer.

Each app kind is a `Sender`: it delivers one notification to some devices of its app and
returns the pushkeys the upstream service says are gone. A send that fails for a reason
that may pass (a 5xx, a timeout, a quota) raises `TryAgain` and is tried again after a
pause that doubles; one that cannot succeed raises `Failed`. Either, once the tries are
spent, makes the whole request fail with 502, so the homeserver sends it again later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from homeserver.plugins import MatrixError
from plugins.push.gateway.config import RetryPolicy
from plugins.push.gateway.notification import Device, Notification

log = Logger()
T = TypeVar("T")


class TryAgain(Exception):
    """A failure that may pass: worth another try after a pause."""


class Failed(Exception):
    """A failure another try would not fix (a refused message, bad credentials)."""


class Sender(Protocol):
    async def send(self, notification: Notification, devices: list[Device]) -> list[str]:
        """Deliver to `devices` (all of this app); the pushkeys rejected upstream."""
        ...


async def with_retries(clock: IReactorTime, policy: RetryPolicy, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`, tried up to `policy.attempts` times while it raises TryAgain.

    @raise Failed: it raised Failed, or TryAgain on its last try.
    """
    delay_s = policy.initial_delay_ms / 1000
    for n in range(1, policy.attempts + 1):
        try:
            return await attempt()
        except TryAgain as e:
            if n == policy.attempts:
                raise Failed(f"gave up after {n} tries: {e}") from None
            log.info("push: try {n} failed ({error}); again in {delay}s", n=n, error=e, delay=delay_s)
            await task.deferLater(clock, delay_s)
            delay_s *= 2
    raise AssertionError("unreachable")


class Gateway:
    """Routes each device to the sender of its app id; unknown app ids are rejected."""

    def __init__(self, senders: dict[str, Sender]) -> None:
        self.senders = senders

    async def notify(self, notification: Notification) -> list[str]:
        """The pushkeys to report as rejected.

        @raise MatrixError: 502 when some device could not be delivered to.
        """
        rejected: list[str] = []
        by_app: dict[str, list[Device]] = {}
        for device in notification.devices:
            if device.app_id in self.senders:
                by_app.setdefault(device.app_id, []).append(device)
            else:
                # As Sygnal does: a pushkey of an app this gateway does not serve will never
                # be delivered, so the homeserver may as well drop the pusher.
                rejected.append(device.pushkey)
        sends = [
            defer.Deferred.fromCoroutine(self.senders[app_id].send(notification, devices))
            for app_id, devices in by_app.items()
        ]
        results = await defer.DeferredList(sends, consumeErrors=True)
        failures: list[str] = []
        for (ok, value), app_id in zip(results, by_app, strict=True):
            if isinstance(value, Failure):
                log.warn("push: delivery for app {app_id} failed: {error}", app_id=app_id, error=value.value)
                failures.append(app_id)
            elif ok:
                rejected.extend(value)
        if failures:
            raise MatrixError(
                f"Could not deliver to app(s) {', '.join(sorted(failures))}; try again later",
                "M_UNKNOWN",
                status=502,
            )
        return rejected


async def each_device(devices: list[Device], deliver: Callable[[Device], Awaitable[bool]]) -> list[str]:
    """Run `deliver(device)` (True: the pushkey is rejected) for all devices at once; the
    rejected pushkeys. If any raised, raise the first error once all are done."""
    results = await defer.DeferredList(
        [defer.Deferred.fromCoroutine(_coro(deliver, d)) for d in devices], consumeErrors=True
    )
    rejected = []
    for (_, value), device in zip(results, devices, strict=True):
        if isinstance(value, Failure):
            value.raiseException()
        if value:
            rejected.append(device.pushkey)
    return rejected


async def _coro(deliver: Callable[[Device], Awaitable[bool]], device: Device) -> bool:
    return await deliver(device)
