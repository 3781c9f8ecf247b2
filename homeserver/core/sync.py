"""/sync: what changed for a user between two tokens, waiting for news if nothing did.

A response covers, for each stream, exactly the range (since, upto], where
`upto` is read once, synchronously, before anything is computed: events up to
the position the group commit has finished (never one still in flight),
receipts/account data/presence up to their own finished positions. The next
sync starts where this one ended, so a token never skips or repeats an event.

The hot case - a long-poll woken by one new message in one room - is answered
from memory: the user's rooms, the room's recent events (already encoded) and
its head; the database is only asked for wider ranges.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from homeserver.core.account_data import AccountDataService
from homeserver.core.clock import Clock
from homeserver.core.delivery import DeliveryTracker
from homeserver.core.e2ee import KeyService
from homeserver.core.event_format import EncodedEvents, RawJson, client_event, dumps_with_raw
from homeserver.core.filters import SyncFilter
from homeserver.core.ignored_users import IgnoredUsers
from homeserver.core.messages import state_at
from homeserver.core.presence import PresenceService
from homeserver.core.receipts import ReceiptService
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.core.rooms import RoomService
from homeserver.core.streams import SyncToken, pagination_token
from homeserver.core.threads import ThreadRootCache, thread_summaries
from homeserver.core.timeline_cache import TimelineCache
from homeserver.core.txn_ids import client_txn_id
from homeserver.core.typing import TypingService
from homeserver.core.unread import UnreadCounter, thread_of
from homeserver.core.visibility import VisibilityFilter
from homeserver.errors import UnknownToken
from homeserver.json_encoding import dumps_text
from homeserver.notifier import Notifier
from homeserver.storage import Storage
from homeserver.storage.events import PersistItem, StoredEvent

MAX_TIMEOUT_MS = 5 * 60_000
_RECENT_TXNS = 50_000


@dataclass(slots=True)
class SyncRequest:
    user_id: str
    device_id: str
    since: SyncToken | None
    timeout_ms: int
    filter: SyncFilter
    full_state: bool = False
    set_presence: str | None = None
    # The users this user ignores (m.ignored_user_list): their events and invites are left out.
    ignored: frozenset[str] = frozenset()


def not_ignored(events: list[StoredEvent], ignored: frozenset[str]) -> list[StoredEvent]:
    """Without the ignored users' messages (their state events stay: they are the room's state)."""
    if not ignored:
        return events
    return [ev for ev in events if ev.sender not in ignored or ev.state_key is not None]


class SyncService:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        notifier: Notifier,
        heads: RoomHeads,
        timeline: TimelineCache,
        rooms: RoomService,
        receipts: ReceiptService,
        typing: TypingService,
        presence: PresenceService,
        account_data: AccountDataService,
        delivery: DeliveryTracker,
        unread: UnreadCounter,
        keys: KeyService,
        persisted_upto: Any,
        ignored: IgnoredUsers | None = None,
    ) -> None:
        self.storage = storage
        self.ignored = ignored
        self.clock = clock
        self.notifier = notifier
        self.heads = heads
        self.timeline = timeline
        self.rooms = rooms
        self.receipts = receipts
        self.typing = typing
        self.presence = presence
        self.account_data = account_data
        self.delivery = delivery
        self.unread = unread
        self.keys = keys
        self.visibility = VisibilityFilter(storage, heads, persisted_upto)
        self.encoded = EncodedEvents()
        self._persisted_upto = persisted_upto
        self._recent_txns: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        # Events with a thread reply: only those get a per-reader encoding with `m.thread`.
        self.thread_roots = ThreadRootCache(storage.events)
        # The token current when each user was last woken (see `_nothing_new`).
        self._woken_at: dict[str, SyncToken] = {}
        # Devices deleted (logged out elsewhere) while a long-poll of theirs was open.
        self._logged_out: set[tuple[str, str]] = set()
        # Several processes: a client's token may come from another one, ahead of this one
        # (one process: a token ahead is not ours, and the next one falls back to now).
        self.tokens_from_elsewhere = False
        notifier.add_listener(self._on_wake)

    # Feeding ----------------------------------------------------------------------

    def on_committed(self, items: list[PersistItem]) -> None:
        """A consumer of the committed-event stream: apply redactions to cached copies and
        remember which device sent what (for `transaction_id` in the sender's sync)."""
        for redacted in self.rooms.on_committed([item.event for item in items], self.timeline.find):
            self.encoded.invalidate(redacted.event_id)
        self.thread_roots.on_committed((item.event for item in items), thread_of)
        for item in items:
            if item.txn is not None:
                self._recent_txns[item.event.event_id] = item.txn
                if len(self._recent_txns) > _RECENT_TXNS:
                    self._recent_txns.popitem(last=False)

    async def ignored_by(self, user_id: str) -> frozenset[str]:
        """The users whose messages and invites `user_id`'s syncs leave out."""
        return await self.ignored.of(user_id) if self.ignored is not None else frozenset()

    async def devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        """End the open long-polls of deleted devices now: their clients learn at once, from
        M_UNKNOWN_TOKEN, that they were logged out, not when the poll would have timed out."""
        connections = self.delivery.connections
        ended = {(user_id, d) for d in device_ids if connections.connected(user_id, d, grace_s=0)}
        if ended:
            self._logged_out |= ended
            self.notifier.wake_users([user_id])

    def _check_logged_in(self, req: SyncRequest) -> None:
        if (req.user_id, req.device_id) in self._logged_out:
            raise UnknownToken("This device has been logged out")

    def _on_wake(self, users: set[str]) -> None:
        token = self.current_token()
        woken_at = self._woken_at
        for user_id in users:
            woken_at[user_id] = token

    def _nothing_new(self, user_id: str, since: SyncToken) -> bool:
        """Whether `since` already covers every change that woke this user since start-up.

        Every change a user's sync shows wakes them after it commits, and the token
        recorded then covers it; a client holding a token at or past that one has had
        it. So a long-poll from such a token can wait at once instead of first computing
        an empty response (half of all /sync work under steady messaging).
        """
        woken = self._woken_at.get(user_id)
        return (
            woken is not None
            and since.events >= woken.events
            and since.receipts >= woken.receipts
            and since.typing >= woken.typing
            and since.account_data >= woken.account_data
            and since.presence >= woken.presence
            and since.to_device >= woken.to_device
            and since.device_lists >= woken.device_lists
        )

    def current_token(self) -> SyncToken:
        return SyncToken(
            events=self._persisted_upto(),
            receipts=self.receipts.stream.current,
            typing=self.typing.position,
            account_data=self.account_data.stream.current,
            presence=self.presence.stream.current,
            to_device=self.keys.to_device.current,
            device_lists=self.keys.device_lists.current,
        )

    def _upto(self, since: SyncToken | None) -> SyncToken:
        """How far a response reaches: now, but with several event writers never before
        `since` in events. A token made on another process may be ahead of this one's stream
        (docs/architecture.md, "Several event writers"); the events in between went out with
        it, and a next_batch below it would send them again."""
        upto = self.current_token()
        if self.tokens_from_elsewhere and since is not None and since.events > upto.events:
            return dataclasses.replace(upto, events=since.events)
        return upto

    # The request --------------------------------------------------------------------

    async def sync(self, req: SyncRequest) -> str:
        """The JSON text of a /sync response (long-polls up to `timeout_ms` when nothing changed)."""
        if req.since is not None:
            # Asking for a newer token proves the previous response arrived.
            # Never past what exists: a token from the future would mark later messages delivered.
            self.delivery.acknowledge(
                req.user_id, req.device_id, min(req.since.events, self._persisted_upto())
            )
        await self.presence.sync_started(req.user_id, req.set_presence)
        # A device with a sync open gets new events by sync: pushes to it can wait for its receipt.
        self.delivery.connections.opened(req.user_id, req.device_id)
        try:
            monotonic = self.clock.monotonic
            deadline = monotonic() + min(max(req.timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
            if (
                req.since is not None
                and req.timeout_ms > 0
                and not req.full_state
                and not self.notifier.closing
                and self._nothing_new(req.user_id, req.since)
            ):
                await self.notifier.wait(req.user_id, deadline - monotonic())
            while True:
                version = self.notifier.version
                upto = self._upto(req.since)
                body, has_data, _ = await self._compute(req, upto)
                # After the compute: the device may have gone while it ran, or the wake
                # that ended the wait may have come with news (its key change).
                self._check_logged_in(req)
                remaining = deadline - monotonic()
                if has_data or req.since is None or req.full_state or remaining <= 0 or self.notifier.closing:
                    return body
                if self.notifier.changed_since(req.user_id, version):
                    continue
                del body  # not held by thousands of idle long-polls; recomputed after the wait
                await self.notifier.wait(req.user_id, remaining)
                if deadline - monotonic() <= 0:
                    body, _, _ = await self._compute(req, self._upto(req.since))
                    return body
        finally:
            self.delivery.connections.closed(req.user_id, req.device_id)
            if not self.delivery.connections.connected(req.user_id, req.device_id, grace_s=0):
                self._logged_out.discard((req.user_id, req.device_id))
            self.presence.sync_finished(req.user_id)

    async def delta(self, req: SyncRequest) -> tuple[str, SyncToken, bool]:
        """What changed for the user in (req.since, now], without waiting (the WebSocket stream's step).

        `req.timeout_ms` is ignored and nothing is acknowledged: the caller decides
        what counts as proof of receipt.

        @return: the JSON text of a /sync response, its `next_batch` token, and
            whether it carries anything (rooms, account data or presence).
        """
        body, has_data, next_token = await self._compute(req, self._upto(req.since))
        return body, next_token, has_data

    async def _compute(self, req: SyncRequest, upto: SyncToken) -> tuple[str, bool, SyncToken]:
        since = req.since
        user_id = req.user_id
        req.ignored = await self.ignored_by(user_id)
        rooms = await self.timeline.rooms_for_user(user_id)
        forgotten = await self.rooms.forgotten(user_id)
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        knock: dict[str, Any] = {}
        joined_ids: list[str] = []
        for room_id, (membership, position) in list(rooms.items()):
            if position > upto.events or not req.filter.allows_room(room_id) or room_id in forgotten:
                # A membership newer than this response belongs to the next one.
                continue
            changed = since is None or position > since.events
            if membership == "join":
                joined_ids.append(room_id)
                full = since is None or req.full_state or changed
                if not full and self.timeline.room_last.get(room_id, 0) <= since.events:  # type: ignore[union-attr]
                    continue  # no new events: only ephemeral/account data, added below
                room = await self._joined_room(req, room_id, upto, full, position)
                if room is not None:
                    join[room_id] = room
            elif membership == "invite" and changed:
                head = await self.heads.get(room_id)
                invited_by = head.get("m.room.member", user_id) if head is not None else None
                if invited_by is not None and invited_by.sender in req.ignored:
                    continue  # an ignored user's invite is dropped (spec: Ignoring Users)
                if head is not None:
                    invite[room_id] = {"invite_state": {"events": self.rooms.invite_state(head, user_id)}}
            elif membership == "knock" and changed:
                head = await self.heads.get(room_id)
                if head is not None:
                    knock[room_id] = {"knock_state": {"events": self.rooms.invite_state(head, user_id)}}
            elif (
                membership in ("leave", "ban") and changed and (since is not None or req.filter.include_leave)
            ):
                room = await self._left_room(req, room_id, position)
                if room is not None:
                    leave[room_id] = room
        await self._add_ephemeral(req, join, joined_ids, upto)
        await self._add_room_account_data(req, join, joined_ids, upto)
        # A room listed for a receipt or a marker gets fresh counts too: reading on one
        # device must clear the badge on the others (Synapse does the same).
        for room_id, room in join.items():
            if room and "unread_notifications" not in room:
                await self._add_counts(req, room, room_id)
        join = {room_id: room for room_id, room in join.items() if room}
        response: dict[str, Any] = {"next_batch": str(upto)}
        rooms_part = {
            k: v for k, v in (("join", join), ("invite", invite), ("leave", leave), ("knock", knock)) if v
        }
        response["rooms"] = {"join": join, "invite": invite, "leave": leave, "knock": knock}
        account_data = await self._global_account_data(req, upto)
        presence = await self._presence(req, joined_ids, upto)
        response["account_data"] = {"events": account_data}
        response["presence"] = {"events": presence}
        to_device, reached = await self.keys.to_device_for_sync(
            user_id, req.device_id, since.to_device if since else 0, upto.to_device
        )
        if reached != upto.to_device:
            # More messages than one response carries: the next sync continues from here.
            upto = dataclasses.replace(upto, to_device=reached)
            response["next_batch"] = str(upto)
        keys_changed, keys_left = (
            await self._device_lists(req, since, upto, joined_ids) if since else (set(), set())
        )
        response["to_device"] = {"events": to_device}
        response["device_lists"] = {"changed": sorted(keys_changed), "left": sorted(keys_left)}
        response["device_one_time_keys_count"] = await self.keys.one_time_key_counts(user_id, req.device_id)
        response["device_unused_fallback_key_types"] = await self.keys.fallback_key_types(
            user_id, req.device_id
        )
        has_data = bool(rooms_part or account_data or presence or to_device or keys_changed or keys_left)
        return dumps_with_raw(response), has_data, upto

    # Device lists ---------------------------------------------------------------------------

    async def _sharing(self, joined: list[str]) -> set[str]:
        """Everyone joined to one of these rooms."""
        users: set[str] = set()
        for room_id in joined:
            head = await self.heads.get(room_id)
            if head is not None:
                users.update(head.members("join"))
        return users

    async def _device_lists(
        self, req: SyncRequest, since: SyncToken, upto: SyncToken, joined: list[str]
    ) -> tuple[set[str], set[str]]:
        """Users whose keys the client should re-query (changed) or forget (left).

        changed: a user sharing a room with us changed devices or cross-signing
        keys, or started sharing a room with us (they joined, or we did);
        left: a user stopped sharing any room with us.
        """
        user_id = req.user_id
        changed: set[str] = set()
        left: set[str] = set()
        sharing: set[str] | None = None
        if since.device_lists < upto.device_lists:
            updated = await self.keys.users_changed_between(since.device_lists, upto.device_lists)
            if updated:
                sharing = await self._sharing(joined)
                changed |= updated & (sharing | {user_id})
        rooms = await self.timeline.rooms_for_user(user_id)
        candidates = [
            r
            for r, (_, pos) in rooms.items()
            if self.timeline.room_last_member.get(r, 0) > since.events and pos <= upto.events
        ]
        if candidates:
            moves = await self.storage.events.membership_changes(candidates, since.events, upto.events)
            if moves:
                sharing = sharing if sharing is not None else await self._sharing(joined)
                for room_id, member, _membership in moves:
                    if member == user_id:
                        # We joined or left: everyone in that room changed for us.
                        head = await self.heads.get(room_id)
                        others = set(head.members("join")) if head is not None else set()
                        changed |= others & sharing
                        left |= others - sharing
                    elif member in sharing:
                        changed.add(member)
                    else:
                        left.add(member)
        return changed - left, left - {user_id}

    async def device_list_delta(
        self, user_id: str, since: SyncToken, upto: SyncToken, joined: list[str]
    ) -> tuple[set[str], set[str]]:
        """(changed, left) between two tokens, as /sync's device_lists (for sliding sync's e2ee)."""
        return await self._device_lists(SyncRequest(user_id, "", since, 0, SyncFilter()), since, upto, joined)

    async def global_account_data(
        self, user_id: str, since: SyncToken | None, upto: SyncToken
    ) -> list[dict[str, Any]]:
        """/sync's global account data events, unfiltered (for sliding sync's account_data)."""
        return await self._global_account_data(SyncRequest(user_id, "", since, 0, SyncFilter()), upto)

    async def device_list_changes(self, user_id: str, from_token: str, to_token: str) -> dict[str, Any]:
        """GET /keys/changes: the device_lists of a sync from `from_token` to `to_token`."""
        since, upto = SyncToken.parse(from_token), SyncToken.parse(to_token)
        rooms = await self.timeline.rooms_for_user(user_id)
        joined = [r for r, (m, _) in rooms.items() if m == "join"]
        req = SyncRequest(user_id, "", since, 0, SyncFilter())
        changed, left = await self._device_lists(req, since, upto, joined)
        return {"changed": sorted(changed), "left": sorted(left)}

    # Rooms -------------------------------------------------------------------------------

    async def _events_between(
        self, room_id: str, after: int, upto: int, limit: int
    ) -> tuple[list[StoredEvent], bool]:
        """Up to `limit` newest events in (after, upto], oldest first, and whether some were left out."""
        cached = self.timeline.events_between(room_id, after, upto)
        if cached is not None:
            events = cached
        else:
            events = list(
                reversed(await self.storage.events.room_events_between(room_id, after, upto, limit + 1))
            )
        limited = len(events) > limit
        return (events[-limit:] if limit else []) if limited else events, limited

    async def _joined_room(
        self, req: SyncRequest, room_id: str, upto: SyncToken, full: bool, member_position: int
    ) -> dict[str, Any] | None:
        since = req.since
        head = await self.heads.get(room_id)
        if head is None:
            return None
        limit = req.filter.timeline_limit
        if full:
            events, limited = await self._events_between(room_id, 0, upto.events, limit)
            events = await self.visibility.filter_for_user(req.user_id, head, events)
        else:
            # Joined since before `since` and still: joined at every event of the range, which
            # any history_visibility lets a member see (core/visibility.py, rule 2): no check.
            assert since is not None
            if self.timeline.room_last.get(room_id, 0) <= since.events:
                events, limited = [], False
            else:
                events, limited = await self._events_between(room_id, since.events, upto.events, limit)
        events = [
            ev for ev in not_ignored(events, req.ignored) if req.filter.timeline.allows(ev.type, ev.sender)
        ]
        state = await self._state_for(req, head, events, upto.events, full, limited, since)
        # Events read from the database may be redacted by events not in memory (after a restart).
        await self.rooms.load_redactions(events + state)
        if not full and not events and not state:
            room: dict[str, Any] = {}
        else:
            bundles = await self.thread_bundles(req.user_id, head, events)
            room = {
                "timeline": {
                    "events": [
                        self.encode_with_thread(
                            ev, head, req.user_id, req.device_id, bundles.get(ev.event_id)
                        )
                        for ev in events
                    ],
                    "limited": limited,
                    "prev_batch": pagination_token(events[0].stream_ordering - 1 if events else upto.events),
                },
                "state": {"events": [self._encode(ev, head, req) for ev in state]},
            }
        if full or any(ev.type == "m.room.member" for ev in events):
            room["summary"] = self._summary(head, req.user_id)
        if full or events:
            await self._add_counts(req, room, room_id)
        return room

    async def _add_counts(self, req: SyncRequest, room: dict[str, Any], room_id: str) -> None:
        entry = await self.unread.entry(req.user_id, room_id)
        main, threads = entry.render(req.filter.unread_thread_notifications)
        room["unread_notifications"] = main
        if threads is not None:
            room["unread_thread_notifications"] = threads

    async def _state_for(
        self,
        req: SyncRequest,
        head: RoomHead,
        timeline: list[StoredEvent],
        upto: int,
        full: bool,
        limited: bool,
        since: SyncToken | None,
    ) -> list[StoredEvent]:
        in_timeline = {ev.event_id for ev in timeline}
        if full:
            # Not head.state as it is: it may hold events still in flight (past `upto`).
            candidates = await state_at(self.storage.events, head, upto)
            if req.filter.lazy_load_members:
                wanted = {ev.sender for ev in timeline} | {req.user_id}
                candidates = [ev for ev in candidates if ev.type != "m.room.member" or ev.state_key in wanted]
        elif limited and since is not None and timeline:
            start = timeline[0].stream_ordering
            candidates = [
                ev
                for ev in await state_at(self.storage.events, head, upto)
                if since.events < ev.stream_ordering < start
            ]
        else:
            return []
        return [ev for ev in candidates if ev.event_id not in in_timeline]

    async def _left_room(self, req: SyncRequest, room_id: str, leave_position: int) -> dict[str, Any] | None:
        """A room the user left or was removed from: events up to (and with) their leave."""
        head = await self.heads.get(room_id)
        if head is None:
            return None
        after = req.since.events if req.since is not None else 0
        events, limited = await self._events_between(
            room_id, after, leave_position, req.filter.timeline_limit
        )
        events = not_ignored(await self.visibility.filter_for_user(req.user_id, head, events), req.ignored)
        await self.rooms.load_redactions(events)
        return {
            "timeline": {
                "events": [self._encode(ev, head, req) for ev in events],
                "limited": limited,
                "prev_batch": pagination_token(events[0].stream_ordering - 1 if events else leave_position),
            },
            "state": {"events": []},
            "account_data": {"events": []},
        }

    async def thread_bundles(
        self, user_id: str, head: RoomHead, events: list[StoredEvent]
    ) -> dict[str, dict[str, Any]]:
        """The `m.thread` aggregation of the thread roots among `events`, as `user_id` sees it."""
        roots = await self.thread_roots.roots_among(events)
        if not roots:
            return {}
        judge = self.visibility.judge(user_id, head.room_id)
        return await thread_summaries(self.storage.events, roots, judge, head.room_version)

    def encode_with_thread(
        self, ev: StoredEvent, head: RoomHead, user_id: str, device_id: str, bundle: dict[str, Any] | None
    ) -> RawJson:
        """`encode_for`, plus the root's `m.thread` summary when it has one (encoded per reader)."""
        if bundle is None:
            return self.encode_for(ev, head, user_id, device_id)
        txn = self._recent_txns.get(ev.event_id)
        own = txn is not None and txn[0] == user_id and txn[1] == device_id
        body = client_event(
            ev,
            head.room_version,
            include_room_id=False,
            txn_id=client_txn_id(txn[2]) if own and txn is not None else None,
            redaction=self.heads_redaction(ev),
        )
        body.setdefault("unsigned", {}).setdefault("m.relations", {})["m.thread"] = bundle
        return RawJson(dumps_text(body))

    def _encode(self, ev: StoredEvent, head: RoomHead, req: SyncRequest) -> RawJson:
        return self.encode_for(ev, head, req.user_id, req.device_id)

    def encode_for(self, ev: StoredEvent, head: RoomHead, user_id: str, device_id: str) -> RawJson:
        """A timeline event as one device sees it (its own sends carry their transaction id)."""
        txn = self._recent_txns.get(ev.event_id)
        if txn is not None and txn[0] == user_id and txn[1] == device_id:
            return RawJson(
                dumps_text(
                    client_event(
                        ev,
                        head.room_version,
                        include_room_id=False,
                        # Stored scoped per endpoint (core/txn_ids.py): echo what the client sent.
                        txn_id=client_txn_id(txn[2]),
                        redaction=self.heads_redaction(ev),
                    )
                )
            )
        redaction = self.heads_redaction(ev)
        return self.encoded.get(ev, head.room_version, redaction, include_room_id=False)

    def heads_redaction(self, ev: StoredEvent) -> StoredEvent | None:
        return self.rooms.redaction_of(ev)

    def _summary(self, head: RoomHead, user_id: str) -> dict[str, Any]:
        joined = head.members("join")
        invited = head.members("invite")
        heroes = sorted(u for u in joined + invited if u != user_id)[:5]
        return {
            "m.heroes": heroes,
            "m.joined_member_count": len(joined),
            "m.invited_member_count": len(invited),
        }

    # Ephemeral and account data -------------------------------------------------------------

    async def _add_ephemeral(
        self, req: SyncRequest, join: dict[str, Any], joined: list[str], upto: SyncToken
    ) -> None:
        if req.filter.ephemeral.disabled or not joined:
            return
        since = req.since
        receipts = await self.receipts.receipts_event(
            req.user_id, joined, since.receipts if since else 0, upto.receipts
        )
        for room_id in joined:
            events = []
            if since is None or self.typing.changed_since(room_id, since.typing):
                users = self.typing.typing_users(room_id)
                if since is not None or users:
                    events.append({"type": "m.typing", "content": {"user_ids": users}})
            if room_id in receipts:
                events.append(receipts[room_id])
            if events:
                join.setdefault(room_id, {})["ephemeral"] = {"events": events}

    async def _add_room_account_data(
        self, req: SyncRequest, join: dict[str, Any], joined: list[str], upto: SyncToken
    ) -> None:
        if req.filter.room_account_data.disabled:
            return
        after = req.since.account_data if req.since else 0
        joined_now = set(joined)
        for room_id, data_type, content in await self.account_data.since(
            req.user_id, after, upto.account_data
        ):
            # Any joined room, also one without new events (a tag set on a quiet room).
            if room_id and room_id in joined_now:
                join.setdefault(room_id, {}).setdefault("account_data", {"events": []})["events"].append(
                    {"type": data_type, "content": content}
                )

    async def _global_account_data(self, req: SyncRequest, upto: SyncToken) -> list[dict[str, Any]]:
        if req.filter.account_data.disabled:
            return []
        after = req.since.account_data if req.since else 0
        rules = self.unread.rules
        out = [
            # m.push_rules as stored, laid over the server's current defaults.
            {
                "type": data_type,
                "content": rules.for_client(req.user_id, content) if data_type == "m.push_rules" else content,
            }
            for room_id, data_type, content in await self.account_data.since(
                req.user_id, after, upto.account_data
            )
            if not room_id and req.filter.account_data.allows(data_type, req.user_id)
        ]
        if (
            req.since is None
            and req.filter.account_data.allows("m.push_rules", req.user_id)
            and not any(e["type"] == "m.push_rules" for e in out)
        ):
            out.append({"type": "m.push_rules", "content": rules.for_client(req.user_id, None)})
        return out

    async def _presence(self, req: SyncRequest, joined: list[str], upto: SyncToken) -> list[dict[str, Any]]:
        if req.filter.presence.disabled:
            return []
        after = req.since.presence if req.since else 0
        newly_met = await self._newly_met(req, joined, upto)
        if after >= upto.presence and not newly_met:
            return []
        audience: set[str] = {req.user_id}
        for room_id in joined:
            head = await self.heads.get(room_id)
            if head is not None:
                audience.update(head.members("join"))
        users = set(self.presence.changed_since(audience, after, upto.presence))
        # Someone who became a room-mate since the last sync: their current presence, even
        # if it did not change (else the client would not know it until it next changes).
        users.update(self.presence.changed_since(newly_met, -1, upto.presence))
        return [
            {"type": "m.presence", "sender": u, "content": self.presence.to_json(u)} for u in sorted(users)
        ]

    async def _newly_met(self, req: SyncRequest, joined: list[str], upto: SyncToken) -> set[str]:
        """Users who joined one of my rooms, or whose room I joined, since `req.since`."""
        since = req.since
        if since is None:
            return set()
        rooms = await self.timeline.rooms_for_user(req.user_id)
        met: set[str] = set()
        for room_id in joined:
            if self.timeline.room_last_member.get(room_id, 0) <= since.events:
                continue  # no membership changed there
            head = await self.heads.get(room_id)
            if head is None:
                continue
            i_joined = rooms.get(room_id, ("", 0))[1] > since.events
            for u in head.members("join"):
                ev = head.get("m.room.member", u)
                if i_joined or (ev is not None and since.events < ev.stream_ordering <= upto.events):
                    met.add(u)
        met.discard(req.user_id)
        return met
