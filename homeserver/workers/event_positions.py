"""Event stream positions with several event writers, without asking the database for them.

Writer k of n hands out the positions that are k modulo n, increasing (with one writer,
every integer: the positions are today's). So writers never collide and a position
alone says which writer wrote it. Each writer keeps a **promise** P: every event it will
still write has a position above P. While events are queued or committing, P is the
lowest of them minus one; otherwise it is the next position it would hand out minus one.

Every process may read the event stream up to the lowest promise of all writers: below
it, every event is committed or will never be (a failed event leaves a gap). A writer
that is idle while others write would hold that minimum back, so when it sees another
writer's event above its own next position it moves its next position above that event
(`observe`), and with it its promise. Only events move a writer, never another writer's
promise: two idle writers would otherwise push each other up forever.

An idle writer moved only by `observe` answers each of the others' events with a promise over
the bus, and their own processes wait for that reply before publishing the event. So a writer
that has allocated nothing for a heartbeat promises ahead instead (`skip_past`, saved before it
is announced): AHEAD positions past the newest event it has seen, renewed when the others get
within half of that (workers/event_replication.py).

A writer that dies keeps its last promise until it restarts or another writer fences it
(workers/writer_fence.py): the stream waits for it until then. One stopped gracefully
retires and the others carry its promise meanwhile
(workers/event_replication.py; docs/architecture.md, "Several event writers"). On start a
writer begins above every position stored and every promise saved (`start_after`), so
nothing it writes can land below what a reader has already read.
"""

from __future__ import annotations

from collections import deque


class WriterPositions:
    """The positions one event writer hands out, and its promise.

    The persister (core/persist.py) calls `allocate` while it builds an event, `queued` with
    the first position of each request it queues and `settled` once that request committed
    or failed; requests settle in the order they were queued.
    """

    __slots__ = ("name", "index", "count", "epoch", "allocated", "_next", "_in_flight")

    def __init__(self, name: str = "main", index: int = 0, count: int = 1, start_after: int = 0) -> None:
        if not 0 <= index < count:
            raise ValueError(f"writer index {index} outside 0..{count - 1}")
        self.name = name
        self.index = index
        self.count = count
        self.epoch = 0  # of this writer's start, named by its saves (storage/stream_writers.py)
        self._next = self._first_above(start_after)
        self.allocated = 0  # positions handed out so far (whether the writer is idle)
        # First positions of the requests queued or committing, oldest first.
        self._in_flight: deque[int] = deque()

    @property
    def multi(self) -> bool:
        return self.count > 1

    def _first_above(self, position: int) -> int:
        """The smallest position of this writer above `position`."""
        step = self.count
        return position + 1 + (self.index - position - 1) % step

    def allocate(self) -> int:
        """The next position; called synchronously while an event is built."""
        position = self._next
        self._next += self.count
        self.allocated += 1
        return position

    def queued(self, first: int) -> None:
        """A request whose first event is at `first` was queued to be written."""
        self._in_flight.append(first)

    def settled(self, first: int) -> None:
        """The request queued with `first` committed or failed."""
        in_flight = self._in_flight
        if in_flight and in_flight[0] == first:
            in_flight.popleft()
        else:
            in_flight.remove(first)

    @property
    def promise(self) -> int:
        """Every event this writer will still write has a position above this one."""
        if self._in_flight:
            return self._in_flight[0] - 1
        return self._next - 1

    def promise_after(self, last: int) -> int:
        """The promise once the requests up to position `last` have committed (saved in that
        commit's transaction): what is queued after them still holds it back."""
        for first in self._in_flight:
            if first > last:
                return first - 1
        return self._next - 1

    def observe(self, position: int) -> None:
        """Another writer wrote an event at `position`: hand out positions above it from now on."""
        if position >= self._next:
            self._next = self._first_above(position)

    def skip_past(self, position: int) -> None:
        """Hand out positions above `position` from now on: an idle writer promising ahead of
        the others (workers/event_replication.py saves that promise before announcing it)."""
        self.observe(position)

    @property
    def in_flight(self) -> bool:
        return bool(self._in_flight)

    @property
    def next_position(self) -> int:
        return self._next


def global_position(promises: dict[str, int]) -> int:
    """How far every process may read the event stream: the lowest promise."""
    return min(promises.values())
