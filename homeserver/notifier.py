"""Wakes whoever waits for news: sync long-polls and WebSocket streams.

After each commit, `on_events_committed` works out which local users the events
concern (the room's joined members and the target of a membership change) and
wakes their waiters; other streams (receipts, typing, account data, presence)
call `wake_users` directly. A waiter remembers the notifier's `version` from
before it computed its answer, so a wake-up that lands between computing an
empty answer and starting to wait is never lost (`changed_since`).

Timeouts share one timer: a waiter goes into the bucket of its deadline,
rounded up to TIMEOUT_RESOLUTION_S, and one reactor call fires the earliest
bucket. An idle long-poll then costs its Deferred and two table entries rather
than a DelayedCall and two closures each (docs/adr/0004, "Idle connections").
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.core.clock import Clock

if TYPE_CHECKING:
    from homeserver.storage.events import PersistItem

log = Logger()

# Long-poll timeouts fire up to this much late, never early.
TIMEOUT_RESOLUTION_S = 0.25


class _Waiter(Deferred[None]):
    """One long-poll's wait: fired on its user's next wake-up or at its deadline bucket."""

    __slots__ = ("user_id", "tick")

    user_id: str
    tick: int


class Notifier:
    def __init__(
        self, clock: Clock, room_members: Callable[[str], Sequence[str]] = lambda room_id: ()
    ) -> None:
        """`room_members(room_id)`: the joined members of a room, from memory."""
        self.clock = clock
        self.room_members = room_members
        self.version = 0
        self.closing = False
        self._last_woken: dict[str, int] = {}
        # One waiter (the usual case) or a list of them, by user.
        self._waiters: dict[str, _Waiter | list[_Waiter]] = {}
        # Deadline buckets (tick = deadline / TIMEOUT_RESOLUTION_S, rounded up) and a heap of
        # their ticks; a bucket stays until its tick passes, even when emptied by wake-ups.
        self._buckets: dict[int, dict[_Waiter, None]] = {}
        self._ticks: list[int] = []
        self._timer: Any = None
        self._timer_tick = 0
        self._listeners: list[Callable[[set[str]], None]] = []

    def add_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Called with the set of woken users on every wake (WebSocket streams, other processes)."""
        self._listeners.append(listener)

    def on_events_committed(self, items: "list[PersistItem]") -> None:
        """A consumer of the committed-event stream: wake the users the events concern (the
        joined members of their rooms, and the target of a membership change)."""
        users: set[str] = set()
        rooms: set[str] = set()
        for item in items:
            ev = item.event
            if ev.room_id not in rooms:
                rooms.add(ev.room_id)
                users.update(self.room_members(ev.room_id))
            if ev.type == "m.room.member" and ev.state_key:
                users.add(ev.state_key)
        self.wake_users(users)

    def wake_users(self, user_ids: Iterable[str]) -> None:
        users = set(user_ids)
        if not users:
            return
        self.version += 1
        for user_id in users:
            self._last_woken[user_id] = self.version
            entry = self._waiters.pop(user_id, None)
            if entry is not None:
                for waiter in entry if isinstance(entry, list) else (entry,):
                    bucket = self._buckets.get(waiter.tick)
                    if bucket is not None:
                        bucket.pop(waiter, None)
                    if not waiter.called:
                        waiter.callback(None)
        for listener in self._listeners:
            try:
                listener(users)
            except Exception:
                log.failure("notifier listener failed")

    def shutdown(self) -> None:
        """Answer every waiter now; waits started from here on return at once."""
        self.closing = True
        self.wake_users(list(self._waiters))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def changed_since(self, user_id: str, version: int) -> bool:
        return self._last_woken.get(user_id, 0) > version

    def wait(self, user_id: str, timeout_s: float) -> Deferred[None]:
        """Fires on the user's next wake-up, or after `timeout_s` (at most
        TIMEOUT_RESOLUTION_S late), whichever is first."""
        waiter = _Waiter()
        waiter.user_id = user_id
        tick = math.ceil((self.clock.seconds() + max(timeout_s, 0.0)) / TIMEOUT_RESOLUTION_S)
        waiter.tick = tick
        entry = self._waiters.get(user_id)
        if entry is None:
            self._waiters[user_id] = waiter
        elif isinstance(entry, list):
            entry.append(waiter)
        else:
            self._waiters[user_id] = [entry, waiter]
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
        bucket[waiter] = None
        if self._timer is None or tick < self._timer_tick:
            self._schedule(tick)
        return waiter

    def waiting_users(self) -> int:
        return len(self._waiters)

    def waiting_requests(self) -> int:
        """Long-polls waiting now (a user may have several); walked only when metrics are read."""
        return sum(len(entry) if isinstance(entry, list) else 1 for entry in self._waiters.values())

    def _schedule(self, tick: int) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_tick = tick
        delay = max(0.0, tick * TIMEOUT_RESOLUTION_S - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        """Time out the waiters of every bucket whose tick has come."""
        self._timer = None
        now = self.clock.seconds()
        ticks = self._ticks
        due: list[dict[_Waiter, None]] = []
        while ticks and ticks[0] * TIMEOUT_RESOLUTION_S <= now:
            bucket = self._buckets.pop(heapq.heappop(ticks), None)
            if bucket:
                due.append(bucket)
        # Callbacks may start new waits (and schedule the timer): only after the buckets are out.
        for bucket in due:
            for waiter in bucket:
                self._forget(waiter)
                if not waiter.called:
                    waiter.callback(None)
        if ticks and (self._timer is None or ticks[0] < self._timer_tick):
            self._schedule(ticks[0])

    def _forget(self, waiter: _Waiter) -> None:
        user_id = waiter.user_id
        entry = self._waiters.get(user_id)
        if entry is waiter:
            del self._waiters[user_id]
        elif isinstance(entry, list):
            try:
                entry.remove(waiter)
            except ValueError:
                return
            if len(entry) == 1:
                self._waiters[user_id] = entry[0]
            elif not entry:
                del self._waiters[user_id]
