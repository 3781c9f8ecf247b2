"""Threads (spec: Client-Server API, "Threading"): the `m.thread` bundled aggregation of a
thread root, as one reader sees it.

A thread's summary counts only the replies its reader may see (history visibility, as
edits and reactions do in core/messages.py): a former member's thread ends where they
left, and `latest_event` is the newest reply they can see.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.event_format import client_event
from homeserver.core.visibility import HistoryJudge
from homeserver.storage.events import EventStore, StoredEvent


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
