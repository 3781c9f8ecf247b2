"""Threads (spec: Client-Server API, "Threading"): the `m.thread` bundled aggregation of a
thread root, as one reader sees it.

A thread's summary counts only the replies its reader may see (history visibility, as
edits and reactions do in core/messages.py): a former member's thread ends where they
left, and `latest_event` is the newest reply they can see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from homeserver.core.event_format import client_event
from homeserver.core.visibility import HistoryJudge
from homeserver.storage.events import EventStore, StoredEvent

# Events whose being a thread root or not is remembered, at most: the newest ones committed,
# which incremental syncs serve, and those older ones looked up since.
ROOT_CACHE_SIZE = 50_000


class ThreadRootCache:
    """Which events are thread roots (have an unredacted `m.thread` reply), for the timelines
    that encode each event once for every reader and a root once per reader (core/sync.py).

    Bounded: the commit stream says of each new event that it starts no thread yet and of
    each reply's root that it does; an event not remembered is looked up in the thread list
    (one query for all those of a response). Two generations of half the size each: when
    the young one is full (checked after each commit) it becomes the old one and the old
    one is dropped (cheaper per commit than keeping an order of every entry)."""

    def __init__(self, store: EventStore, size: int = ROOT_CACHE_SIZE) -> None:
        self._store = store
        self._half = max(1, size // 2)
        self._young: dict[str, bool] = {}
        self._old: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._young.keys() | self._old.keys())

    def on_committed(
        self, events: Iterable[StoredEvent], root_of: Callable[[StoredEvent], str | None]
    ) -> None:
        """New events (`root_of(event)`: the thread it replies in, or None)."""
        young = self._young
        for ev in events:
            # A backfilled event (negative position) may be the root of replies held already.
            if ev.stream_ordering > 0:
                young.setdefault(ev.event_id, False)
            root = root_of(ev)
            if root is not None:
                young[root] = True
        if len(young) >= self._half:
            self._age()

    def forget(self, event_id: str) -> None:
        self._young.pop(event_id, None)
        self._old.pop(event_id, None)

    async def roots_among(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """Those of `events` that are thread roots."""
        young, old = self._young, self._old
        roots, unknown = [], []
        for ev in events:
            is_root = young.get(ev.event_id)
            if is_root is None:
                is_root = old.get(ev.event_id)
                if is_root is None:
                    unknown.append(ev)
                    continue
            if is_root:
                roots.append(ev)
        if not unknown:  # an incremental sync's events were all committed lately
            return roots
        found = await self._store.thread_roots_among([ev.event_id for ev in unknown])
        for ev in unknown:
            if ev.event_id in found:
                young[ev.event_id] = True
            else:
                young.setdefault(ev.event_id, False)  # unless a reply committed meanwhile said True
        if len(young) >= self._half:
            self._age()
        return [ev for ev in events if ev.event_id in found or young.get(ev.event_id) or old.get(ev.event_id)]

    def _age(self) -> None:
        self._old = self._young
        self._young = {}


async def thread_summaries(
    store: EventStore, events: list[StoredEvent], judge: HistoryJudge, room_version: str
) -> dict[str, dict[str, Any]]:
    """root id -> its `m.thread` aggregation, for those of `events` that start a thread."""
    roots = {ev.event_id: ev for ev in events if ev.redacted_by is None}
    rows = await store.thread_replies(list(roots))
    if not rows:
        return {}
    visible = await judge.visible_positions(position for *_, position in rows)
    found: dict[str, list[tuple[str, str, int]]] = {}
    for root, reply_id, sender, position in rows:
        if position in visible:
            found.setdefault(root, []).append((reply_id, sender, position))
    latest_ids = [replies[-1][0] for replies in found.values()]
    latest = await store.get_events(latest_ids)
    out: dict[str, dict[str, Any]] = {}
    for root, replies in found.items():
        last = latest.get(replies[-1][0])
        if last is None:
            continue
        out[root] = {
            "latest_event": client_event(last, room_version),
            "count": len(replies),
            "current_user_participated": roots[root].sender == judge.user_id
            or any(sender == judge.user_id for _, sender, _ in replies),
        }
    return out
