"""The ordered stream of committed events, read by each consumer from its own position.

After each commit the persister publishes the events it just wrote, in stream order,
with the position they bring the stream to (core/persist.py). Publications arrive
strictly in position order; the positions of events that failed to persist are gaps.

Inline consumers (the timeline cache, sync's bookkeeping, unread counts, the notifier)
are called synchronously, in registration order, before `publish` returns: each is a
memory update of microseconds, and a reader that sees position p must find everything
up to p in them. They cannot fall behind. An exception in one is logged and the next
one runs.

Subscribed consumers (plugins, pushers, later the federation sender) each run on their
own coroutine. `publish` appends the batch to each one's queue and returns; a consumer
whose queue passes MAX_QUEUED_EVENTS is no longer queued for: it catches up from the
database in pages (`EventStore.committed_events`) and is queued for again once it has
reached the stream's position. So a slow consumer never slows the send path or another
consumer. Queued batches are handed over merged, up to MAX_BATCH_EVENTS at a time.

A durable consumer keeps its position in the database (table `stream_consumers`) and
resumes from it after a restart or a kill -9. The guarantee is at least once, in order:

- every committed event is handed to it, in stream order, none skipped;
- before a batch is handed over, the position it reaches is saved as `handed_upto`
  (together with the position of everything handled before it); once the consumer has
  nothing more to do, `position` is saved equal to it;
- after a crash, the consumer resumes at its saved `position`. The only events handed
  to it again are those in (position, handed_upto]: the batch it was handling, or whose
  completion was being recorded, when the process died. Their batch carries
  `redelivered_upto = handed_upto`, so the consumer can tell each repeat by its stream
  position (`StreamBatch.maybe_repeated`);
- a handler that raises gets the same batch again after a pause (RETRY_MIN_S doubling up
  to RETRY_MAX_S, or to RETRY_MAX_OUTAGE_S while the database is unavailable, logged then
  as one line without a traceback); a non-durable consumer's failed batch is logged and
  skipped.

What it costs: each hand-over record is a database write (a commit, so an fsync) per
batch, and at a steady few hundred messages/s most batches are a single event. So a
durable consumer may narrow what it gets:

- `wants(event)`: events it does not want are dropped from its batches; a batch left
  empty is not handed over at all, so it needs no record; its `position` is saved
  lazily (one write within LAZY_SAVE_S, busy or idle, and at stop). After a crash such
  events are read again and dropped again: the handler is never handed them, so nothing
  is repeated. A `wants` that raises counts as wanting the event;
- `idempotent`: handing a batch again does no harm (its writes replace themselves, as
  the search index's do, or it records what it acted on, as the push plugin does). No
  hand-over record is written and `position` is saved lazily, as above, releases of
  holds included: after a crash, about LAZY_SAVE_S of batches come again, unmarked;
- `gather_s`: woken from idle by a commit, the consumer waits that long (`pause`) before
  its next batch, so that it runs after the commit's publishing and with the events of
  that time (the push plugin: 2 ms, when the members' next long-polls are in).

Holds: a consumer may keep working on a batch after its handler returned (a push waiting
for a device's receipt, a request to a slow gateway). `batch.hold()` returns a release
callable. The consumer's `position` (the one saved, and the one `reached` waits for) moves
past a batch only once its handler returned and every hold on it and on every earlier
batch is released; later batches keep being handed over meanwhile (`handled_upto` is how
far it has been handed and handled). So `handed_upto` keeps its meaning above: after a
crash, the events in (position, handed_upto] come again, marked, and with holds that range
covers every batch whose holds were still out. A consumer that takes holds must release
each one (after its work is done, or recorded as its own to finish later); a hold never
released keeps its batch, and everything after it, to be handed again after a restart.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from homeserver.errors import ServiceUnavailable, StorageFull
from homeserver.logs import log_failure
from homeserver.storage.events import EventStore, PersistItem, StoredEvent
from homeserver.storage.stream_consumers import StreamConsumerStore

log = Logger()

MAX_QUEUED_EVENTS = 10_000
MAX_BATCH_EVENTS = 1_000
CATCH_UP_PAGE = 500
RETRY_MIN_S = 1.0
RETRY_MAX_S = 300.0
# While the database is down (ServiceUnavailable) or its disk full (StorageFull) the pause
# stops doubling here, so that a consumer resumes within seconds of its return instead of
# minutes; one retry per consumer every few seconds costs nothing.
RETRY_MAX_OUTAGE_S = 5.0
# How soon a position moved without a hand-over record (see "What it costs") is saved.
LAZY_SAVE_S = 1.0
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,199}")

InlineConsumer = Callable[[list[PersistItem]], None]
Wants = Callable[[StoredEvent], bool]


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """Events with `after` < position <= `upto`, oldest first (gaps are failed events)."""

    after: int
    upto: int
    items: list[PersistItem]
    # Events at positions up to here may have been handed over before, in a run that died.
    redelivered_upto: int = 0
    # Set on the batch a consumer hands over: its holds (see the module docstring).
    holds: "BatchHolds | None" = field(default=None, compare=False, repr=False)

    def maybe_repeated(self, item: PersistItem) -> bool:
        return item.event.stream_ordering <= self.redelivered_upto

    def hold(self) -> Callable[[], None]:
        """Keep the consumer's position behind this batch until the returned callable is
        called (once; later calls do nothing). Later batches are still handed over."""
        if self.holds is None:
            return _nothing
        return self.holds.take()


def _nothing() -> None:
    pass


class BatchHolds:
    """The unreleased holds on one handed batch; settled once handled with none left."""

    __slots__ = ("consumer", "upto", "count", "handled")

    def __init__(self, consumer: "StreamConsumer", upto: int) -> None:
        self.consumer = consumer
        self.upto = upto
        self.count = 0
        self.handled = False

    def take(self) -> Callable[[], None]:
        self.count += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.count -= 1
                if self.count == 0 and self.handled:
                    self.consumer._settle(released=True)

        return release


Handler = Callable[[StreamBatch], Awaitable[None]]


class EventStream:
    def __init__(
        self,
        events: EventStore,
        positions: StreamConsumerStore,
        clock: Any,
        time_ms: Callable[[], int],
    ) -> None:
        self._events = events
        self._positions = positions
        self._clock = clock
        self._time_ms = time_ms
        self.position = 0
        self._started = False
        self._inline: list[tuple[str, InlineConsumer]] = []
        self._consumers: dict[str, StreamConsumer] = {}

    def start(self, position: int) -> None:
        """The stream's position at start-up: everything up to it is committed."""
        self.position = position
        self._started = True

    # Registration ---------------------------------------------------------------------

    def add_inline(self, name: str, consumer: InlineConsumer) -> None:
        """Call `consumer(items)` synchronously on every publish, after those added before it."""
        self._check_name(name)
        self._inline.append((name, consumer))

    def subscribe(
        self, name: str, handler: Handler, *, wants: Wants | None = None, gather_s: float = 0.0
    ) -> "StreamConsumer":
        """Hand every batch committed from now on to `handler`, in order, on its own coroutine
        (with `wants`, only the events it wants; a batch left empty is not handed over;
        `gather_s`: see StreamConsumer.gather_s). Not durable: a restart starts it again at
        the stream's position then."""
        return self._add(name, handler, False, self.position, 0, wants=wants, gather_s=gather_s)

    async def subscribe_durable(
        self,
        name: str,
        handler: Handler,
        *,
        from_start: bool = False,
        wants: Wants | None = None,
        idempotent: bool = False,
        gather_s: float = 0.0,
    ) -> "StreamConsumer":
        """Like `subscribe`, resuming after a restart from the position saved under `name`.
        The first time, it starts at the stream's position, or at its very start with `from_start`.
        `wants` and `idempotent`: see "What it costs" in the module docstring."""
        self._check_name(name)
        saved = await self._positions.load(name)
        if saved is None:
            position = 0 if from_start else self.position
            await self._positions.save(name, position, position, self._time_ms())
            saved = (position, position)
        return self._add(name, handler, True, *saved, wants=wants, idempotent=idempotent, gather_s=gather_s)

    def _add(
        self,
        name: str,
        handler: Handler,
        durable: bool,
        position: int,
        handed: int,
        wants: Wants | None = None,
        idempotent: bool = False,
        gather_s: float = 0.0,
    ) -> "StreamConsumer":
        if not self._started:
            raise RuntimeError("subscribe after the stream has started")
        self._check_name(name)
        consumer = StreamConsumer(self, name, handler, durable, position, handed)
        consumer.wants = wants
        consumer.idempotent = idempotent
        consumer.gather_s = gather_s
        self._consumers[name] = consumer
        consumer.start()
        return consumer

    def _check_name(self, name: str) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad stream consumer name {name!r}")
        if name in self._consumers or any(n == name for n, _ in self._inline):
            raise ValueError(f"stream consumer {name!r} is registered twice")

    def consumers(self) -> Iterator["StreamConsumer"]:
        return iter(list(self._consumers.values()))

    # Publishing -------------------------------------------------------------------------

    def publish(self, upto: int, items: list[PersistItem]) -> None:
        """The events of one commit, in stream order, reaching position `upto`."""
        after = self.position
        if upto <= after:
            raise AssertionError(f"stream position went back: {upto} after {after}")
        # Moved first: the notifier (the last inline consumer) resumes waiting syncs right
        # away, and they read up to this position from the consumers before it.
        self.position = upto
        for name, consumer in self._inline:
            try:
                consumer(items)
            except Exception:
                log.failure("stream consumer {name} failed", name=name)
        if self._consumers:
            batch = StreamBatch(after, upto, items)
            for sub in self._consumers.values():
                sub.offer(batch)

    async def stop(self) -> None:
        """Let each subscribed consumer finish its batch and save its position."""
        for consumer in list(self._consumers.values()):
            await consumer.stop()
        self._consumers.clear()

    # Metrics ------------------------------------------------------------------------------

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_LagCollector(self))


class StreamConsumer:
    """One subscribed consumer: its position, its queue and the coroutine that feeds it."""

    def __init__(
        self, stream: EventStream, name: str, handler: Handler, durable: bool, position: int, handed: int
    ) -> None:
        self.stream = stream
        self.name = name
        self.durable = durable
        self.position = position
        self._handler = handler
        self._saved_handed = max(handed, position)
        self._redelivered_upto = handed if handed > position else 0
        # How far batches have been handed over and handled (holds aside): where reading goes
        # on. `position` trails it while holds are out.
        self.handled_upto = position
        self._unsettled: deque[BatchHolds] = deque()
        self._save_lock = DeferredLock()
        self._background_save = False
        self._queue: deque[StreamBatch] = deque()
        self._queued_events = 0
        # Behind: nothing is queued for it; it reads from the database up to the stream.
        self.behind = position < stream.position
        self._saved_position = position
        self._reached: list[tuple[int, Deferred[None]]] = []
        self._wakeup: Deferred[None] | None = None
        self._pausing: Deferred[None] | None = None
        self._stopping = False
        self._done: Deferred[None] | None = None
        self.wants: Wants | None = None
        self.idempotent = False
        # Woken from idle, wait this long (`pause`) before the first batch, so that it comes
        # a little after its commit's publishing, and with the events of that time.
        self.gather_s = 0.0
        self._gathering = False  # in a handler's `pause`
        self._lazy_save: Any = None  # the pending delayed call of a lazy save

    @property
    def lag(self) -> int:
        """Positions between the consumer and the stream (an upper bound on events)."""
        return max(0, self.stream.position - self.position)

    def start(self) -> None:
        self._done = Deferred.fromCoroutine(self._run())

    def reached(self, position: int) -> Deferred[None]:
        """Fires once every event up to `position` has been handled (or skipped) and every hold
        on it released."""
        d: Deferred[None] = Deferred()
        if self.position >= position:
            d.callback(None)
        else:
            self._reached.append((position, d))
            if self._gathering:  # a handler's pause: someone waits, so end it
                pausing, self._pausing = self._pausing, None
                if pausing is not None:
                    pausing.callback(None)
        return d

    async def caught_up(self, timeout_s: float, position: int | None = None) -> bool:
        """Wait, at most `timeout_s` on the clock, until everything committed before this call
        (or up to `position`: another process's) is handled; whether it was (readers of what
        the consumer writes: read your writes)."""
        if position is None:
            position = self.stream.position
        if self.position >= position:
            return True
        done: Deferred[bool] = Deferred()

        def finish(value: bool) -> None:
            if not done.called:
                done.callback(value)

        self.reached(position).addCallback(lambda _: finish(True))
        call = self.stream._clock.callLater(timeout_s, finish, False)
        reached = await done
        if call.active():
            call.cancel()
        return reached

    def _handled(self, holds: BatchHolds) -> None:
        """The handler returned for this batch: settle it (and those after it) if nothing holds it."""
        self.handled_upto = holds.upto
        holds.handled = True
        self._settle(released=False)

    def _settle(self, released: bool) -> None:
        """Move `position` past every leading batch that is handled and holds nothing."""
        unsettled = self._unsettled
        position = self.position
        while unsettled and unsettled[0].handled and unsettled[0].count == 0:
            position = unsettled.popleft().upto
        if position > self.position:
            self._advance(position)
            # A release (the coroutine may be idle): save without waiting for the next batch,
            # lazily for an idempotent consumer (a write per release would cost what it saved).
            # Settled by a handler's return, the coroutine saves it itself when idle.
            if released and self.durable and not self._stopping:
                if self.idempotent:
                    self._save_later()
                elif not self._background_save:
                    self._background_save = True
                    Deferred.fromCoroutine(self._save_settled())

    async def _save_settled(self, once: bool = False) -> None:
        """Save `position` until the saved one caught up; `once`: one write (a lazy save,
        which the next batch schedules again if the position moves on meanwhile)."""
        try:
            while self.position > self._saved_position and not self._stopping:
                await self._save_once(self._saved_handed)
                if once:
                    break
        except Exception:
            log_failure(log, "stream consumer {name} could not save its position", name=self.name)
        finally:
            self._background_save = False

    def _advance(self, position: int) -> None:
        self.position = position
        if self._reached:
            due = [d for p, d in self._reached if p <= position]
            self._reached = [(p, d) for p, d in self._reached if p > position]
            for d in due:
                d.callback(None)

    def offer(self, batch: StreamBatch) -> None:
        if self.behind or self._stopping:
            return
        if self._queued_events + len(batch.items) > MAX_QUEUED_EVENTS:
            log.info("stream consumer {name} fell behind; it catches up from the database", name=self.name)
            self.behind = True
            self._queue.clear()
            self._queued_events = 0
        else:
            self._queue.append(batch)
            self._queued_events += len(batch.items)
        self._wake()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.callback(None)

    async def stop(self) -> None:
        """Finish the batch in hand, save the position, end the coroutine."""
        self._stopping = True
        self._wake()
        pausing, self._pausing = self._pausing, None
        if pausing is not None:
            pausing.callback(None)
        if self._done is not None:
            await self._done

    # The coroutine ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._stopping:
                batch = await self._next_batch()
                if batch is None:
                    if self.gather_s and self._queue and not self._stopping:
                        await self.pause(self.gather_s)  # woken from idle: gather first
                    continue
                if self.wants is not None:
                    batch = dataclasses.replace(batch, items=[i for i in batch.items if self._wanted(i)])
                holds = BatchHolds(self, batch.upto)
                self._unsettled.append(holds)
                recorded = self.durable and not self.idempotent
                if batch.items:
                    if recorded and batch.upto > self._saved_handed:
                        await self._save(batch.upto)
                    if not await self._handle(dataclasses.replace(batch, holds=holds)):
                        break  # stopped while a failed batch waited for its retry
                self._handled(holds)
                if self.durable and self.position > self._saved_position:
                    if recorded and self._saved_handed > self._saved_position and not self._has_more():
                        await self._save(self._saved_handed)  # a handed batch is done: say so now
                    else:
                        # Idle or not: a consumer that always has a next batch (a steady load,
                        # a long catch-up) would otherwise go unsaved until it is idle.
                        self._save_later()
            if self._lazy_save is not None and self._lazy_save.active():
                self._lazy_save.cancel()
            if self.durable and self.position > self._saved_position:
                await self._save(self._saved_handed)
        except Exception:
            log.failure("stream consumer {name} stopped", name=self.name)

    def _wanted(self, item: PersistItem) -> bool:
        try:
            return self.wants is None or self.wants(item.event)
        except Exception:
            log.failure("stream consumer {name}: wants() failed; the event is handed over", name=self.name)
            return True

    def _save_later(self) -> None:
        """Save `position` within LAZY_SAVE_S: nothing handed over waits on this save."""
        if self._lazy_save is not None and self._lazy_save.active():
            return

        def save() -> None:
            if self._stopping or self.position <= self._saved_position:
                return
            if self._background_save:
                self._save_later()  # a save is under way: look again after it
            else:
                self._background_save = True
                Deferred.fromCoroutine(self._save_settled(once=True))

        self._lazy_save = self.stream._clock.callLater(LAZY_SAVE_S, save)

    def _has_more(self) -> bool:
        return bool(self._queue) or self.handled_upto < self.stream.position

    async def _next_batch(self) -> StreamBatch | None:
        """The next batch to hand over, waiting for one; None to look again (or stop)."""
        if self.behind:
            if self.handled_upto >= self.stream.position:
                self.behind = False  # caught up: from here on, publishes are queued for it
            else:
                return await self._read_from_database()
        if not self._queue:
            if self._stopping:
                return None
            self._wakeup = Deferred()
            await self._wakeup
            return None
        first = self._queue.popleft()
        items, upto = first.items, first.upto
        if self._queue and len(items) + len(self._queue[0].items) <= MAX_BATCH_EVENTS:
            items = list(items)  # merged into a new list: the queued ones are shared
            while self._queue and len(items) + len(self._queue[0].items) <= MAX_BATCH_EVENTS:
                nxt = self._queue.popleft()
                items.extend(nxt.items)
                upto = nxt.upto
        self._queued_events -= len(items)
        return self._marked(StreamBatch(first.after, upto, items))

    async def _read_from_database(self) -> StreamBatch | None:
        head = self.stream.position
        try:
            items = await self.stream._events.committed_events(self.handled_upto, head, CATCH_UP_PAGE)
        except Exception:
            log_failure(log, "stream consumer {name} could not read events", name=self.name)
            await self._pause(RETRY_MIN_S)
            return None
        upto = items[-1].event.stream_ordering if len(items) == CATCH_UP_PAGE else head
        return self._marked(StreamBatch(self.handled_upto, upto, items))

    def _marked(self, batch: StreamBatch) -> StreamBatch:
        if self._redelivered_upto and batch.after < self._redelivered_upto:
            return StreamBatch(batch.after, batch.upto, batch.items, self._redelivered_upto)
        return batch

    async def _handle(self, batch: StreamBatch) -> bool:
        """Hand `batch` over; False if the consumer stopped before it was handled."""
        delay = RETRY_MIN_S
        while True:
            try:
                await self._handler(batch)
                return True
            except Exception as error:
                outage = isinstance(error, ServiceUnavailable | StorageFull)
                cap = RETRY_MAX_OUTAGE_S if outage else RETRY_MAX_S
                log_failure(
                    log,
                    "stream consumer {name} failed on events ({after}, {upto}]",
                    name=self.name,
                    after=batch.after,
                    upto=batch.upto,
                )
            if not self.durable:
                return True  # fire and forget: the batch is skipped
            if self._stopping:
                return False
            await self._pause(delay)
            delay = min(delay * 2, cap)
            if self._stopping:
                return False

    async def _save_once(self, handed_upto: int) -> None:
        """Save the current `position` with `handed_upto`. One save at a time, so the saved
        values only ever grow (a release may save while the coroutine does)."""
        await self._save_lock.acquire()
        try:
            position = self.position
            handed_upto = max(handed_upto, self._saved_handed, position)
            await self.stream._positions.save(self.name, position, handed_upto, self.stream._time_ms())
            self._saved_position, self._saved_handed = position, handed_upto
        finally:
            self._save_lock.release()

    async def _save(self, handed_upto: int) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await self._save_once(handed_upto)
                return
            except Exception as error:
                cap = RETRY_MAX_OUTAGE_S if isinstance(error, ServiceUnavailable) else RETRY_MAX_S
                log_failure(log, "stream consumer {name} could not save its position", name=self.name)
            if self._stopping:
                return  # the next start resumes from the last saved position
            await self._pause(delay)
            delay = min(delay * 2, cap)

    async def pause(self, seconds: float) -> None:
        """For a handler: wait `seconds` on the stream's clock (batches published meanwhile
        are queued, and handed over merged), or less: until the consumer stops, or someone
        waits for it to reach a position (`reached`, `caught_up`)."""
        if self._stopping or self._reached:
            return
        self._gathering = True
        try:
            await self._pause(seconds)
        finally:
            self._gathering = False

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` (new events do not end the wait; stopping does)."""
        waiter: Deferred[None] = Deferred()
        self._pausing = waiter

        def end() -> None:
            if self._pausing is waiter:
                self._pausing = None
                waiter.callback(None)

        call = self.stream._clock.callLater(seconds, end)
        await waiter
        if call.active():
            call.cancel()


# Where another process runs a consumer (workers.background): wait there, at most
# `timeout_s`, until it has handled up to `position` (workers/jobs.py).
RemoteCaughtUp = Callable[[int, float], Awaitable[bool]]


class ConsumedOnOneProcess:
    """Base of what a durable consumer fills on one process alone (the search index, the
    user directory's public rooms: started on workers.background only). A reader anywhere
    waits for the consumer to reach what was committed before it: here, or by asking that
    process (`remote_caught_up`, wired by workers/jobs.py)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self._consumer: StreamConsumer | None = None
        self.remote_caught_up: RemoteCaughtUp | None = None

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait until everything committed before now is handled, at most `timeout_s`;
        whether it was."""
        if self._consumer is not None:
            return await self._consumer.caught_up(timeout_s)
        if self.remote_caught_up is not None:
            return await self.remote_caught_up(self.stream.position, timeout_s)
        return False

    async def reached(self, position: int, timeout_s: float) -> bool:
        """On the process that runs the consumer: `caught_up` for another process's position."""
        return self._consumer is not None and await self._consumer.caught_up(timeout_s, position)


class _LagCollector(Collector):
    def __init__(self, stream: EventStream) -> None:
        self._stream = stream

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "homeserver_stream_consumer_lag",
            "Stream positions between each consumer of committed events and the stream",
            labels=["consumer"],
        )
        for consumer in self._stream.consumers():
            lag.add_metric([consumer.name], consumer.lag)
        yield lag
