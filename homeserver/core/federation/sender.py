"""The federation sender: our events and EDUs to the other servers of our rooms.

A durable consumer of the committed-event stream (core/event_stream.py, name
`federation_sender`) turns each committed event of local origin into one row per remote
server in its room, in the per-destination queues of storage/federation_queue.py. EDUs
(typing, receipts, presence, to-device, device lists) go into the same queues through
`queue_edu`. A batch of the stream is done once its rows are committed, so the stream never
waits for a remote server, and a restart or kill -9 resumes from the rows.

Each destination has one coroutine and at most one transaction in flight
(`PUT /_matrix/federation/v1/send/{txnId}`, at most 50 PDUs and 100 EDUs, in queue order).
Before it is sent, its id and its last row are saved: until the remote answers, the same rows
go again under the same id, after a restart too (the remote deduplicates by id). A destination
that does not answer waits BACKOFF_MIN_S, then twice as long each time, up to BACKOFF_MAX_S; it
is woken early when that server sends us a request, or when a probe finds it answering again:
while it cannot be reached at all, during the first PROBE_WINDOW_S of the outage, every
PROBE_INTERVAL_S, a cheap `GET /_matrix/federation/v1/version` (a restarted server need not
contact us first, and the backoff alone could keep its queue waiting about as long again as
it was down). A server that answers with an error is up: it gets the backoff, not probes.
Everything queued meanwhile goes, in order, once it answers. Destinations never wait for one
another.

Ordering: sequence numbers are given and their rows committed under one lock, so a queue read
never sees a row before an earlier one is committed (a reader past N never misses N - 1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.event_stream import EventStream, StreamBatch, StreamConsumer
from homeserver.core.federation.client import RemoteError
from homeserver.core.federation.user_ids import server_of
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.logs import log_failure
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.federation_queue import DestinationState, FederationQueueStore, OutboxRow, QueuedItem
from homeserver.storage.stream_consumers import StreamConsumerStore

log = Logger()

CONSUMER = "federation_sender"
# The spec's limits on one transaction (Server-Server API, "Transactions").
MAX_PDUS = 50
MAX_EDUS = 100
BACKOFF_MIN_S = 5.0
# A destination down for long is still tried once an hour (and at once when it calls us).
BACKOFF_MAX_S = 3600.0
# While backing off, how often a destination is probed, and for how long after it stopped
# answering: restarts (the usual short outage) are noticed within seconds; a server down for
# longer costs no more than the backoff's own tries.
PROBE_INTERVAL_S = 2.0
PROBE_WINDOW_S = 600.0
# How often answered rows with a dedupe key are deleted (see `_prune`).
PRUNE_INTERVAL_S = 600.0
MEMBERSHIPS = ("join", "leave", "ban", "invite", "knock")

# (destination, txn_id, body) -> the remote's answer; raises RemoteError or another error.
Transport = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
# destination -> whether it answers now (see `version_probe`).
Probe = Callable[[str], Awaitable[bool]]


# Kept with a queued EDU that goes stale (typing): when to drop it rather than send it.
EXPIRES_KEY = "_expires_ts"


def next_backoff_s(previous_s: float) -> float:
    """The pause after one more failure: BACKOFF_MIN_S, doubling, at most BACKOFF_MAX_S."""
    return min(max(previous_s * 2, BACKOFF_MIN_S), BACKOFF_MAX_S)


def version_probe(get_json: Callable[[str, str], Awaitable[Any]]) -> Probe:
    """A probe through the federation client's GET: any answer but a 5xx means the server is
    up (an error status came from the server itself; a 502-504 may be its proxy speaking
    for it while it is down)."""

    async def answers(destination: str) -> bool:
        try:
            await get_json(destination, "/_matrix/federation/v1/version")
        except RemoteError as error:
            return error.status < 500
        except Exception:
            return False
        return True

    return answers


def take_transaction(items: list[QueuedItem]) -> list[QueuedItem]:
    """The leading items that fit one transaction: stop before the 51st PDU or 101st EDU."""
    pdus = edus = 0
    taken = []
    for item in items:
        if item.event_id is not None:
            if pdus == MAX_PDUS:
                break
            pdus += 1
        else:
            if edus == MAX_EDUS:
                break
            edus += 1
        taken.append(item)
    return taken


class FederationSender:
    def __init__(
        self,
        server_name: str,
        store: FederationQueueStore,
        events: EventStore,
        room_heads: RoomHeads,
        stream: EventStream,
        clock: Clock,
        transport: Transport,
        rooms_of_user: Callable[[str], Awaitable[Iterable[str]]],
        positions: StreamConsumerStore,
        probe: Probe | None = None,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.events = events
        self.room_heads = room_heads
        self.stream = stream
        self.clock = clock
        self.transport = transport
        self.probe = probe
        self._rooms_of_user = rooms_of_user
        self._seq = 0
        self._queue_lock = DeferredLock()
        # Several processes (homeserver/workers/jobs.py): on those that do not run the sender,
        # `forward_enqueue(rows)` hands the rows to the one that does (it numbers the queue).
        self.forward_enqueue: Any = None
        self._destinations: dict[str, Destination] = {}
        self._consumer: StreamConsumer | None = None
        self._stopping = False
        self._positions = positions
        self._prune_mark: tuple[int, int] | None = None
        self._prune_loop: Any = None
        self._remote_cache: dict[str, tuple[list[str], list[str]]] = {}

    async def start(self) -> None:
        """Resume every destination with rows left, then follow the stream from where it was."""
        self._seq = await self.store.last_seq()
        for state in await self.store.destinations():
            dest = self._destination(state.destination, state)
            dest.pending = await self.store.pending_count(state.destination, state.sent_upto)
            dest.wake()
        self._consumer = await self.stream.subscribe_durable(CONSUMER, self._on_events, wants=self._may_send)
        self._prune_loop = self.clock.looping_call(
            PRUNE_INTERVAL_S, lambda: Deferred.fromCoroutine(self._prune())
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._prune_loop is not None and self._prune_loop.running:
            self._prune_loop.stop()
        for dest in self._destinations.values():
            dest.stop()

    async def _prune(self) -> None:
        """Delete answered rows queued before the previous tick, once the stream consumer's
        saved position is past the stream position of that tick: the batches they came
        from can no longer be handed again, so their dedupe keys are no longer needed."""
        previous, self._prune_mark = self._prune_mark, (self._seq, self.stream.position)
        if previous is None:
            return
        try:
            saved = await self._positions.load(CONSUMER)
            if saved is not None and saved[0] >= previous[1]:
                await self.store.prune(previous[0])
            else:
                self._prune_mark = previous  # not yet: keep the older mark
        except Exception:
            log_failure(log, "federation sender could not prune its queues")

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_QueueCollector(self))

    # Queueing ---------------------------------------------------------------------------

    async def hosts_in_room(self, room_id: str) -> set[str]:
        """The other servers with a joined member in the room (from its current state)."""
        head = await self.room_heads.get(room_id)
        if head is None:
            return set()
        hosts = {server_of(u) for u in head.members("join")}
        hosts.discard(self.server_name)
        return hosts

    async def _hosts_at(self, ev: StoredEvent) -> set[str]:
        """The other servers in the room at `ev`, read from the current state (the consumer
        may run behind it): members joined now whose join came before `ev`, and members whose
        membership changed after `ev` from a join (they left or were removed since). Two
        changes of one member since `ev` are read by the last one only."""
        head = await self.room_heads.get(ev.room_id)
        if head is None:
            return set()
        hosts: set[str] = set()
        for user_id in self._remote_members(head):
            host = server_of(user_id)
            member = head.state.get(("m.room.member", user_id))
            if host in hosts or member is None:
                continue
            if member.stream_ordering < ev.stream_ordering:
                there = member.content.get("membership") == "join"
            else:
                # Changed since `ev`: what it replaced says whether they were joined then.
                previous = member.unsigned_extra.get("prev_content")
                there = isinstance(previous, dict) and previous.get("membership") == "join"
            if there:
                hosts.add(host)
        return hosts

    def _remote_members(self, head: RoomHead) -> list[str]:
        """Users of other servers with any membership in the room. Kept per room while the
        head's member list is the same object (it is rebuilt after each member event), so a
        room of our own users costs nothing per event."""
        members = head.members(*MEMBERSHIPS)
        cached = self._remote_cache.get(head.room_id)
        if cached is not None and cached[0] is members:
            return cached[1]
        remote = [u for u in members if server_of(u) != self.server_name]
        self._remote_cache[head.room_id] = (members, remote)
        if len(self._remote_cache) > 10_000:
            self._remote_cache.pop(next(iter(self._remote_cache)))
        return remote

    async def hosts_sharing_rooms(self, user_id: str) -> set[str]:
        """The other servers sharing a room with the user."""
        hosts: set[str] = set()
        for room_id in await self._rooms_of_user(user_id):
            hosts |= await self.hosts_in_room(room_id)
        return hosts

    def _may_send(self, ev: StoredEvent) -> bool:
        """Whether `ev` may have to go to another server: ours, in a room that has (or had) a
        member of another server, or naming one. Rooms of our own users only skip the
        consumer's per-batch records (event_stream.py, "What it costs"). A room whose head is
        not in memory counts as may: the handler decides."""
        if server_of(ev.sender) != self.server_name:
            return False
        target = ev.state_key if ev.type == "m.room.member" else None
        if target is not None and server_of(target) != self.server_name:
            return True
        head = self.room_heads.peek(ev.room_id)
        return head is None or bool(self._remote_members(head))

    async def _on_events(self, batch: StreamBatch) -> None:
        rows: list[tuple[str, str | None, dict[str, Any] | None, str | None]] = []
        for item in batch.items:
            ev = item.event
            # Events of remote origin came to us from their servers: never sent back.
            if server_of(ev.sender) != self.server_name:
                continue
            hosts = await self._hosts_at(ev)
            if ev.type == "m.room.member" and ev.state_key is not None:
                # A remote user invited, kicked or banned hears of it though not joined.
                target = server_of(ev.state_key)
                if target != self.server_name:
                    hosts.add(target)
            rows.extend((host, ev.event_id, None, ev.event_id) for host in sorted(hosts))
        if rows:
            await self._enqueue(rows)

    async def queue_remote_event(self, ev: StoredEvent, origin: str) -> None:
        """Send an event of another server to the room's other servers (not `origin`): for
        the events a resident server hands on, such as a join received by `send_join`.
        Returns once queued. The stream consumer never sends events of remote origin."""
        hosts = await self._hosts_at(ev)
        if ev.type == "m.room.member" and ev.state_key is not None:
            hosts.add(server_of(ev.state_key))
        hosts -= {origin, self.server_name}
        if hosts:
            await self._enqueue([(host, ev.event_id, None, ev.event_id) for host in sorted(hosts)])

    async def queue_edu(
        self,
        destinations: Iterable[str],
        edu_type: str,
        content: dict[str, Any],
        dedupe_key: str | None = None,
        ttl_ms: int | None = None,
    ) -> None:
        """Queue one EDU for each destination (our own name is skipped); returns once it is
        committed, so a caller may answer its client then. With `dedupe_key`, an EDU queued
        under the same key for a destination (not yet pruned) is not queued again. With
        `ttl_ms`, it is dropped unsent once that old (news that would be stale by then)."""
        edu: dict[str, Any] = {"edu_type": edu_type, "content": content}
        if ttl_ms is not None:
            edu[EXPIRES_KEY] = self.clock.time_ms() + ttl_ms
        rows: list[tuple[str, str | None, dict[str, Any] | None, str | None]] = [
            (d, None, edu, dedupe_key) for d in sorted(set(destinations)) if d and d != self.server_name
        ]
        if rows:
            await self._enqueue(rows)

    async def _enqueue(self, rows: list[tuple[str, str | None, dict[str, Any] | None, str | None]]) -> None:
        if self.forward_enqueue is not None:
            await self.forward_enqueue(rows)
            return
        await self._queue_lock.acquire()
        try:
            numbered: list[OutboxRow] = []
            for destination, event_id, edu, key in rows:
                self._seq += 1
                numbered.append((destination, self._seq, event_id, edu, key))
            counts = await self.store.enqueue(numbered)
        finally:
            self._queue_lock.release()
        for destination, count in counts.items():
            dest = self._destination(destination)
            dest.pending += count
            dest.wake()

    async def enqueue(self, rows: list[tuple[str, str | None, dict[str, Any] | None, str | None]]) -> None:
        """Rows queued by another process (homeserver/workers/jobs.py)."""
        await self._enqueue(rows)

    def _destination(self, name: str, state: DestinationState | None = None) -> "Destination":
        dest = self._destinations.get(name)
        if dest is None:
            dest = self._destinations[name] = Destination(self, state or DestinationState(name, -1))
        return dest

    def remote_is_up(self, server_name: str) -> None:
        """A request from `server_name` arrived: if we were backing off from it, try now."""
        dest = self._destinations.get(server_name)
        if dest is not None and dest.backing_off:
            dest.wake(now=True)

    def destinations(self) -> Iterator["Destination"]:
        return iter(list(self._destinations.values()))


class Destination:
    """One remote server's queue: the coroutine that sends it, one transaction at a time."""

    def __init__(self, sender: FederationSender, state: DestinationState) -> None:
        self.sender = sender
        self.name = state.destination
        # sent_upto -1: not loaded yet (a destination first seen in this run).
        self.state = state
        self.pending = 0
        self.backoff_s = state.retry_interval_ms / 1000
        self.backing_off = False
        # When this run first saw it fail since it last answered (ms); None while it answers
        # or when the outage began before a restart of ours (then it is not probed).
        self.down_since: int | None = None
        # Whether it is worth probing: the last failure got no answer at all (a server that
        # answers with an error is up; it gets the backoff), and no probe has yet found it
        # up only for the transaction to fail again (no try every PROBE_INTERVAL_S then).
        self._probe_worthwhile = False
        self._woken_by_probe = False
        self._running = False
        self._again = False
        self._timer: Any = None
        self._probe_timer: Any = None
        self._probing = False  # a probe is waiting for its answer

    def wake(self, now: bool = False) -> None:
        if now and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
            self.backing_off = False
            self.state.retry_at_ts = 0
        if self.backing_off or self.sender._stopping:
            return
        if self._running:
            self._again = True
            return
        self._running = True
        Deferred.fromCoroutine(self._run())

    def stop(self) -> None:
        for timer in (self._timer, self._probe_timer):
            if timer is not None and timer.active():
                timer.cancel()

    async def _run(self) -> None:
        try:
            if self.state.sent_upto < 0:
                self.state = await self.sender.store.destination(self.name)
                self.backoff_s = self.state.retry_interval_ms / 1000
            now_ms = self.sender.clock.time_ms()
            if self.state.retry_at_ts > now_ms:
                # Backing off since before a restart: keep to it.
                self._back_off((self.state.retry_at_ts - now_ms) / 1000)
                return
            while not self.sender._stopping:
                self._again = False
                sent = await self._send_one()
                # Nothing sent: done, unless rows were queued while it looked.
                if not sent and (not self._again or self.backing_off):
                    return
        except Exception:
            # The database, most likely: try again later, like a remote that did not answer.
            log_failure(log, "federation sender for {dest} failed", dest=self.name)
            self.backoff_s = next_backoff_s(self.backoff_s)
            self._back_off(self.backoff_s)
        finally:
            self._running = False

    async def _send_one(self) -> bool:
        """Send the next transaction; False if there was nothing to send or it failed."""
        store = self.sender.store
        state = self.state
        if state.txn_id is not None and state.txn_upto is not None:
            items = await store.items(self.name, state.sent_upto, state.txn_upto, MAX_PDUS + MAX_EDUS)
            txn_id, upto = state.txn_id, state.txn_upto
        else:
            # The id is unique per destination, even after our database was started afresh
            # (receivers remember the ids they answered, Synapse for a day): when it was
            # made, and its last row. Saved with the rows' reading, before sending, so every
            # retry carries the same id.
            started = await store.start_next_transaction(
                self.name, state.sent_upto, MAX_PDUS + MAX_EDUS, take_transaction, self.sender.clock.time_ms()
            )
            if started is None:
                return False
            txn_id, items = started
            upto = items[-1].seq
            state.txn_id, state.txn_upto = txn_id, upto
        body = await self._body(items)
        try:
            await self.sender.transport(self.name, txn_id, body)
        except RemoteError as error:
            if error.status != 400:
                return self._failed(error)
            # The remote refuses these bytes as malformed: sending them again gets the same
            # answer and would hold everything after them back for ever.
            log.warn("{dest} refused transaction {txn}: {error}", dest=self.name, txn=txn_id, error=error)
        except Exception as error:
            return self._failed(error)
        await store.transaction_answered(self.name, upto)
        state.sent_upto, state.txn_id, state.txn_upto = upto, None, None
        state.retry_interval_ms = state.retry_at_ts = 0
        self.pending = max(0, self.pending - len(items))
        self.backoff_s = 0
        self.down_since = None
        self._woken_by_probe = False
        return True

    async def _body(self, items: list[QueuedItem]) -> dict[str, Any]:
        ids = [i.event_id for i in items if i.event_id is not None]
        found = await self.sender.events.get_events(ids)
        # An event purged since it was queued (retention, a purged room) is left out.
        pdus = [found[e].pdu for e in ids if e in found]
        now = self.sender.clock.time_ms()
        edus = [
            {k: v for k, v in i.edu.items() if k != EXPIRES_KEY}
            for i in items
            if i.edu is not None and i.edu.get(EXPIRES_KEY, now) >= now
        ]
        body: dict[str, Any] = {
            "origin": self.sender.server_name,
            "origin_server_ts": self.sender.clock.time_ms(),
            "pdus": pdus,
        }
        if edus:
            body["edus"] = edus
        return body

    def _failed(self, error: Exception) -> bool:
        delay = next_backoff_s(self.backoff_s)
        log.info(
            "federation: {dest} did not take a transaction ({error}); next try in {delay:.0f}s",
            dest=self.name,
            error=error,
            delay=delay,
        )
        self.backoff_s = delay
        if self.down_since is None:
            self.down_since = self.sender.clock.time_ms()
        self._probe_worthwhile = not isinstance(error, RemoteError) and not self._woken_by_probe
        retry_at = self.sender.clock.time_ms() + int(delay * 1000)
        self.state.retry_interval_ms, self.state.retry_at_ts = int(delay * 1000), retry_at
        if not self.sender._stopping:  # a request cut by the shutdown is no sign the remote is down
            Deferred.fromCoroutine(self._save_backoff(int(delay * 1000), retry_at))
        self._back_off(delay)
        return False

    async def _save_backoff(self, interval_ms: int, retry_at: int) -> None:
        try:
            await self.sender.store.set_backoff(self.name, interval_ms, retry_at)
        except Exception:
            log_failure(log, "could not save the backoff of {dest}", dest=self.name)

    def _back_off(self, delay_s: float) -> None:
        self.backing_off = True
        if self.sender._stopping:
            return  # shutting down: the saved state resumes it at the next start

        def retry() -> None:
            self._timer = None
            self.backing_off = False
            self.state.retry_at_ts = 0
            self.wake()

        self._timer = self.sender.clock.callLater(delay_s, retry)
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        sender = self.sender
        if sender.probe is None or self.down_since is None or sender._stopping or not self._probe_worthwhile:
            return
        if self._probing or (self._probe_timer is not None and self._probe_timer.active()):
            return  # one probe loop per destination (a probe in flight reschedules itself)
        if sender.clock.time_ms() - self.down_since >= PROBE_WINDOW_S * 1000:
            return  # down for long: the backoff's tries (and its requests to us) will do

        def probe() -> None:
            self._probe_timer = None
            Deferred.fromCoroutine(self._probe())

        self._probe_timer = sender.clock.callLater(PROBE_INTERVAL_S, probe)

    async def _probe(self) -> None:
        if not self.backing_off or self.sender.probe is None:
            return
        self._probing = True
        try:
            up = await self.sender.probe(self.name)
        except Exception:
            log_failure(log, "probing {dest} failed", dest=self.name)
            up = False
        finally:
            self._probing = False
        if not self.backing_off:
            return  # the backoff ended while it probed
        if up:
            log.info("federation: {dest} answers again; sending its queue now", dest=self.name)
            self._woken_by_probe = True
            self.wake(now=True)
        else:
            self._schedule_probe()


class _QueueCollector(Collector):
    def __init__(self, sender: FederationSender) -> None:
        self._sender = sender

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "homeserver_federation_destination_lag",
            "PDUs and EDUs queued for each destination server and not yet answered",
            labels=["destination"],
        )
        backoff = GaugeMetricFamily(
            "homeserver_federation_destination_backoff_seconds",
            "The pause before the next try of a destination that did not answer (0 when up)",
            labels=["destination"],
        )
        for dest in self._sender.destinations():
            lag.add_metric([dest.name], dest.pending)
            backoff.add_metric([dest.name], dest.backoff_s if dest.backing_off else 0)
        yield lag
        yield backoff
