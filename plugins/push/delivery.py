"""Delivery: from each committed event to the push gateway requests of its pushers.

For each event the rules decide who is notified (`api.push_decisions`); each of their
`http` pushers gets a notification, queued on the pusher's own queue (first in, first out,
so a pusher's notifications reach its gateway in stream order and a slow or dead gateway
holds up only its own pusher). Users with an `email` pusher have the event handed to
the email notifier instead (plugins/push/email_notifier.py). At the head of its queue a notification is:

- suppressed, if its device was connected (a sync or WebSocket open, or closed less than
  `ack_wait` ago) when the event came and proves receipt within `ack_wait` of it;
- dropped, if the user has read the event meanwhile (their read receipt is at or past it);
- otherwise sent. 2xx: done (and the gateway's `rejected` pushkeys delete those pushers).
  No answer, a timeout, 5xx, 408 or 429: parked in `push_parked`, and the pusher's later
  notifications are parked behind it, retried from there with exponential backoff
  (`retry_min` doubling to `retry_max`), each dropped after `give_up_after`. Another
  4xx, or an address the policy refuses: dropped and logged (trying again would not help).

Every notification holds its batch of the stream (`batch.hold()`) until it is settled:
sent, suppressed, dropped or parked. So the subscription's saved position never passes an
event whose notifications may still be lost. Settling also records the pusher's position
(`push_progress`, written in batches): after a crash the events handed over again are
skipped for every pusher that had settled them, so a gateway sees a notification twice
only if it was in flight (sent, its settlement not yet written) at the crash, and then
with the same event id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredLock

from homeserver.plugins import EventBatch, PluginApi, PushDecision, Pusher, StreamEvent, log_failure
from plugins.push.config import DeliveryConfig
from plugins.push.delivery_format import EventFacts, badge_body, device_entry, is_short, notify_body
from plugins.push.delivery_http import GatewayClient, Outcome, Refused, Sent, TryAgain
from plugins.push.delivery_store import DeliveryStore, Parked
from plugins.push.email_notifier import EmailNotifier

_PARKED_PAGE = 50
# A drain that failed (the database down) is tried again after retry_min, doubling up to this:
# short, so that pushes resume soon after the database is back.
_DRAIN_RETRY_MAX_S = 30.0


@dataclass
class Notification:
    event: StreamEvent
    decision: PushDecision
    pusher: Pusher
    # Until when (clock seconds) a receipt by the device suppresses it; None: push at once.
    ack_deadline: float | None
    release: Callable[[], None]


@dataclass(eq=False)  # each one its own (a key of Deliverer._badge_pending)
class Badge:
    """A counts-only notification for a pusher after its user's read receipt(s): the count is
    read when it reaches the head of the queue, so it carries the latest."""

    pusher: Pusher
    # The first receipts stream position it is for (the saved position stays below it).
    since: int

    def release(self) -> None:
        pass  # holds no batch of the event stream


@dataclass
class PusherQueue:
    pusher_id: str
    items: deque[Notification | Badge] = field(default_factory=deque)
    draining: Deferred[None] | None = None
    # Whether it has notifications in push_parked: new ones are parked behind them.
    parked: bool = False
    lock: DeferredLock = field(default_factory=DeferredLock)
    delay_s: float = 0.0
    retry_call: Any = None
    gone: bool = False
    # The request to its gateway in flight, if any.
    posting: Deferred[Outcome] | None = None
    # The pause before draining again after a failure (0 once a notification went through).
    drain_delay_s: float = 0.0
    # A badge update waiting for `badge_delay` (the delayed call), or queued and not begun:
    # a receipt meanwhile needs no other, that one will read the count then.
    badge_timer: Any = None
    badge_waiting: Badge | None = None
    badge_queued: Badge | None = None


class Deliverer:
    def __init__(
        self,
        api: PluginApi,
        config: DeliveryConfig,
        client: GatewayClient,
        email: EmailNotifier | None = None,
    ) -> None:
        self.api = api
        self.email = email
        self.config = config
        self.client = client
        self.store = DeliveryStore(api)
        self.queues: dict[str, PusherQueue] = {}
        self.progress: dict[str, int] = {}
        self._dirty: dict[str, int] = {}
        self._flushing = False
        self._stopping = False
        # The unread count each pusher was last sent (by an event push or a badge update):
        # a badge update of the same count is not sent. In memory: after a restart, sent.
        self.told: dict[str, int] = {}
        # Receipts (their stream positions) whose badge updates are not yet settled: the
        # saved receipts position stays below the oldest.
        self._badge_pending: dict[object, int] = {}
        self._receipts_saved = 0
        self.outcomes = api.counter(
            "notifications", "Push notifications by outcome", ("outcome",)
        )  # sent, suppressed, read, parked, retried, rejected, refused, given_up, badge, badge_unchanged

    async def start(self) -> None:
        self.progress = await self.store.progress()
        for pusher_id in await self.store.parked_pushers():
            queue = self._queue(pusher_id)
            queue.parked = True
            Deferred.fromCoroutine(self._retry(queue))
        self.api.schedule(600, self._forget_deleted_pushers, on="pusher")
        await self._resume_receipts()
        self.api.schedule(60, self._save_receipts_position, on="pusher")

    async def stop(self) -> None:
        """Finish what is in flight (each request is bounded by `request_timeout`), write the
        progress; what is still queued comes again from the stream at the next start."""
        self._stopping = True
        for queue in self.queues.values():
            if queue.retry_call is not None and queue.retry_call.active():
                queue.retry_call.cancel()
        # Only requests in flight are waited for (each bounded by request_timeout): a wait for
        # a device's receipt is dropped, its notification comes again with its batch.
        posting = [q.posting for q in self.queues.values() if q.posting is not None]
        if posting:
            await DeferredList(posting)
        await self._flush()
        await self._save_receipts_position()
        await self.client.close()

    # From the stream ----------------------------------------------------------------

    async def on_batch(self, batch: EventBatch) -> None:
        emails: list[tuple[StreamEvent, str]] = []
        http: list[tuple[StreamEvent, PushDecision, Pusher]] = []
        for event in batch.events:
            decisions = await self.api.push_decisions(event)
            if not decisions:
                continue
            pushers = await self.api.pushers_for_users(sorted({d.user_id for d in decisions}))
            for decision in decisions:
                mailed = False
                for pusher in pushers.get(decision.user_id, ()):
                    if pusher.kind == "email":
                        if not mailed:  # one pending entry per user, whatever their addresses
                            emails.append((event, decision.user_id))
                            mailed = True
                    elif pusher.kind == "http" and event.position > self.progress.get(pusher.pusher_id, 0):
                        http.append((event, decision, pusher))  # else settled before a restart
        if emails and self.email is not None:
            # Written before anything of the batch is queued: if this fails, the batch comes
            # again whole, and its saved position never passes events not yet written.
            await self.email.remember(emails)
        for event, decision, pusher in http:
            connected = self.api.device_connected(decision.user_id, pusher.device_id, self.config.ack_wait_s)
            # Within ack_wait of the event's commit, not of this moment: a consumer
            # catching up does not make a device's receipt any later.
            sent_s = event.event.get("origin_server_ts", 0) / 1000
            deadline = sent_s + self.config.ack_wait_s if connected else None
            self._enqueue(Notification(event, decision, pusher, deadline, batch.hold()))

    def _queue(self, pusher_id: str) -> PusherQueue:
        queue = self.queues.get(pusher_id)
        if queue is None or queue.gone:
            queue = self.queues[pusher_id] = PusherQueue(pusher_id, delay_s=self.config.retry_min_s)
        return queue

    def _enqueue(self, notification: Notification) -> None:
        queue = self._queue(notification.pusher.pusher_id)
        queue.items.append(notification)
        self._start_drain(queue)

    # One pusher's queue -------------------------------------------------------------

    async def _drain(self, queue: PusherQueue) -> None:
        failed = False
        try:
            while queue.items and not self._stopping and not queue.gone:
                head = queue.items[0]
                if isinstance(head, Badge):
                    await self._deliver_badge(queue, head)
                else:
                    await self._deliver(queue, head)
                queue.drain_delay_s = 0.0
        except Exception:
            # Mostly the database is down (a body reads unread counts; parking writes). The
            # notification stays at the head and is tried again after a pause: giving up
            # would leave it, and the stream position its hold keeps, until the next event.
            log_failure(self.api.log, "push delivery for pusher {p} failed", p=queue.pusher_id)
            failed = True
        finally:
            queue.draining = None
        if failed:
            queue.drain_delay_s = min(
                max(queue.drain_delay_s * 2, self.config.retry_min_s), _DRAIN_RETRY_MAX_S
            )
            self.api.clock.callLater(queue.drain_delay_s, self._start_drain, queue)

    def _start_drain(self, queue: PusherQueue) -> None:
        if queue.items and queue.draining is None and not self._stopping and not queue.gone:
            draining = Deferred.fromCoroutine(self._drain(queue))
            # A drain that ended at once (it failed before its first wait) must not stay
            # recorded as running: nothing would ever start this queue's drain again.
            queue.draining = None if draining.called else draining

    async def _deliver(self, queue: PusherQueue, item: Notification) -> None:
        if item.ack_deadline is not None:
            wait = max(0.0, item.ack_deadline - self.api.clock.seconds())
            if await self.api.wait_for_device_receipt(
                item.decision.user_id, item.pusher.device_id, item.event.position, wait
            ):
                self.outcomes.labels("suppressed").inc()
                self._settle(queue, item)
                return
        if await self.api.event_read(item.decision.user_id, item.event):
            # Read (on another device) since it was decided: no push for it. The receipt
            # queued a badge update behind it, with the count after it.
            self.outcomes.labels("read").inc()
            self._settle(queue, item)
            return
        body = await self._body(item)
        if queue.parked and await self._park(queue, item, body):
            return
        outcome = await self._post(queue, item.pusher, body)
        if isinstance(outcome, Sent):
            self.outcomes.labels("sent").inc()
            self.told[queue.pusher_id] = body["notification"]["counts"]["unread"]
            if item.pusher.pushkey in outcome.rejected:
                await self._rejected(queue, item.pusher)  # settles this one and all queued behind
            else:
                self._settle(queue, item)
        elif isinstance(outcome, TryAgain):
            self.api.log.info(
                "push gateway of pusher {pusher_id} failed ({reason}): parked for a retry",
                pusher_id=queue.pusher_id,
                reason=outcome.reason,
            )
            queue.parked = True
            if not await self._park(queue, item, body):
                self._settle(queue, item)  # cannot happen: parked was just set
        else:
            self._refused(queue, item.pusher, outcome)
            self._settle(queue, item)

    async def _post(self, queue: PusherQueue, pusher: Pusher, body: dict[str, Any]) -> Outcome:
        queue.posting = Deferred.fromCoroutine(self.client.post(pusher.data["url"], body))
        try:
            return await queue.posting
        finally:
            queue.posting = None

    async def _park(self, queue: PusherQueue, item: Notification, body: dict[str, Any]) -> bool:
        """Park the notification behind the pusher's others; False if they were all sent meanwhile."""
        await queue.lock.acquire()
        try:
            if not queue.parked:
                return False
            parked = Parked(
                queue.pusher_id,
                item.event.position,
                item.event.event["event_id"],
                body,
                self.api.clock.time_ms(),
            )
            # If this fails (the database is down) the notification stays at the head of
            # the queue, and the drain tries it again after a pause (`_drain`).
            await self.store.park(parked)
            self.outcomes.labels("parked").inc()
            queue.items.popleft()
            self.progress[queue.pusher_id] = max(self.progress.get(queue.pusher_id, 0), item.event.position)
            item.release()
            self._schedule_retry(queue)
            return True
        finally:
            queue.lock.release()

    def _settle(self, queue: PusherQueue, item: Notification) -> None:
        queue.items.popleft()
        pusher_id = queue.pusher_id
        if item.event.position > self.progress.get(pusher_id, 0):
            self.progress[pusher_id] = item.event.position
            self._dirty[pusher_id] = item.event.position
            if not self._flushing:
                Deferred.fromCoroutine(self._flush())
        item.release()

    async def _flush(self) -> None:
        """Write settled positions, one transaction at a time, coalescing what comes meanwhile."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, {}
                try:
                    await self.store.save_progress(dirty)
                except Exception:
                    log_failure(self.api.log, "could not save push progress")
                    for pusher_id, position in dirty.items():
                        self._dirty[pusher_id] = max(position, self._dirty.get(pusher_id, 0))
                    # Again after a pause, not only at the next settlement: until written, a
                    # crash would push these notifications a second time.
                    self.api.clock.callLater(self.config.retry_min_s, self._flush_again)
                    return
        finally:
            self._flushing = False

    def _flush_again(self) -> None:
        if not self._stopping:  # stop() flushes itself
            Deferred.fromCoroutine(self._flush())

    async def _body(self, item: Notification) -> dict[str, Any]:
        event = item.event.event
        room_id = event["room_id"]
        facts = EventFacts(await self.api.room_encrypted(room_id), None, None)
        if not is_short(event, item.pusher, facts):
            facts = EventFacts(
                False,
                await self.api.room_name(room_id),
                await self.api.display_name(room_id, event["sender"]),
            )
        unread = await self.api.notification_count(item.decision.user_id)
        return notify_body(event, item.pusher, item.decision, facts, unread)

    async def _rejected(self, queue: PusherQueue, pusher: Pusher) -> None:
        """The gateway says the pushkey is dead: the pusher goes, with all it had queued."""
        self.outcomes.labels("rejected").inc()
        self.api.log.info(
            "push gateway rejected the pushkey of pusher {pusher_id} of {user_id}: removed",
            pusher_id=pusher.pusher_id,
            user_id=pusher.user_id,
        )
        queue.gone = True
        await self.api.remove_pusher(pusher.user_id, pusher.app_id, pusher.pushkey)
        await self.store.forget_pusher(pusher.pusher_id)
        self.progress.pop(pusher.pusher_id, None)
        self._cancel_badge(queue)
        while queue.items:
            item = queue.items.popleft()
            item.release()
            if isinstance(item, Badge):
                self._badge_settled(item)

    def _refused(self, queue: PusherQueue, pusher: Pusher, outcome: Refused) -> None:
        self.outcomes.labels("refused").inc()
        self.api.log.warn(
            "push to pusher {pusher_id} of {user_id} dropped: {reason}",
            pusher_id=queue.pusher_id,
            user_id=pusher.user_id,
            reason=outcome.reason,
        )

    # Badges: counts-only notifications after read receipts ------------------------------

    def _on_receipt(self, user_id: str, room_id: str, position: int) -> None:
        if self._stopping:
            return
        token = object()
        self._badge_pending[token] = position  # until its pushers are looked up
        Deferred.fromCoroutine(self._badge_for_user(token, user_id, position))

    async def _badge_for_user(self, token: object, user_id: str, position: int) -> None:
        try:
            pushers = (await self.api.pushers_for_users([user_id])).get(user_id, ())
            for pusher in pushers:
                if pusher.kind == "http":
                    self._want_badge(pusher, position)
        except Exception:
            # Its receipt stays unsettled: looked at again at the next start.
            log_failure(self.api.log, "badge update for {user_id} failed", user_id=user_id)
            return
        del self._badge_pending[token]

    def _want_badge(self, pusher: Pusher, position: int) -> None:
        """A receipt of the pusher's user: one badge update after `badge_delay`, behind what
        is queued for the pusher by then, unless one is already waiting (it will do)."""
        queue = self._queue(pusher.pusher_id)
        if queue.badge_queued is not None or queue.badge_waiting is not None:
            return
        badge = Badge(pusher, position)
        self._badge_pending[badge] = position
        queue.badge_waiting = badge
        queue.badge_timer = self.api.clock.callLater(self.config.badge_delay_s, self._badge_due, queue, badge)

    def _badge_due(self, queue: PusherQueue, badge: Badge) -> None:
        queue.badge_timer = queue.badge_waiting = None
        if queue.gone:  # the pusher was rejected meanwhile
            self._badge_settled(badge)
            return
        if self._stopping:
            return  # still pending: its receipt is looked at again at the next start
        queue.badge_queued = badge
        queue.items.append(badge)
        self._start_drain(queue)

    def _cancel_badge(self, queue: PusherQueue) -> None:
        """The pusher is gone: its waiting badge update too."""
        if queue.badge_timer is not None and queue.badge_timer.active():
            queue.badge_timer.cancel()
        if queue.badge_waiting is not None:
            self._badge_settled(queue.badge_waiting)
        queue.badge_timer = queue.badge_waiting = None

    async def _deliver_badge(self, queue: PusherQueue, badge: Badge) -> None:
        if queue.badge_queued is badge:
            # From here a receipt needs an update of its own: this one's count may be older.
            queue.badge_queued = None
        pusher = badge.pusher
        unread = await self.api.notification_count(pusher.user_id)
        if self.told.get(queue.pusher_id) == unread:
            self.outcomes.labels("badge_unchanged").inc()
            self._settle_badge(queue, badge)
            return
        if queue.parked and await self._park_badge(queue, badge):
            return
        outcome = await self._post(queue, pusher, badge_body(pusher, unread))
        if isinstance(outcome, Sent):
            self.outcomes.labels("badge").inc()
            self.told[queue.pusher_id] = unread
            if pusher.pushkey in outcome.rejected:
                await self._rejected(queue, pusher)
            else:
                self._settle_badge(queue, badge)
        elif isinstance(outcome, TryAgain):
            queue.parked = True
            if not await self._park_badge(queue, badge):
                self._settle_badge(queue, badge)  # cannot happen: parked was just set
        else:
            self._refused(queue, pusher, outcome)
            self._settle_badge(queue, badge)

    async def _park_badge(self, queue: PusherQueue, badge: Badge) -> bool:
        """Park the badge update behind the pusher's notifications; False if they were all
        sent meanwhile. Its count is read again when it is retried."""
        await queue.lock.acquire()
        try:
            if not queue.parked:
                return False
            await self.store.park_badge(queue.pusher_id, self.api.clock.time_ms())
            self.outcomes.labels("parked").inc()
            self._settle_badge(queue, badge)
            self._schedule_retry(queue)
            return True
        finally:
            queue.lock.release()

    def _settle_badge(self, queue: PusherQueue, badge: Badge) -> None:
        queue.items.popleft()
        self._badge_settled(badge)

    def _badge_settled(self, badge: Badge) -> None:
        self._badge_pending.pop(badge, None)

    async def _retry_badge(self, queue: PusherQueue, pusher: Pusher) -> bool:
        """The pusher's parked badge update, if any, after its parked notifications: with the
        count now. False if the gateway failed again (a retry is scheduled)."""
        first_failed_ts = await self.store.parked_badge(queue.pusher_id)
        if first_failed_ts is None:
            return True
        if self.api.clock.time_ms() - first_failed_ts > self.config.give_up_after_s * 1000:
            self.outcomes.labels("given_up").inc()
            await self.store.unpark_badge(queue.pusher_id)
            return True
        unread = await self.api.notification_count(pusher.user_id)
        outcome = await self._post(queue, pusher, badge_body(pusher, unread))
        if isinstance(outcome, TryAgain):
            self._back_off(queue)
            return False
        await self.store.unpark_badge(queue.pusher_id)
        if isinstance(outcome, Sent):
            self.outcomes.labels("badge").inc()
            self.told[queue.pusher_id] = unread
            if pusher.pushkey in outcome.rejected:
                await self._rejected(queue, pusher)
        else:
            self._refused(queue, pusher, outcome)
        return True

    async def _resume_receipts(self) -> None:
        """Badge updates for the receipts stored since the saved position (while the server
        was down, or before a crash settled them), then for each receipt as it comes."""
        self.api.on_read_receipt(self._on_receipt)
        current = self.api.read_receipts_position()
        saved = await self.store.receipts_position()
        if saved is None:  # the first start: no receipt before it wants an update
            await self.store.save_receipts_position(current)
            self._receipts_saved = current
            return
        self._receipts_saved = saved
        users: dict[str, int] = {}
        for position, user_id, _room_id in await self.api.read_receipts_between(saved, current):
            users.setdefault(user_id, position)
        for user_id, position in users.items():
            self._on_receipt(user_id, "", position)

    def _receipts_settled(self) -> int:
        """The receipts position up to which every badge update is settled."""
        if self._badge_pending:
            return min(self._badge_pending.values()) - 1
        return self.api.read_receipts_position()

    async def _save_receipts_position(self) -> None:
        position = self._receipts_settled()
        if position > self._receipts_saved:
            await self.store.save_receipts_position(position)
            self._receipts_saved = position

    # Parked notifications ---------------------------------------------------------------

    def _schedule_retry(self, queue: PusherQueue) -> None:
        if queue.retry_call is None or not queue.retry_call.active():
            queue.retry_call = self.api.clock.callLater(
                queue.delay_s, lambda: Deferred.fromCoroutine(self._retry(queue))
            )

    async def _retry(self, queue: PusherQueue) -> None:
        """Send the pusher's parked notifications, oldest first, until one fails again."""
        if self._stopping or queue.gone:
            return
        await queue.lock.acquire()
        try:
            found = await self.api.pushers_by_ids([queue.pusher_id])
            if not found:
                queue.gone = True  # deleted meanwhile: its parked notifications go with it
                await self.store.forget_pusher(queue.pusher_id)
                return
            pusher = found[0]
            while not self._stopping:
                rows = await self.store.parked(queue.pusher_id, _PARKED_PAGE)
                if not rows:
                    if not await self._retry_badge(queue, pusher) or queue.gone:
                        return
                    queue.parked = False
                    queue.delay_s = self.config.retry_min_s
                    break
                for row in rows:
                    if not await self._retry_one(queue, pusher, row):
                        return
                    if queue.gone:
                        return
        except Exception:
            log_failure(self.api.log, "retrying pushes for pusher {p} failed", p=queue.pusher_id)
            self._back_off(queue)
        finally:
            queue.lock.release()
        self._start_drain(queue)

    async def _retry_one(self, queue: PusherQueue, pusher: Pusher, row: Parked) -> bool:
        """One parked notification; False if the gateway failed again (a retry is scheduled)."""
        if self.api.clock.time_ms() - row.first_failed_ts > self.config.give_up_after_s * 1000:
            self.outcomes.labels("given_up").inc()
            self.api.log.warn(
                "gave up on the push of {event_id} to pusher {pusher_id}: failing since {since} ms",
                event_id=row.event_id,
                pusher_id=row.pusher_id,
                since=row.first_failed_ts,
            )
            await self.store.unpark(row.pusher_id, row.position)
            return True
        body = dict(row.body)
        notification = dict(body["notification"])
        event = StreamEvent(row.position, {"event_id": row.event_id, "room_id": notification["room_id"]})
        if await self.api.event_read(pusher.user_id, event):
            # Read on another device while the gateway was down: as at the head of the queue.
            self.outcomes.labels("read").inc()
            await self.store.unpark(row.pusher_id, row.position)
            return True
        tweaks = notification["devices"][0].get("tweaks", {}) if notification.get("devices") else {}
        notification["devices"] = [device_entry(pusher, tweaks)]
        body["notification"] = notification
        outcome = await self._post(queue, pusher, body)
        if isinstance(outcome, TryAgain):
            self._back_off(queue)
            return False
        await self.store.unpark(row.pusher_id, row.position)
        if isinstance(outcome, Sent):
            self.outcomes.labels("retried").inc()
            self.told[queue.pusher_id] = notification["counts"]["unread"]
            if pusher.pushkey in outcome.rejected:
                await self._rejected(queue, pusher)
        else:
            self._refused(queue, pusher, outcome)
        return True

    def _back_off(self, queue: PusherQueue) -> None:
        queue.delay_s = min(queue.delay_s * 2, self.config.retry_max_s)
        self._schedule_retry(queue)

    async def _forget_deleted_pushers(self) -> None:
        """Drop the progress rows of pushers deleted since (their parked rows go at retry)."""
        known = await self.store.known_pushers()
        if not known:
            return
        existing = {p.pusher_id for p in await self.api.pushers_by_ids(known)}
        for pusher_id in known:
            if pusher_id not in existing and pusher_id not in self.queues:
                await self.store.forget_pusher(pusher_id)
                self.progress.pop(pusher_id, None)
