"""Wakes whoever waits for news: sync long-polls and WebSocket streams.

After each commit, `on_events_committed` works out which local users the events
concern (the room's joined members and the target of a membership change) and
wakes their waiters; other streams (receipts, typing, account data, presence)
call `wake_users` directly. A waiter remembers the notifier's `version` from
before it computed its answer, so a wake-up that lands between computing an
empty answer and starting to wait is never lost (`changed_since`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()


class Notifier:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.version = 0
        self.closing = False
        self._last_woken: dict[str, int] = {}
        self._waiters: dict[str, set[Deferred[None]]] = {}
        self._listeners: list[Callable[[set[str]], None]] = []

    def add_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Called with the set of woken users on every wake (WebSocket streams, other processes)."""
        self._listeners.append(listener)

    def wake_users(self, user_ids: Iterable[str]) -> None:
        users = set(user_ids)
        if not users:
            return
        self.version += 1
        for user_id in users:
            self._last_woken[user_id] = self.version
            for waiter in self._waiters.pop(user_id, ()):
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

    def changed_since(self, user_id: str, version: int) -> bool:
        return self._last_woken.get(user_id, 0) > version

    def wait(self, user_id: str, timeout_s: float) -> Deferred[None]:
        """Fires on the user's next wake-up, or after `timeout_s`, whichever is first."""
        d: Deferred[None] = Deferred()
        waiters = self._waiters.setdefault(user_id, set())
        waiters.add(d)

        def on_timeout() -> None:
            if not d.called:
                waiters.discard(d)
                if not waiters:
                    self._waiters.pop(user_id, None)
                d.callback(None)

        call = self.reactor.callLater(timeout_s, on_timeout)

        def cancel_timer(result: None) -> None:
            if call.active():
                call.cancel()
            return result

        d.addBoth(cancel_timer)
        return d

    def waiting_users(self) -> int:
        return len(self._waiters)
