"""Which event a (user, device, txnId) already produced, answered from memory.

A device's transaction ids from the last day are loaded in one query the first
time it sends after start-up; after that every check is a dict lookup, so the
send path makes no idempotency query of its own. A device that a login here has
just made (its id drawn at random, never used before) has none, so its first send
needs no query either: after a burst of logins (clients reconnecting, a load test
starting) those first sends would otherwise queue for the database pool together,
one query each. (A device id the client names may have been used before: read.) Like
Synapse, a transaction id is remembered for 24 hours: clients retry within
seconds or minutes.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred

from homeserver.core.clock import Clock
from homeserver.storage.events import EventStore

TXN_ID_LIFETIME_MS = 24 * 3600 * 1000
_MAX_DEVICES = 20_000


class TxnIdCache:
    def __init__(self, store: EventStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._devices: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        self._loading: dict[tuple[str, str], list[Deferred[None]]] = {}

    async def lookup(self, user_id: str, device_id: str, txn_id: str) -> str | None:
        """The event id this transaction produced, if any."""
        key = (user_id, device_id)
        if key in self._loading:
            waiter: Deferred[None] = Deferred()
            self._loading[key].append(waiter)
            await waiter
        cache = self._devices.get(key)
        if cache is None:
            self._loading[key] = []
            try:
                since = self.clock.time_ms() - TXN_ID_LIFETIME_MS
                cache = await self.store.recent_txn_ids(user_id, device_id, since)
                self._keep(key, cache)
            finally:
                for w in self._loading.pop(key):
                    w.callback(None)
        self._devices.move_to_end(key)
        return cache.get(txn_id)

    def new_device(self, user_id: str, device_id: str) -> None:
        """A device made just now, with a new id: it has sent nothing yet."""
        key = (user_id, device_id)
        if key not in self._devices and key not in self._loading:
            self._keep(key, {})

    def _keep(self, key: tuple[str, str], cache: dict[str, str]) -> None:
        """Hold a device's ids, dropping the least recently used device past _MAX_DEVICES."""
        self._devices[key] = cache
        if len(self._devices) > _MAX_DEVICES:
            self._devices.popitem(last=False)

    def remember(self, user_id: str, device_id: str, txn_id: str, event_id: str) -> None:
        """Record a committed transaction (only devices already loaded need it)."""
        cache = self._devices.get((user_id, device_id))
        if cache is not None:
            cache[txn_id] = event_id


def scoped_txn_id(scope: str, txn_id: str) -> str:
    """The stored key of a client's txn id on one endpoint (spec: ids are scoped per endpoint).

    Length-prefixed so that no txn id (any string a path can carry) collides with another scope.
    """
    return f"{len(scope)}:{scope}{txn_id}"


def client_txn_id(stored: str) -> str:
    """The txn id the client sent, from a stored key (unscoped keys pass through)."""
    length, sep, rest = stored.partition(":")
    if sep and length.isdigit() and int(length) <= len(rest):
        return rest[int(length) :]
    return stored
