"""When and from where each device was last seen: `last_seen_ts` and `last_seen_ip` in
GET /devices (a user's "Sessions" list, where a stolen session shows itself) and the
admin API's users list.

Every authenticated request marks its device, but the database hears of it at most once
per WRITE_EVERY_S per device (or at once when the address changes): the hot path costs a
dictionary lookup, and a device's row is written a few times an hour however busy it is.
The write runs apart from the request; a failed one (database down, disk full) is dropped,
the next request tries again.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.errors import StorageFull
from homeserver.logs import log_failure
from homeserver.storage import Storage

log = Logger(namespace="homeserver.device_activity")

WRITE_EVERY_S = 300
# Devices remembered; past it the least recently seen is forgotten (its next request writes).
MAX_DEVICES = 100_000


class DeviceActivity:
    def __init__(self, storage: Storage, clock: Clock) -> None:
        self.storage = storage
        self.clock = clock
        # (user, device) -> (when last written, ms; the address written)
        self._written: OrderedDict[tuple[str, str], tuple[int, str | None]] = OrderedDict()

    def seen(self, user_id: str, device_id: str, ip: str | None) -> None:
        key = (user_id, device_id)
        now_ms = self.clock.time_ms()
        last = self._written.get(key)
        if last is not None and last[1] == ip and now_ms - last[0] < WRITE_EVERY_S * 1000:
            return
        self._written[key] = (now_ms, ip)
        self._written.move_to_end(key)
        if len(self._written) > MAX_DEVICES:
            self._written.popitem(last=False)
        Deferred.fromCoroutine(self._write(key, now_ms, ip))

    async def _write(self, key: tuple[str, str], now_ms: int, ip: str | None) -> None:
        try:
            await self.storage.devices.touch_device(key[0], key[1], now_ms, ip)
        except StorageFull:
            self._written.pop(key, None)
        except Exception:
            self._written.pop(key, None)
            log_failure(log, "could not record that a device was seen")
