"""Email notifications: notifying messages left unread are mailed, batched per user.

For a user with an `email` pusher, each event the push rules say notifies them is kept in
`push_email_pending` (written before the stream's batch is done, so a crash loses none).
A timer per user, on the server's clock, fires `email_delay` after their oldest pending
event, and not before `email_throttle` after their last mail. Then, per room, only the
events still unread count: the room's notification count says how many of the newest
are unread (0 once a read receipt passed them), so a room read meanwhile drops out. The
rest go in one mail to each of the user's email addresses with a pusher, and are
settled with the time of the mail in one transaction. A crash between sending and
settling sends that one mail again; `mailed_upto` keeps events handed over again by the
stream from being mailed twice.

Users without an email pusher cost nothing here: the deliverer hands over only events
for users it found an email pusher for.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from homeserver.plugins import PluginApi, StreamEvent
from plugins.push import email_format
from plugins.push.config import DeliveryConfig
from plugins.push.email_format import MailedMessage, MailedRoom
from plugins.push.email_store import EmailStore, PendingEvent, UserDue


class EmailNotifier:
    def __init__(self, api: PluginApi, config: DeliveryConfig) -> None:
        self.api = api
        self.config = config
        self.store = EmailStore(api)
        self.timers: dict[str, Any] = {}  # user id -> its IDelayedCall
        self._sending: dict[str, Deferred[None]] = {}
        self._stopping = False
        self.outcomes = api.counter(
            "emails", "Email notifications by outcome", ("outcome",)
        )  # sent, read (all read before the delay), failed

    async def start(self) -> None:
        for due in await self.store.due_users():
            self._schedule(due)

    async def stop(self) -> None:
        """Cancel the timers; a mail being sent is waited for (bounded by the SMTP timeout)."""
        self._stopping = True
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        for sending in list(self._sending.values()):
            await sending

    async def remember(self, items: list[tuple[StreamEvent, str]]) -> None:
        """Events that notify users with an email pusher: (event, user id) pairs."""
        now = self.api.clock.time_ms()
        pending = []
        for item, user_id in items:
            sent = item.event.get("origin_server_ts")
            received = sent if isinstance(sent, int) and sent <= now else now
            pending.append(
                PendingEvent(user_id, item.position, item.event["room_id"], item.event["event_id"], received)
            )
        for due in await self.store.remember(pending):
            self._schedule(due)

    def _due_s(self, oldest_ts: int, last_sent_ts: int | None) -> float:
        due = oldest_ts / 1000 + self.config.email_delay_s
        if last_sent_ts is not None:
            due = max(due, last_sent_ts / 1000 + self.config.email_throttle_s)
        return due

    def _schedule(self, due: UserDue, at_s: float | None = None) -> None:
        if self._stopping or due.user_id in self._sending:
            return  # a mail being sent schedules the next itself
        when = self._due_s(due.oldest_ts, due.last_sent_ts) if at_s is None else at_s
        timer = self.timers.get(due.user_id)
        if timer is not None and timer.active():
            if timer.getTime() <= when:
                return
            timer.cancel()
        delay = max(0.0, when - self.api.clock.seconds())
        self.timers[due.user_id] = self.api.clock.callLater(delay, self._fire, due.user_id)

    def _fire(self, user_id: str) -> None:
        self.timers.pop(user_id, None)
        if self._stopping or user_id in self._sending:
            return
        sending = Deferred.fromCoroutine(self._mail(user_id))
        if not sending.called:
            self._sending[user_id] = sending

    async def _mail(self, user_id: str) -> None:
        again: float | None = None
        try:
            again = await self._mail_due(user_id)
        except Exception:
            self.outcomes.labels("failed").inc()
            self.api.log.failure("email notification for {user_id} failed", user_id=user_id)
            again = self.api.clock.seconds() + self.config.email_delay_s  # try again later
        finally:
            self._sending.pop(user_id, None)
        if again is not None:
            self._schedule(UserDue(user_id, 0, None), at_s=again)

    async def _mail_due(self, user_id: str) -> float | None:
        """Mail the user's unread pending events if due; returns when to look again, if at all."""
        events, last_sent = await self.store.pending(user_id)
        if not events:
            return None
        now_s = self.api.clock.seconds()
        due_s = self._due_s(min(e.received_ts for e in events), last_sent)
        if now_s < due_s:
            return due_s
        pushers = (await self.api.pushers_for_users([user_id])).get(user_id, ())
        addresses = sorted({p.pushkey for p in pushers if p.kind == "email"})
        if not addresses:  # the email pushers were deleted meanwhile
            await self.store.settle(user_id, [e.position for e in events], None)
            return None
        unread, read = await self._unread_by_room(user_id, events)
        if not unread:
            self.outcomes.labels("read").inc()
            await self.store.settle(user_id, [e.position for e in read], None)
            return None
        rooms = [await self._room(user_id, room_id, room_events) for room_id, room_events in unread.items()]
        subject = email_format.subject(self.api.server_name, rooms)
        for address in addresses:
            text = email_format.body(
                self.api.server_name, user_id, address, rooms, self.config.email_client_url
            )
            await self.api.send_mail(address, subject, text)
        self.outcomes.labels("sent").inc()
        self.api.log.info(
            "email notification for {user_id}: {count} messages in {rooms} rooms",
            user_id=user_id,
            count=sum(len(v) for v in unread.values()),
            rooms=len(unread),
        )
        mailed = [e.position for room_events in unread.values() for e in room_events]
        await self.store.settle(user_id, mailed + [e.position for e in read], self.api.clock.time_ms())
        events, last_sent = await self.store.pending(user_id)  # came while the mail was sent
        if events:
            return self._due_s(min(e.received_ts for e in events), last_sent)
        return None

    async def _unread_by_room(
        self, user_id: str, events: list[PendingEvent]
    ) -> tuple[dict[str, list[PendingEvent]], list[PendingEvent]]:
        """Split pending events into those still unread, by room, and those read. Unread
        notifying events are a room's newest: its notification count says how many."""
        by_room: dict[str, list[PendingEvent]] = {}
        for event in events:
            by_room.setdefault(event.room_id, []).append(event)
        unread: dict[str, list[PendingEvent]] = {}
        read: list[PendingEvent] = []
        for room_id, room_events in by_room.items():
            count = await self.api.room_notification_count(user_id, room_id)
            if await self.api.room_membership(room_id, user_id) != "join":
                count = 0  # left the room: nothing of it is mailed
            keep = room_events[max(0, len(room_events) - count) :] if count > 0 else []
            read.extend(room_events[: len(room_events) - len(keep)])
            if keep:
                unread[room_id] = keep
        return unread, read

    async def _room(self, user_id: str, room_id: str, events: list[PendingEvent]) -> MailedRoom:
        messages = []
        for pending in events:
            event = await self.api.event_for_user(user_id, room_id, pending.event_id)
            sender = event.get("sender") if event is not None else None
            name = None
            if isinstance(sender, str):
                name = await self.api.display_name(room_id, sender) or sender
            messages.append(MailedMessage(name or "Someone", event))
        return MailedRoom(
            room_id, await self.api.room_name(room_id), await self.api.room_encrypted(room_id), messages
        )
