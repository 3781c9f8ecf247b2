"""Which devices are connected (a sync long-poll or a WebSocket stream open), and how far
each device has proven receipt of the event stream.

The push plugin asks this to suppress pushes a device does not need: a connected device
gets a committed event by sync anyway, and proves it (a later sync `since` at or past the
event, or a WebSocket ack) within moments; a device that is not connected, a phone asleep,
needs the push. A device counts as connected for `grace_s` after its last connection
closed too: between one long-poll's answer and the next request nothing is open.

All in memory: after a restart every device starts unconnected and with no receipt.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from homeserver.core.clock import Clock

Device = tuple[str, str]  # (user id, device id)


class DeviceConnections:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._open: dict[Device, int] = {}
        self._closed_at: dict[Device, float] = {}  # monotonic seconds
        self._received: dict[Device, int] = {}
        self._waiters: dict[Device, list[tuple[int, Deferred[bool]]]] = {}

    def opened(self, user_id: str, device_id: str) -> None:
        key = (user_id, device_id)
        self._open[key] = self._open.get(key, 0) + 1

    def closed(self, user_id: str, device_id: str) -> None:
        key = (user_id, device_id)
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
            self._closed_at[key] = self.clock.monotonic()

    def connected(self, user_id: str, device_id: str, grace_s: float) -> bool:
        """Whether the device has a connection open, or closed its last one less than
        `grace_s` ago."""
        key = (user_id, device_id)
        if key in self._open:
            return True
        closed_at = self._closed_at.get(key)
        return closed_at is not None and self.clock.monotonic() - closed_at < grace_s

    def acknowledge(self, user_id: str, device_id: str, position: int) -> None:
        """The device proved receipt of every event up to `position`."""
        key = (user_id, device_id)
        if position <= self._received.get(key, 0):
            return
        self._received[key] = position
        waiters = self._waiters.get(key)
        if waiters:
            due = [d for p, d in waiters if p <= position]
            waiters[:] = [(p, d) for p, d in waiters if p > position]
            if not waiters:
                del self._waiters[key]
            for d in due:
                if not d.called:
                    d.callback(True)

    def received(self, user_id: str, device_id: str) -> int:
        """How far the device has proven receipt (0: not since start-up)."""
        return self._received.get((user_id, device_id), 0)

    def wait_for_receipt(
        self, user_id: str, device_id: str, position: int, timeout_s: float
    ) -> Deferred[bool]:
        """Fires True once the device proves receipt of `position`, or False after `timeout_s`."""
        key = (user_id, device_id)
        d: Deferred[bool] = Deferred()
        if self._received.get(key, 0) >= position or timeout_s <= 0:
            d.callback(self._received.get(key, 0) >= position)
            return d
        entry = (position, d)
        self._waiters.setdefault(key, []).append(entry)

        def expire() -> None:
            waiters = self._waiters.get(key)
            if waiters is not None and entry in waiters:
                waiters.remove(entry)
                if not waiters:
                    del self._waiters[key]
            if not d.called:
                d.callback(False)

        timer = self.clock.callLater(timeout_s, expire)
        d.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return d
