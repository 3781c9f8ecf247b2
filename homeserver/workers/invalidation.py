"""Caches that a write on one process makes stale on the others (docs/scaling.md, "Caches
across processes"): revoked access tokens, one-time key counts, account restrictions,
blocked rooms, pushers, forgotten rooms.

The process that writes publishes what changed on a "cache.<name>" channel after its
commit; every other process drops or reloads that entry. A process that was disconnected
from the bus drops or reloads them all when it reconnects: it cannot know what it missed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.logs import log_failure

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = Logger()


class CacheInvalidation:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.bus = hs.bus

    def wire(self) -> None:
        hs = self.hs
        self._channel("tokens.revoked", self._tokens_revoked)
        hs.tokens.on_revoked = lambda ids, devices: self.bus.publish(
            "tokens.revoked", {"token_ids": ids, "devices": [list(d) for d in devices]}
        )
        self._channel("cache.key_counts", lambda m: hs.keys.forget_counts(m["user_id"], m["device_id"]))
        hs.keys.on_counts_dropped = lambda user_id, device_id: self.bus.publish(
            "cache.key_counts", {"user_id": user_id, "device_id": device_id}
        )
        self._channel("cache.restrictions", lambda m: self._reload(hs.restrictions.start))
        hs.restrictions.on_change = lambda: self.bus.publish("cache.restrictions", {})
        self._channel("cache.blocked_rooms", lambda m: self._reload(hs.admin.reload_blocked))
        hs.admin.on_rooms_blocked = lambda: self.bus.publish("cache.blocked_rooms", {})
        self._channel("cache.pushers", lambda m: self._reload(lambda: hs.pushers.refresh(*m["user_ids"])))
        hs.pushers.on_change = lambda user_ids: self.bus.publish("cache.pushers", {"user_ids": user_ids})
        self._channel("cache.forgotten_rooms", lambda m: hs.rooms.drop_forgotten(m["user_id"]))
        hs.rooms.on_forgotten = lambda user_id: self.bus.publish(
            "cache.forgotten_rooms", {"user_id": user_id}
        )
        # A deleted device's long-polls on other processes end now with M_UNKNOWN_TOKEN.
        self._channel("devices.deleted", self._devices_deleted)

        async def publish_deleted(user_id: str, device_ids: list[str]) -> None:
            self.bus.publish("devices.deleted", {"user_id": user_id, "device_ids": device_ids})

        hs.accounts.on_devices_deleted.append(publish_deleted)
        self.bus.on_connected(self._reconnected)

    def _channel(self, channel: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.bus.subscribe(channel, handler)

    def _tokens_revoked(self, message: dict[str, Any]) -> None:
        self.hs.tokens.drop(message["token_ids"], [(u, d) for u, d in message["devices"]])

    def _devices_deleted(self, message: dict[str, Any]) -> None:
        self._reload(lambda: self.hs.sync.devices_deleted(message["user_id"], message["device_ids"]))

    def _reload(self, reload: Callable[[], Any]) -> None:
        async def run() -> None:
            try:
                await reload()
            except Exception:
                log_failure(log, "could not reload a cache another process changed")

        Deferred.fromCoroutine(run())

    async def _reconnected(self) -> None:
        """Whatever was published while disconnected is lost: start these caches afresh."""
        hs = self.hs
        hs.tokens.clear()
        hs.keys.forget_all_counts()
        hs.rooms.drop_all_forgotten()
        await hs.restrictions.start()
        await hs.admin.reload_blocked()
        await hs.pushers.refresh_all()
