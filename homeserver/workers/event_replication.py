"""Every process's event stream, merged from the batches of all event writers.

With several event writers (homeserver/workers/event_positions.py) no process writes every
event, yet each one's `EventStream` must publish every committed event, in position order,
once: the timeline cache, sync, sliding sync, unread counts and the notifier read it.

- A writer, after each commit, publishes the batch on the bus (channel `events`) with its
  promise before (`since`) and after (`promise`) the batch. A message covers the range
  (since, promise] of that writer completely: every event of the writer in that range that
  is committed is in it or in an earlier message.
- Every process keeps, per writer, `complete`: every event of that writer up to there is
  published or waiting here in memory. A message whose `since` is above `complete` means
  messages were lost (a bus disconnect, a writer restart): the missing range of that writer
  is read from the database (its positions are those = its index modulo the writers), and
  the messages behind it wait meanwhile. After every bus (re)connect, the promises saved with
  each commit (table `stream_writers`) say how far each writer's events are to be read.
- Waiting events are published locally up to the lowest `complete` of all writers (the
  global position), in position order.
- An idle writer that sees another writer's event moves its own positions above it and
  announces its new promise (without that, the idle writer would hold everyone back).
  Writers also repeat their promise every HEARTBEAT_S: a lost last message costs at most
  that long.
- A writer stopped gracefully (SIGTERM) **retires**: with nothing left in flight it saves
  its promise as `retired_at` (table `stream_writers`) and announces it (`retired`). From
  then on every other writer **carries** it: after each of its own announcements it moves
  the retired writer's saved promise up to its own (`StreamWriterStore.carry`) and
  announces that for it (a message with `custodian`), so no process waits for a writer
  that is away on purpose. Returning, a writer first ends the carrying in the database
  (`rejoin`: after it no carry moves its row), then starts above its row, every stored
  position and every saved promise: above all that was announced for it.
- A writer killed with SIGKILL (or stopped, or cut off) announced nothing: once it has been
  silent on the bus for SILENT_S and its lock is free, another writer **fences** it
  (workers/writer_fence.py): retires it in its place, in a transaction holding its lock,
  and carries it like one that retired. Its saves then match no row (sql/099, 100), so a writer
  that was only slow stores nothing more and exits (`on_fenced`) to be restarted.
- An idle writer (nothing allocated for a heartbeat) promises AHEAD positions past the others'
  newest event, saved before announced, and renews that when they come within half of it: their
  processes then publish their events without waiting for its answer to each (W3, one room's
  fan-out to 500 members: the time until all had a message halved, docs/scaling.md).
- A writer's promise passes a failed event's position (stored nowhere) only once a promise
  past it is saved: otherwise a writer killed right after could restart below what the
  others published, and its next events would be skipped. Other moves need no save: an
  idle writer moves above a stored event (`observe`), and a restart starts above those.
- Behind a writer that holds the stream (a dead one, until it restarts), at most
  MAX_WAITING events wait in memory; past that the other writers' batches are dropped
  and read from the database once it moves (their next batch or heartbeat shows the gap).
  Behind a missed range being read, at most MAX_WAITING events of that writer's later
  batches wait too; past that those batches are dropped and their ranges read as well.
- A process keeps the heads of rooms it does not write (kept for reads: who is joined is
  what the notifier wakes) true by applying those rooms' events before publishing them; a
  head not in memory is loaded first (HEAD_LOADS rooms at a time: a catch-up batch spans
  many rooms, and its syncs wait for all of them), and a state resolution's result (a fork
  merged) is read again from the database.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from homeserver.core.event_stream import EventStream
from homeserver.core.persist import EventPersister
from homeserver.core.room_heads import RoomHeads
from homeserver.logs import log_failure
from homeserver.storage.events import EventStore, PersistItem, StoredEvent
from homeserver.storage.stream_consumers import StreamConsumerStore
from homeserver.storage.stream_writers import StreamWriterStore, WriterFenced
from homeserver.storage.writer_lock import WriterLock
from homeserver.workers.bus import Bus
from homeserver.workers.writer_fence import DeathWatch

log = Logger()

CHANNEL = "events"
HEARTBEAT_S = 1.0
# An idle writer promises this many positions past the newest event of the others it has seen
# (saved first), and again once they come within half of it: their events are then published
# without waiting for its answer to each one over the bus. One save per AHEAD / 2 positions;
# its own next event, after idling, lands up to AHEAD above the others' and waits for them to
# move past it (one bus round trip, as each of theirs waited before).
AHEAD = 1000
FILL_PAGE = 500
RETRY_S = 0.5
# Events waiting in memory behind a writer that holds the stream (one that died): past this
# many, the other writers' batches are dropped, to be read from the database once it moves.
MAX_WAITING = 50_000
# Heads of rooms written elsewhere loaded at once before a batch is published.
HEAD_LOADS = 8

Message = dict[str, Any]


def encode_item(item: PersistItem) -> dict[str, Any]:
    """What the inline consumers of another process need of a committed event."""
    ev = item.event
    out: dict[str, Any] = {
        "id": ev.event_id,
        "room": ev.room_id,
        "pos": ev.stream_ordering,
        "pdu": ev.pdu,
        "version": item.room_version,
    }
    if ev.unsigned_extra:
        out["unsigned"] = ev.unsigned_extra
    if item.txn is not None:
        out["txn"] = list(item.txn)
    if item.current_state is not None:
        out["resolved"] = True  # the room's state is a resolution's: read it again
    return out


def decode_item(raw: dict[str, Any]) -> PersistItem:
    ev = StoredEvent(raw["id"], raw["room"], int(raw["pos"]), raw["pdu"], raw.get("unsigned") or {})
    txn = raw.get("txn")
    item = PersistItem(ev, raw["version"], txn=(txn[0], txn[1], txn[2]) if txn else None)
    if raw.get("resolved"):
        item.current_state = {}
    return item


@dataclass
class _Batch:
    """One message of a writer: its events in (since, promise], all it committed there."""

    since: int
    promise: int
    items: list[PersistItem]


@dataclass
class _Writer:
    """What this process has of one writer's events."""

    name: str
    index: int
    complete: int  # every event of the writer up to here is published or waiting here
    want: int = 0  # read from the database up to here
    filling: bool = False
    held: deque[_Batch] = field(default_factory=deque)
    held_events: int = 0  # in `held`'s batches


class EventReplication:
    def __init__(
        self,
        *,
        me: str,
        writers: list[str],
        bus: Bus,
        stream: EventStream,
        events: EventStore,
        promises: StreamWriterStore,
        heads: RoomHeads,
        writes_room: Callable[[str], bool],
        clock: Any,
        persister: EventPersister | None = None,
        consumers: StreamConsumerStore | None = None,
        lock: WriterLock | None = None,
    ) -> None:
        """`persister` is this process's when it is one of `writers` (named `me`); `consumers`:
        where the durable stream consumers saved their positions; `lock`: this writer's
        (PostgreSQL: without one, dead writers are neither told apart nor fenced)."""
        self.me = me
        self.writers = list(writers)
        self.bus = bus
        self.stream = stream
        self.events = events
        self.promises = promises
        self.heads = heads
        self.writes_room = writes_room
        self.clock = clock
        self.persister = persister if me in self.writers else None
        self.consumers = consumers
        self._writers: dict[str, _Writer] = {}
        self._pending: list[tuple[int, int, PersistItem]] = []  # a heap by position
        self._order = itertools.count()
        self._advancing = False
        self._again = False
        self._announced = 0
        self._seq = 0
        self._heartbeat: Any = None
        # This writer: its highest promise saved outside commits, the last position of its
        # newest failed request, and whether a save (before an announcement) is running.
        self._saved = 0
        self._failed_upto = 0
        self._saving = False
        # This writer: the writers that retired (name -> retired_at), carried while away.
        self._retired: dict[str, int] = {}
        self._carrying = False
        self._carry_again = False
        self._stopped = False
        # This writer: its allocations at the last heartbeat, whether none came in the heartbeat
        # before that (idle), and whether a promise ahead is being saved.
        self._allocated_at_beat = -1
        self._quiet = False
        self._reaching = False
        self._seen = 0  # the newest event of the other writers seen here
        # This writer: its lock, when each other writer was last heard, whether a fence is
        # being tried, and what to do once fenced itself (the server exits, to be restarted).
        self.lock = lock if self.persister is not None else None
        self._watch = DeathWatch([w for w in self.writers if w != me], clock.seconds())
        self._fencing = False
        self.fenced = False
        self.on_fenced: Callable[[], None] | None = None

    # Start -------------------------------------------------------------------------------

    async def start(self) -> int:
        """Load where each writer stands; return the position this process's stream starts at
        (everything up to it is committed, and read from the database by whoever needs it)."""
        epoch = 0  # of this writer's start: an earlier instance still running saves nothing
        if self.persister is not None:
            if self.lock is not None:
                # Before anything is saved: while it is held, no one fences this writer.
                await self.lock.hold()
            # Back from a graceful stop (or fenced): nobody carries this writer's promise from
            # here on, so what is saved below bounds what was ever announced for it.
            epoch = await self.promises.rejoin(self.me)
        newest = await self.events.max_stream_ordering()
        saved = await self.promises.promises()
        # A writer that never saved a promise has written nothing above the newest event.
        known = {w: saved.get(w, newest) for w in self.writers}
        start = min(known.values())
        if self.consumers is not None:
            # A durable consumer saved a position its process had published up to: everything
            # below it is committed. Idle writers' promises move without being saved, so the
            # saved ones may be lower; starting there would hand those consumers events again.
            handled = [position for position, _ in (await self.consumers.all()).values()]
            start = max([start, *handled])
        self._writers = {w: _Writer(w, i, complete=start, want=known[w]) for i, w in enumerate(self.writers)}
        persister = self.persister
        if persister is not None:
            mine = self._writers[self.me]
            # My own events of my previous run, above the start: from the database, now
            # (nothing of this run is committed yet).
            await self._fill_now(mine)
            persister.positions.name = self.me
            persister.positions.epoch = epoch
            persister.save_promise = True
            await persister.start(max(newest, *saved.values(), *known.values()))
            persister.publish_to(self._committed_here)
            persister.on_failed = self._failed
            self._announced = persister.positions.promise
            self._seen = newest
            mine.complete = self._announced
            await self.promises.save(self.me, self._announced)
            self._saved = self._announced
            self._retired = {w: at for w, at in (await self.promises.retired()).items() if w != self.me}
        self.bus.subscribe(CHANNEL, self._received)
        self.bus.on_connected(self._connected)
        return start

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_ReplicationCollector(self))

    def start_heartbeat(self) -> None:
        if self.persister is not None:
            self._heartbeat = self.clock.looping_call(HEARTBEAT_S, self._tick)

    def stop(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()

    def release(self) -> None:
        """Let this writer's lock go (the process stops): from now on it may be fenced."""
        if self.lock is not None:
            self.lock.close()

    async def retire(self) -> None:
        """A graceful stop: once the requests in flight are settled, hand this writer's
        promise over (announce it retired), so that no process waits for it while it is away.
        Called while the bus and database are still up; without them it stops unannounced,
        as a killed writer would."""
        self.stop()
        persister = self.persister
        if persister is None or self._stopped:
            return
        await persister.close()
        self._stopped = True
        promise = max(persister.positions.promise, self._announced)
        try:
            await self.promises.retire(self.me, promise)
        except WriterFenced:
            self._fenced()
            return
        except Exception:
            log_failure(log, "could not save that {me} retired; the stream waits for its restart", me=self.me)
            return
        self._send([], promise, retired=True)
        log.info("event writer {me} retired at {p}: the others carry its promise", me=self.me, p=promise)

    async def _connected(self) -> None:
        """After every bus (re)connect: messages may have been lost; read what the saved
        promises say is committed."""
        saved = await self.promises.promises()
        for name, writer in self._writers.items():
            if name != self.me and saved.get(name, 0) > writer.complete:
                self._fill(writer, saved[name])
        if self.persister is not None:
            retired = await self.promises.retired()
            self._retired = {w: at for w, at in retired.items() if w != self.me}
            self._beat()

    # This process's commits ------------------------------------------------------------------

    def _committed_here(self, upto: int, items: list[PersistItem]) -> None:
        """The persister's publish: announce the batch, and merge it with the others'."""
        self._send(items, self._safe_promise())
        self._save_if_held()

    def _failed(self, last: int) -> None:
        """A request failed: its positions stay unused, and are announced once saved."""
        self._failed_upto = max(self._failed_upto, last)
        self._announce()

    def _announce(self) -> None:
        """Tell the others if this writer's promise moved without a commit."""
        if self._stopped:
            return
        promise = self._safe_promise()
        if promise > self._announced:
            self._send([], promise)
        self._save_if_held()

    def _tick(self) -> None:
        """The heartbeat: idle if nothing was allocated since the last one; repeat the promise."""
        assert self.persister is not None
        allocated = self.persister.positions.allocated
        self._quiet = allocated == self._allocated_at_beat
        self._allocated_at_beat = allocated
        self._reach_ahead(self._seen)
        self._beat()
        if self.lock is not None and not self._stopped:
            Deferred.fromCoroutine(self._renew_lock())
            self._fence_the_dead()

    async def _renew_lock(self) -> None:
        assert self.lock is not None
        try:
            fenced = await self.lock.renew()
        except Exception:
            log_failure(log, "could not take the lock of event writer {me}; retried next beat", me=self.me)
            return
        if fenced:
            self._fenced()

    def _fence_the_dead(self) -> None:
        """Fence the writers silent for SILENT_S whose lock is free (one attempt at a time)."""
        if self._fencing:
            return
        silent = [w for w in self._watch.silent(self.clock.seconds()) if w not in self._retired]
        if silent:
            Deferred.fromCoroutine(self._fencing_loop(silent))

    async def _fencing_loop(self, names: list[str]) -> None:
        self._fencing = True
        try:
            for name in names:
                try:
                    at = await self.promises.fence(name)
                except Exception:
                    log_failure(log, "could not fence event writer {w}", w=name)
                    continue
                if at is None or self._stopped:
                    continue  # alive (it holds its lock), or never wrote
                log.warn("event writer {w} silent, its lock free: retired at {at}, carried", w=name, at=at)
                self._retired[name] = at
                self._carry()  # at once: every process's stream waits for it until then
        finally:
            self._fencing = False

    def _fenced(self) -> None:
        """Another writer retired this one (it looked dead): it must store nothing more.
        Stop announcing; the server exits, to be restarted (start rejoins above everything)."""
        if self.fenced:
            return
        self.fenced = True
        self._stopped = True
        self.stop()
        log.error("event writer {me} was fenced by another writer: stopping, to be restarted", me=self.me)
        if self.on_fenced is not None:
            self.on_fenced()

    def _beat(self) -> None:
        if self._stopped:
            return
        self._send([], self._safe_promise())
        self._save_if_held()

    def _safe_promise(self) -> int:
        """The promise this writer may announce: its own, unless that passes a failed
        position no saved promise has passed yet; then the highest saved one."""
        assert self.persister is not None
        promise = self.persister.positions.promise
        saved = max(self._saved, self.persister.saved_promise)
        if self._failed_upto > saved:
            promise = min(promise, saved)
        return max(promise, self._announced)

    def _save_if_held(self) -> None:
        """Save the promise if only an unsaved failure holds its announcement back."""
        assert self.persister is not None
        if not self._saving and not self._stopped and self.persister.positions.promise > self._safe_promise():
            Deferred.fromCoroutine(self._save_promise())

    async def _save_promise(self) -> None:
        assert self.persister is not None
        self._saving = True
        try:
            saved = await self._save(
                self.persister.positions.promise,
                "could not save the promise of {me}; the next heartbeat tries again",
            )
        finally:
            self._saving = False
        if saved:
            self._announce()

    async def _save(self, promise: int, failed: str) -> bool:
        """Save this writer's promise; whether it is saved (fenced: the writer stops)."""
        try:
            await self.promises.save(self.me, promise)
        except WriterFenced:
            self._fenced()
            return False
        except Exception:
            log_failure(log, failed, me=self.me)
            return False
        self._saved = max(self._saved, promise)
        return True

    def _send(self, items: list[PersistItem], promise: int, retired: bool = False) -> None:
        """Publish this writer's batch to the others, and take it here like theirs."""
        self._seq += 1
        since, self._announced = self._announced, promise
        message: Message = {
            "writer": self.me,
            "seq": self._seq,
            "since": since,
            "promise": promise,
            "items": [encode_item(i) for i in items],
        }
        if retired:
            message["retired"] = True
        self.bus.publish(CHANNEL, message)
        self._take(self._writers[self.me], _Batch(since, promise, items))
        if self._retired and not self._stopped:
            self._carry()

    # Promising ahead while idle ------------------------------------------------------------------

    def _idle(self) -> bool:
        """Nothing in flight and nothing allocated for a whole heartbeat."""
        assert self.persister is not None
        positions = self.persister.positions
        return self._quiet and positions.allocated == self._allocated_at_beat and not positions.in_flight

    def _reach_ahead(self, seen: int) -> None:
        """Idle, and the others' newest event `seen` within AHEAD / 2 of this writer's promise:
        promise AHEAD past it. Otherwise each of their events waits, on their own processes, for
        this writer's answer to it over the bus (a round trip through a busy reactor)."""
        assert self.persister is not None
        if self._reaching or self._stopped or not self._idle():
            return
        if self.persister.positions.promise - seen > AHEAD // 2:
            return
        Deferred.fromCoroutine(self._reaching_ahead(seen + AHEAD))

    async def _reaching_ahead(self, target: int) -> None:
        assert self.persister is not None
        self._reaching = True
        try:
            # Saved before announced: killed after, it restarts above it (ADR 0008).
            saved = await self._save(target, "could not save the promise ahead of {me}")
        finally:
            self._reaching = False
        if not saved:
            return
        # Events allocated meanwhile stay below it, in flight: the promise waits for them.
        self.persister.positions.skip_past(target)
        self._announce()

    # Carrying the writers that retired ---------------------------------------------------------

    def _carry(self) -> None:
        """Move the retired writers' promises up to this writer's announced one (one save at
        a time; announcements meanwhile are folded into the next)."""
        if self._carrying:
            self._carry_again = True
            return
        Deferred.fromCoroutine(self._carrying_loop())

    async def _carrying_loop(self) -> None:
        self._carrying = True
        try:
            while True:
                self._carry_again = False
                try:
                    rows = await self.promises.carry(self._announced)
                except Exception:
                    log_failure(log, "could not carry the retired writers' promises")
                    return  # the next announcement tries again
                self._retired = {}
                for name, since, promise in rows:
                    writer = self._writers.get(name)
                    if writer is None or name == self.me:
                        continue
                    self._retired[name] = since
                    # Saved before it is announced: the writer, returning, starts above it.
                    message = {
                        "writer": name,
                        "custodian": self.me,
                        "since": since,
                        "promise": promise,
                        "items": [],
                    }
                    self.bus.publish(CHANNEL, message)
                    self._take(writer, _Batch(since, promise, []))
                if not self._carry_again or not self._retired or self._stopped:
                    return
        finally:
            self._carrying = False

    # Other writers' messages -----------------------------------------------------------------

    def _received(self, message: Message) -> None:
        writer = self._writers.get(message.get("writer", ""))
        if writer is None:
            log.warn("event batch from {w!r}, not an event writer, ignored", w=message.get("writer"))
            return
        if writer.name == self.me:
            if "custodian" in message:
                return  # carried while this writer was away: it started above that
            # Two processes started with one --worker name would hand out the same positions.
            log.error("another process writes events as {w!r}: run each instance once", w=self.me)
            return
        if self.persister is not None and not self._stopped:
            if "custodian" in message:
                # Carried by another (retired, or fenced while it looked dead): carry it too,
                # should that one die as well.
                self._retired.setdefault(writer.name, int(message["since"]))
            else:
                self._watch.heard(writer.name, self.clock.seconds())
                if message.get("retired"):
                    self._retired[writer.name] = int(message["promise"])
                # Back or not, the next carry reads which writers are retired: a fenced
                # writer that was only slow may announce a little longer (ADR 0008).
        items = [decode_item(raw) for raw in message["items"]]
        if self.persister is not None and items:
            # Stay above what the others write, so that an idle writer does not hold them back.
            self._seen = max(self._seen, items[-1].event.stream_ordering)
            self.persister.positions.observe(self._seen)
            self._announce()
            self._reach_ahead(self._seen)
        self._take(writer, _Batch(int(message["since"]), int(message["promise"]), items))
        if message.get("retired") and self.persister is not None and not self._stopped:
            self._carry()  # at once: the others' streams wait for it until then

    def _take(self, writer: _Writer, batch: _Batch) -> None:
        if not self._may_take(writer):
            # Its next batch (or heartbeat, within HEARTBEAT_S) shows the gap; read then.
            return
        if writer.filling or writer.held:
            self._hold(writer, batch)
            return
        if batch.since > writer.complete:
            self._hold(writer, batch)
            self._fill(writer, batch.since)
            return
        self._apply(writer, batch)
        self._advance()

    def _hold(self, writer: _Writer, batch: _Batch) -> None:
        """Keep `batch` until the writer's missed range before it is read. Held batches can
        pile up while the database is slow or down (each heartbeat is one): past MAX_WAITING
        of their events, drop them all and read their range from the database too (a batch
        holds all its writer committed in (since, promise])."""
        if writer.held_events + len(batch.items) > MAX_WAITING:
            writer.held.clear()
            writer.held_events = 0
            self._fill(writer, batch.promise)
            return
        writer.held.append(batch)
        writer.held_events += len(batch.items)

    def _unhold(self, writer: _Writer) -> _Batch:
        batch = writer.held.popleft()
        writer.held_events -= len(batch.items)
        return batch

    def _apply(self, writer: _Writer, batch: _Batch) -> None:
        complete = writer.complete
        for item in batch.items:
            if item.event.stream_ordering > complete:
                self._wait(item)
        writer.complete = max(complete, batch.promise)

    def _wait(self, item: PersistItem) -> None:
        heapq.heappush(self._pending, (item.event.stream_ordering, next(self._order), item))

    def _may_take(self, writer: _Writer) -> bool:
        """Whether to take in more of `writer`'s events: always while few wait, and from the
        writers holding the stream back (only they can move it) however many wait."""
        return len(self._pending) < MAX_WAITING or writer.complete <= self.position

    # Reading a writer's missed events from the database ------------------------------------------

    def _fill(self, writer: _Writer, upto: int) -> None:
        writer.want = max(writer.want, upto)
        if not writer.filling:
            Deferred.fromCoroutine(self._filling(writer))

    async def _filling(self, writer: _Writer) -> None:
        writer.filling = True
        try:
            while True:
                await self._fill_now(writer)
                if not self._may_take(writer):
                    writer.held.clear()  # read again once fewer wait (see _take)
                    writer.held_events = 0
                    break
                while writer.held and writer.held[0].since <= writer.complete:
                    self._apply(writer, self._unhold(writer))
                if not writer.held:
                    break
                writer.want = max(writer.want, writer.held[0].since)
        finally:
            writer.filling = False
        self._advance()

    async def _fill_now(self, writer: _Writer) -> None:
        """Read the writer's events in (complete, want] from the database into the waiting ones."""
        count = len(self.writers)
        while writer.complete < writer.want and self._may_take(writer):
            # `want` may rise while the page is read: this page covers up to `upto` only.
            after, upto = writer.complete, writer.want
            try:
                items = await self.events.committed_events_of_writer(
                    after, upto, FILL_PAGE, count, writer.index
                )
            except Exception:
                log_failure(log, "could not read the events of writer {w}", w=writer.name)
                await self._sleep(RETRY_S)
                continue
            for item in items:
                self._wait(item)
            writer.complete = items[-1].event.stream_ordering if len(items) == FILL_PAGE else upto

    # Publishing locally --------------------------------------------------------------------

    @property
    def position(self) -> int:
        """How far every writer's events are here: the global position."""
        return min(w.complete for w in self._writers.values())

    def _advance(self) -> None:
        if self._advancing:
            self._again = True
            return
        Deferred.fromCoroutine(self._advancing_loop())

    async def _advancing_loop(self) -> None:
        self._advancing = True
        try:
            while True:
                self._again = False
                upto = self.position
                if upto <= self.stream.position:
                    if self._again:
                        continue
                    return
                items: list[PersistItem] = []
                pending = self._pending
                while pending and pending[0][0] <= upto:
                    items.append(heapq.heappop(pending)[2])
                # Taken off the queue: whatever happens to the heads, they are published.
                try:
                    await self._keep_heads(items)
                finally:
                    self.stream.publish(upto, items)
        except Exception:
            log_failure(log, "publishing replicated events failed")
        finally:
            self._advancing = False

    async def _keep_heads(self, items: list[PersistItem]) -> None:
        """Bring the heads of rooms written elsewhere up to `items` (loading those not in memory).
        A head that cannot take an event is dropped, to be loaded again when next needed.
        Rooms are brought up together, HEAD_LOADS at a time; each room's events in order."""
        by_room: dict[str, list[PersistItem]] = {}
        for item in items:
            by_room.setdefault(item.event.room_id, []).append(item)
        rooms = iter(by_room.values())

        async def bring_up() -> None:
            for room_items in rooms:  # shared: each room taken by one of them
                for item in room_items:
                    try:
                        await self._keep_head(item)
                    except Exception:
                        room = item.event.room_id
                        log_failure(log, "could not bring the head of {room} up to date; dropped", room=room)
                        self.heads.forget(room)

        await gatherResults(
            [Deferred.fromCoroutine(bring_up()) for _ in range(min(HEAD_LOADS, len(by_room)))]
        )

    async def _keep_head(self, item: PersistItem) -> None:
        ev = item.event
        room_id = ev.room_id
        if self.writes_room(room_id):
            return
        if item.current_state is not None:
            self.heads.forget(room_id)
        head = self.heads.peek(room_id)
        if head is None:
            head = await self.heads.get(room_id)
            if head is None:
                return
        head.apply_committed(ev)

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.clock.callLater(seconds, d.callback, None)
        return d


class _ReplicationCollector(Collector):
    def __init__(self, replication: EventReplication) -> None:
        self._replication = replication

    def collect(self) -> Iterator[GaugeMetricFamily]:
        complete = GaugeMetricFamily(
            "homeserver_event_writer_position",
            "How far each event writer's events have reached this process (the lowest holds the stream)",
            labels=["writer"],
        )
        for writer in self._replication._writers.values():
            complete.add_metric([writer.name], writer.complete)
        yield complete
        yield GaugeMetricFamily(
            "homeserver_events_waiting",
            "Events held in memory: until every writer's promise passes them, or behind a missed range"
            " being read from the database",
            value=len(self._replication._pending)
            + sum(w.held_events for w in self._replication._writers.values()),
        )
