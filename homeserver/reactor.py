"""The epoll reactor, minus a per-event logging context.

Twisted's epoll reactor runs every ready socket's doRead/doWrite inside
`log.callWithLogger`, which pushes and pops a context dict so that legacy
`twisted.python.log` messages get the protocol's prefix. Nothing here logs
through that API, and the wrapper cost ~3 % of the reactor thread's time
under load (py-spy, W1). Errors still reach the log: `_doReadOrWrite` logs
what a protocol raises and drops its connection, as before.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.epollreactor import EPollReactor


class LeanEPollReactor(EPollReactor):
    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - twisted's name
        try:
            ready = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        handle = self._doReadOrWrite
        selectables: dict[int, Any] = self._selectables
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is not None:  # it may have been removed by an earlier event
                handle(selectable, fd, event)

    # The reactor's loop calls doIteration, which EPollReactor binds to its own doPoll when
    # the class is made: without this line the override above would never run.
    doIteration = doPoll


def install() -> None:
    """Make LeanEPollReactor the global reactor (before anything imports the default)."""
    from twisted.internet.main import installReactor

    installReactor(LeanEPollReactor())
