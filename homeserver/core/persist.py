"""Group commit: events queued by many requests are written in one transaction per tick.

An fsync'd commit is the slowest step of a send, so one transaction per message caps
a process at a few hundred messages/s; batching every event that arrived while the
previous commit ran lifts that to thousands (STACK-NOTES, "Group commit"). Each caller
is answered only after the commit that holds its event. Batches commit strictly one
after another, in stream order, and each is published on the committed-event stream
(core/event_stream.py) before the next one is, so everything up to the last event of
the last published batch is persisted: that is the position readers may advance to
(`persisted_upto`).

What queued while a commit ran is written while that commit is published: the
database works on the next batch while this thread wakes the syncs (publishing runs
here, so the next batch's outcome is handled only after it). Waiting for the
publishing and then GATHER_S more made that cycle (commit ~2 ms, publishing ~1.6,
gathering 2) the queue every message waited in at 1,000 messages/s on two cores
(docs/latency.md, "ejabberd beside us"). Two cases still gather into fewer, larger
batches instead of writing ahead:
- GATHER_UNDER or more requests wait: this thread is the bottleneck, so the next batch
  goes after the publishing, with what arrived meanwhile (each woken sync then answers
  more of them);
- the last cycle's publishing took GATHER_AFTER_SLOW_S or more (waking the members of a
  big room): each commit wakes the room's members once, so in a 500-member room fewer,
  larger commits made fan-out a third faster (W3), and GATHER_S is little beside that
  cycle; requests that arrive during a publishing (none waited at its commit's answer)
  gather too when GATHER_FROM or more wait.

When a write fails:
- the database cannot be reached (`DatabaseUnavailable`: nothing was stored): the batch
  is written again after a pause (RETRY_MIN_S doubling to RETRY_MAX_S, so a database
  that returns is used within RETRY_MAX_S), until the database has been unreachable
  for GIVE_UP_S; then its events fail;
- the connection broke after COMMIT was sent (`CommitOutcomeUnknown`): the database is
  asked whether the batch's first event is stored (a transaction is all or nothing),
  again after each pause until it answers. The batch then counts as committed, or is
  written again. It is never assumed failed: a client that retries the send with the
  same transaction id must get the event that was stored;
- any other error: the batch's requests are written one by one, so one bad event
  fails only its own request.
An event that fails takes with it every later event of its room (they were built on
it; their prev_events would name an event that does not exist): the room heads know
(`RoomHeads.mark_failed`) and rebuild the room's head from the database once none of
them is left in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.core.room_heads import RoomHeads
from homeserver.errors import ServiceUnavailable, StorageFull
from homeserver.storage.connection_pool import CommitOutcomeUnknown, DatabaseUnavailable
from homeserver.storage.events import EventStore, PersistItem
from homeserver.workers.event_positions import WriterPositions

log = Logger()

GATHER_S = 0.002
GATHER_FROM = 2
GATHER_AFTER_SLOW_S = 0.005
GATHER_UNDER = 8
RETRY_MIN_S = 0.05
RETRY_MAX_S = 0.5
GIVE_UP_S = 30.0


class EarlierEventFailed(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("An earlier event in this room could not be stored; try again")


class NotRoomWriter(ServiceUnavailable):
    """An event of a room another process writes (a bug: its write was not forwarded).
    Nothing is stored; the client may retry (maybe through another process)."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"This process does not write {room_id}; try again")


@dataclass
class _Pending:
    items: list[PersistItem]
    queued_at: float = 0.0
    done: Deferred[None] = field(default_factory=Deferred)


@dataclass
class _Ahead:
    """A batch whose write has started."""

    batch: list[_Pending]
    write: Deferred[None]
    started: float


class EventPersister:
    def __init__(
        self,
        store: EventStore,
        heads: RoomHeads,
        publish: Callable[[int, list[PersistItem]], None],
        timer: Any,
        positions: WriterPositions | None = None,
    ) -> None:
        """`publish(upto, items)` is called after each commit, in stream order. `timer` (the
        reactor, or a Clock in tests) times the gathering wait and the retry pauses.
        `positions`: this writer's share of the positions (homeserver/workers/event_positions.py);
        by default the only writer's, every integer."""
        self.store = store
        self.positions = positions or WriterPositions()
        # Several processes read the stream: each commit saves this writer's promise with it.
        self.save_promise = False
        self.heads = heads
        self._publish = publish
        self._timer = timer
        self._queue: list[_Pending] = []
        self._running = False
        self._last_queued = 0
        self._unavailable_since: float | None = None
        self.persisted_upto = 0
        # The current commit cycle: when it started, and how long commit + publishing took.
        self._cycle_started = 0.0
        self._cycle_s = 0.0
        # Whether the last cycle took GATHER_AFTER_SLOW_S or more (then nothing is written
        # ahead of its successor's publishing).
        self._last_slow = False
        # When the current batch's commit was answered (timed only when `on_stage` is set).
        self._answered_at = 0.0
        # Told the size of each committed batch (the metrics).
        self.on_commit: Callable[[int], None] | None = None
        # With several processes: whether this one writes a room (Topology.writes_room). An
        # event of a room written elsewhere reaching here is a write that was not forwarded.
        self.owns_room: Callable[[str], bool] | None = None
        # Told the last position of a request that failed (it no longer holds the promise
        # back, yet is stored nowhere: workers/event_replication.py saves a promise past it
        # before announcing one).
        self.on_failed: Callable[[int], None] | None = None
        # The highest promise saved with a commit (when `save_promise`).
        self.saved_promise = 0
        # Set by `close()`: no event is taken any more.
        self._closed = False
        self._idle: list[Deferred[None]] = []
        # Told how long each stage took ("queued", "commit", "publish"; homeserver/send_stages.py).
        self.on_stage: Callable[[str, float], None] | None = None

    async def start(self, start_after: int | None = None) -> None:
        """Positions continue above the newest stored event, or above `start_after` (with
        several writers: every stored position and saved promise)."""
        self.persisted_upto = await self.store.max_stream_ordering()
        after = self.persisted_upto if start_after is None else max(start_after, self.persisted_upto)
        positions = self.positions
        self.positions = WriterPositions(positions.name, positions.index, positions.count, after)
        self.positions.epoch = positions.epoch
        self._last_queued = self.positions.next_position

    async def close(self) -> None:
        """Take no more events, and return once those queued are committed or failed (a
        graceful stop, before the writer hands its promise over)."""
        self._closed = True
        if self._running or self._queue:
            idle: Deferred[None] = Deferred()
            self._idle.append(idle)
            await idle

    def publish_to(self, publish: Callable[[int, list[PersistItem]], None]) -> None:
        """Hand each commit to `publish` instead (several writers: workers/event_replication.py)."""
        self._publish = publish

    def allocate_stream_ordering(self) -> int:
        """The next stream position of this writer; called synchronously while building an event."""
        return self.positions.allocate()

    def persist(self, items: list[PersistItem]) -> Deferred[None]:
        """Queue events (already in stream order) to be written together; fires after their commit.

        Events must be queued in the order their positions were allocated: build and
        persist with no await in between (core/events.py).
        """
        if self._closed:
            raise ServiceUnavailable("This process is shutting down; try again")
        if self.owns_room is not None:
            for item in items:
                if not self.owns_room(item.event.room_id):
                    raise NotRoomWriter(item.event.room_id)
        first = items[0].event.stream_ordering
        if first < self._last_queued:
            raise AssertionError(f"event at position {first} queued after {self._last_queued}")
        self._last_queued = items[-1].event.stream_ordering
        for item in items:
            self.heads.hold(item.event.room_id)
        self.positions.queued(first)
        pending = _Pending(items, self._timer.seconds())
        self._queue.append(pending)
        if not self._running:
            Deferred.fromCoroutine(self._drain())
        return pending.done

    async def _drain(self) -> None:
        self._running = True
        try:
            ahead: _Ahead | None = None
            while self._queue or ahead is not None:
                if ahead is None:
                    batch, self._queue = self._queue, []
                    ahead = self._begin(batch)
                    if ahead is None:
                        continue
                self._cycle_started = self._timer.seconds()
                self._cycle_s = 0.0
                ahead = await self._commit(ahead)
                self._last_slow = self._cycle_s >= GATHER_AFTER_SLOW_S
                if ahead is not None:
                    continue
                waiting = len(self._queue)
                if (waiting >= GATHER_FROM or (waiting and self._last_slow)) and waiting < GATHER_UNDER:
                    await self._sleep(GATHER_S)
        finally:
            self._running = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _begin(self, batch: list[_Pending]) -> _Ahead | None:
        """Start writing `batch` (less what fails with its room); None if nothing is left."""
        batch = [p for p in batch if not self._fails_with_its_room(p)]
        if not batch:
            return None
        started = self._timer.seconds()
        if self.on_stage is not None:
            for p in batch:
                self.on_stage("queued", started - p.queued_at)
        items = [item for p in batch for item in p.items]
        return _Ahead(batch, Deferred.fromCoroutine(self._write(items)), started)

    async def _commit(self, current: _Ahead) -> _Ahead | None:
        """Wait for `current`'s write, then publish it; the next batch, if one was started."""
        batch = current.batch
        try:
            await current.write
        except StorageFull as e:
            # No space for any of them: no point writing them one by one, and the disk
            # watch has said so in the log already (homeserver/disk_full.py).
            for p in batch:
                for item in p.items:
                    self.heads.mark_failed(item.event.room_id, item.event.stream_ordering)
                self._fail(p, e)
            return None
        except Exception:
            n = sum(len(p.items) for p in batch)
            log.failure("batch of {n} events failed; retrying them one request at a time", n=n)
            await self._commit_one_by_one(batch)
            return None
        if self.on_stage is not None:
            self._answered_at = self._timer.seconds()
            self.on_stage("commit", self._answered_at - current.started)
        # The database writes the next batch while this one is published (on this thread),
        # unless the last cycle was slow (a big room's fan-out) or requests pile up (this
        # thread is the bottleneck): those gather into fewer, larger batches instead.
        ahead = None
        if 0 < len(self._queue) < GATHER_UNDER and not self._last_slow:
            following, self._queue = self._queue, []
            ahead = self._begin(following)
        try:
            self._committed(batch)
        except Exception:
            # The batch is stored and its callers answered; the one written ahead must
            # still be seen through, or its callers would wait for ever.
            log.failure("publishing a commit failed")
        return ahead

    async def _commit_one_by_one(self, batch: list[_Pending]) -> None:
        for p in batch:
            if self._fails_with_its_room(p):
                continue
            try:
                await self._write(p.items)
            except Exception as e:
                log.failure("persisting events failed")
                for item in p.items:
                    self.heads.mark_failed(item.event.room_id, item.event.stream_ordering)
                self._fail(p, e)
                continue
            self._committed([p])

    def _fails_with_its_room(self, p: _Pending) -> bool:
        """Fail `p` if an earlier event of its room failed (it was built on that one)."""
        if any(self.heads.built_on_failed(i.event.room_id, i.event.stream_ordering) for i in p.items):
            self._fail(p, EarlierEventFailed())
            return True
        return False

    async def _write(self, items: list[PersistItem]) -> None:
        """Write `items` in one transaction; return once they are stored.

        @raise DatabaseUnavailable: the database was unreachable for GIVE_UP_S.
        @raise Exception: the transaction failed (nothing of it was stored).
        """
        delay = RETRY_MIN_S
        while True:
            try:
                if self.save_promise:
                    promise = self.positions.promise_after(items[-1].event.stream_ordering)
                    positions = self.positions
                    await self.store.persist_events(items, (positions.name, promise, positions.epoch))
                    self.saved_promise = max(self.saved_promise, promise)
                else:
                    await self.store.persist_events(items)
                self._unavailable_since = None
                return
            except CommitOutcomeUnknown:
                log.warn("commit of {n} events had no answer; asking the database", n=len(items))
                if await self._stored(items[0]):
                    self._unavailable_since = None
                    return
                log.info("the {n} events were not stored; writing them again", n=len(items))
            except DatabaseUnavailable:
                now = self._timer.seconds()
                if self._unavailable_since is None:
                    self._unavailable_since = now
                if now - self._unavailable_since >= GIVE_UP_S:
                    raise
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _stored(self, item: PersistItem) -> bool:
        """Whether the event is stored, asking until the database answers."""
        delay = RETRY_MIN_S
        while True:
            try:
                return await self.store.event_stored(item.event.event_id)
            except DatabaseUnavailable:
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _committed(self, batch: list[_Pending]) -> None:
        items = [item for p in batch for item in p.items]
        # Positions of failed events are never used: readers skip the gap.
        self.persisted_upto = max(self.persisted_upto, items[-1].event.stream_ordering)
        if self.on_commit is not None:
            self.on_commit(len(items))
        for p in batch:
            self.positions.settled(p.items[0].event.stream_ordering)
        try:
            self._publish(self.persisted_upto, items)
        finally:
            # Timed before the callers hear back: what they do next (a test moving its
            # clock a day on) is not part of this cycle and must not make it look slow.
            published = self._timer.seconds()
            self._cycle_s = published - self._cycle_started
            if self.on_stage is not None and self._answered_at:
                # Publishing only: the callers' answers below are not part of it.
                self.on_stage("publish", published - self._answered_at)
                self._answered_at = 0.0
            for item in items:
                self.heads.release(item.event.room_id)
            for p in batch:
                p.done.callback(None)

    def _fail(self, p: _Pending, error: Exception) -> None:
        for item in p.items:
            self.heads.release(item.event.room_id)
        self.positions.settled(p.items[0].event.stream_ordering)
        if self.on_failed is not None:
            self.on_failed(p.items[-1].event.stream_ordering)
        p.done.errback(error)

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._timer.callLater(seconds, d.callback, None)
        return d
