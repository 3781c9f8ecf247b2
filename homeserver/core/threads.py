"""Threads (spec: Client-Server API, "Threading"): the `m.thread` bundled aggregation of a
thread root, as one reader sees it.

A thread's summary counts only the replies its reader may see (history visibility, as
edits and reactions do in core/messages.py): a former member's thread ends where they
left, and `latest_event` is the newest reply they can see.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from homeserver.core.event_format import client_event
from homeserver.core.visibility import HistoryJudge
from homeserver.storage.events import EventStore, StoredEvent

# Events whose being a thread root or not is remembered: the newest ones committed, which
# incremental syncs serve, and those older ones looked up since.
ROOT_CACHE_SIZE = 50_000


class ThreadRootCache:
    """Which events are thread roots (have an unredacted `m.thread` reply), for the timelines
    that encode each event once for every reader and a root once per reader (core/sync.py).

    Bounded: the commit stream says of each new event that it starts no thread yet and of
    each reply's root that it does; an event not remembered is looked up in the thread list
    (one query for all those of a response), and the oldest remembered are forgotten."""

    def __init__(self, store: EventStore, size: int = ROOT_CACHE_SIZE) -> None:
        self._store = store
        self._size = size
        self._known: OrderedDict[str, bool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def on_committed(
        self, events: Iterable[StoredEvent], root_of: Callable[[StoredEvent], str | None]
    ) -> None:
        """New events (`root_of(event)`: the thread it replies in, or None)."""
        known = self._known
        for ev in events:
            # A backfilled event (negative position) may be the root of replies held already.
            if ev.stream_ordering > 0 and ev.event_id not in known:
                known[ev.event_id] = False
            root = root_of(ev)
            if root is not None:
                known[root] = True
        self._trim()

    def forget(self, event_id: str) -> None:
        self._known.pop(event_id, None)

    async def roots_among(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """Those of `events` that are thread roots."""
        known = self._known
        unknown = [ev.event_id for ev in events if ev.event_id not in known]
        found = await self._store.thread_roots_among(unknown) if unknown else set()
        roots = [ev for ev in events if ev.event_id in found or known.get(ev.event_id)]
        for event_id in unknown:
            if event_id in found:
                known[event_id] = True
            else:
                known.setdefault(event_id, False)  # unless a reply committed meanwhile said True
        self._trim()
        return roots

    def _trim(self) -> None:
        known = self._known
        while len(known) > self._size:
            known.popitem(last=False)


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
