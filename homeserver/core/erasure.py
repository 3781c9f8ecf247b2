"""Erasing an account (GDPR Art. 17): `POST /account/deactivate` with `erase: true`.

What goes and what stays is argued in docs/gdpr.md. In short: the account is deactivated
(password, email addresses, profile, devices, tokens and their keys and pushers go), the
user leaves every room (invites and knocks are withdrawn), the content of every event they
sent (room state such as a name or topic excepted: that is the room's) and of every
membership event about them is pruned in place by the redaction
algorithm of its room version, their own rows (account data, filters, receipts, key
backups, ...) are deleted, and plugins are told (the media plugin deletes their uploads).

Pruning in place, not per reader: Synapse keeps the content and serves it pruned only to
readers who were not joined when it was sent. We prune for everyone, so no read path
(sync, /messages, search, notifications, the simple API, exports) can serve it again, and
none has to know about erasure. Members who were there keep what their clients already
hold; the server never hands it out again. Event ids, hashes, signatures, the room DAG and
the auth-relevant keys survive, so the room graph stays valid and sync and paging go on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

from homeserver.core.accounts import AccountService
from homeserver.core.clock import Clock
from homeserver.core.event_stream import ConsumedOnOneProcess
from homeserver.core.room_heads import RoomHeads
from homeserver.core.rooms import RoomService
from homeserver.core.timeline_cache import TimelineCache
from homeserver.events.redaction import redact
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent

log = Logger()

# Events pruned per transaction: a long history is erased in pages, never in one lock.
PAGE = 200
# How long an erasure waits for the search index to take in what was committed before it.
INDEX_WAIT_S = 30.0


class ErasureService:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        accounts: AccountService,
        rooms: RoomService,
        heads: RoomHeads,
        timeline: TimelineCache,
        forget_encoded: Callable[[str], None],
        search_index: ConsumedOnOneProcess,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.accounts = accounts
        self.rooms = rooms
        self.heads = heads
        self.timeline = timeline
        self._forget_encoded = forget_encoded
        self.search_index = search_index
        # Called with the user id once the core's part is done (plugins: PluginApi.on_user_erased).
        self.on_user_erased: list[Callable[[str], Awaitable[None]]] = []

    async def erase_user(self, user_id: str) -> None:
        """Deactivate `user_id` and erase their data (idempotent: a second call finishes what
        an interrupted first one left). The caller has authorised it."""
        await self.accounts.deactivate(user_id)
        await self.storage.gdpr.mark_erased(user_id, self.clock.time_ms())
        await self._leave_rooms(user_id)
        await self._wait_for_search_index(user_id)
        pruned = await self._prune_events(user_id)
        await self.storage.gdpr.delete_personal_rows(user_id)
        for listener in self.on_user_erased:
            try:
                await listener(user_id)
            except Exception:
                # Logged, not raised: the account is erased; a rerun (admin) retries the plugin.
                log.failure("erasure listener failed for {user_id}", user_id=user_id)
        log.info("erased {user_id}: {pruned} events pruned", user_id=user_id, pruned=pruned)

    async def is_erased(self, user_id: str) -> bool:
        return await self.storage.gdpr.is_erased(user_id)

    async def _leave_rooms(self, user_id: str) -> None:
        rooms = await self.timeline.rooms_for_user(user_id)
        for room_id, (membership, _) in sorted(rooms.items()):
            if membership in ("join", "invite", "knock"):
                try:
                    await self.rooms.leave(user_id, room_id)
                except Exception:
                    log.failure(
                        "erasure: {user_id} could not leave {room_id}", user_id=user_id, room_id=room_id
                    )

    async def _prune_events(self, user_id: str) -> int:
        """Prune the content of every non-state event the user sent and of every member
        event about them."""
        count = 0
        after = -1
        while True:
            page = await self.storage.gdpr.events_sent_by(user_id, after, PAGE)
            if not page:
                break
            after = page[-1][0].stream_ordering
            # Other room state the user set (a name, a topic, power levels) is the room's,
            # not theirs: it stays (docs/gdpr.md, "What is kept").
            count += await self._prune([(ev, v) for ev, v in page if ev.state_key is None])
        about = await self.storage.gdpr.member_events_about(user_id)
        for start in range(0, len(about), PAGE):
            count += await self._prune(about[start : start + PAGE])
        return count

    async def _prune(self, page: list[tuple[StoredEvent, str]]) -> int:
        changes: list[tuple[StoredEvent, dict[str, Any], dict[str, Any]]] = []
        for ev, room_version in page:
            pdu = redact(ev.pdu, room_version)
            unsigned = _pruned_unsigned(ev.unsigned_extra)
            if pdu != ev.pdu or unsigned != ev.unsigned_extra:
                changes.append((ev, pdu, unsigned))
        if not changes:
            return 0
        await self.storage.gdpr.prune_events([(ev.event_id, pdu, unsigned) for ev, pdu, unsigned in changes])
        await self.storage.search.index([], [ev.event_id for ev, _, _ in changes])
        for ev, pdu, unsigned in changes:
            self._prune_cached(ev, pdu, unsigned)
        return len(changes)

    async def _wait_for_search_index(self, user_id: str) -> None:
        """The indexer writes events as they were committed, and may be behind: pruning
        deletes their index rows, so it waits until the indexer has written what was committed
        before now. An index write begun after the erasure was marked skips the user's messages
        (storage/search.py): nothing written later brings their text back."""
        if not await self.search_index.caught_up(INDEX_WAIT_S):
            log.warn("erasure of {user_id}: the search index is still behind", user_id=user_id)

    def _prune_cached(self, ev: StoredEvent, pdu: dict[str, Any], unsigned: dict[str, Any]) -> None:
        """The copies in memory: the recent timeline, the room's current state, the encoded JSON."""
        for cached in (self.timeline.find(ev.room_id, ev.event_id), self._current_state_copy(ev)):
            if cached is not None:
                cached.pdu = pdu
                cached.unsigned_extra = unsigned
        self._forget_encoded(ev.event_id)

    def _current_state_copy(self, ev: StoredEvent) -> StoredEvent | None:
        head = self.heads.peek(ev.room_id)
        if head is None or ev.state_key is None:
            return None
        current = head.get(ev.type, ev.state_key)
        return current if current is not None and current.event_id == ev.event_id else None


def _pruned_unsigned(unsigned: dict[str, Any]) -> dict[str, Any]:
    """`prev_content` of a member event carried the previous display name and avatar: keep
    only its membership (delivery tracking reads it)."""
    prev = unsigned.get("prev_content")
    if not isinstance(prev, dict):
        return unsigned
    return {**unsigned, "prev_content": {k: v for k, v in prev.items() if k == "membership"}}
