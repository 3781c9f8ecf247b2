"""`POST /search`, the room_events category (spec: Client-Server API, Server Side Search).

Searches the rooms the user is or was in (not forgotten), through the full-text index
(storage/search.py, filled by core/search_index.py). Every hit is judged like any
read of history: by the room's history visibility and the user's membership at that
event (core/visibility.py), so a former member finds nothing sent after they left,
and nothing from a user they ignore. The index holds what the server can read:
encrypted rooms are searched by clients on their own copy.

Pages: by recency, `next_batch` is the position of the last event looked at; by rank,
the number of hits looked at. Hits the user may not see are skipped, and a page reads
the index again (a few times at most) until it has `limit` results.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.filters import EventFilter
from homeserver.core.ignored_users import IgnoredUsers
from homeserver.core.messages import HISTORY_START, MessagesService
from homeserver.core.search_index import SearchIndexer
from homeserver.core.streams import pagination_token
from homeserver.core.timeline_cache import TimelineCache
from homeserver.core.user_directory import words_of
from homeserver.core.visibility import HistoryJudge
from homeserver.errors import Forbidden, MatrixError
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent

KEYS = ("content.body", "content.name", "content.topic")
DEFAULT_LIMIT = 10
MAX_LIMIT = 50
# Events each side of a result (Element asks for 1): with MAX_LIMIT results, a request holds
# at most 1,000 context events, as one /messages page at most.
MAX_CONTEXT = 10
MAX_WORDS = 10
MAX_TERM_LENGTH = 1000
# Index reads per page at most: past them, the page is returned shorter, with next_batch.
MAX_ROUNDS = 5


def _bad(message: str) -> MatrixError:
    return MatrixError(message, "M_BAD_JSON")


def _str_list(raw: dict[str, Any], key: str) -> list[str] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"'{key}' must be a list of strings")
    return value


def _int(raw: dict[str, Any], key: str, default: int, maximum: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"'{key}' must be a non-negative integer")
    return min(value, maximum)


def _dict(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"'{key}' must be an object")
    return value


class _Query:
    """The room_events criteria, checked."""

    def __init__(self, raw: dict[str, Any]) -> None:
        term = raw.get("search_term")
        if term is None:
            raise MatrixError("Missing 'search_term'", "M_MISSING_PARAM")
        if not isinstance(term, str):
            raise _bad("'search_term' must be a string")
        if len(term) > MAX_TERM_LENGTH:
            raise MatrixError("'search_term' is too long", "M_INVALID_PARAM")
        self.words = words_of(term)[:MAX_WORDS]
        keys = _str_list(raw, "keys")
        if keys is not None and any(k not in KEYS for k in keys):
            raise MatrixError(f"'keys' may hold only {', '.join(KEYS)}", "M_INVALID_PARAM")
        self.keys = list(KEYS) if keys is None else keys
        order_by = raw.get("order_by", "rank")
        if order_by not in ("rank", "recent"):
            raise MatrixError("'order_by' must be rank or recent", "M_INVALID_PARAM")
        self.by_rank = order_by == "rank"
        flt = _dict(raw, "filter")
        self.limit = max(1, _int(flt, "limit", DEFAULT_LIMIT, MAX_LIMIT))
        self.rooms = _str_list(flt, "rooms")
        self.not_rooms = set(_str_list(flt, "not_rooms") or [])
        for key in ("senders", "not_senders", "types", "not_types"):
            _str_list(flt, key)
        self.events = EventFilter.parse(flt)
        context = raw.get("event_context")
        if context is not None and not isinstance(context, dict):
            raise _bad("'event_context' must be an object")
        self.context = context is not None
        ctx = context or {}
        self.before_limit = _int(ctx, "before_limit", 5, MAX_CONTEXT)
        self.after_limit = _int(ctx, "after_limit", 5, MAX_CONTEXT)
        include_profile = ctx.get("include_profile", False)
        include_state = raw.get("include_state", False)
        if not isinstance(include_profile, bool) or not isinstance(include_state, bool):
            raise _bad("'include_profile' and 'include_state' must be booleans")
        self.include_profile = include_profile
        self.include_state = include_state
        self.group_by: list[str] = []
        groups = _dict(raw, "groupings").get("group_by") or []
        if not isinstance(groups, list):
            raise _bad("'group_by' must be a list")
        for group in groups:
            group_key = group.get("key") if isinstance(group, dict) else None
            if not isinstance(group_key, str) or group_key not in ("room_id", "sender"):
                raise MatrixError("'group_by' keys must be room_id or sender", "M_INVALID_PARAM")
            self.group_by.append(group_key)


def _parse_batch(token: str | None, by_rank: bool) -> int | None:
    """The cursor of a `next_batch` made for the same ordering."""
    if token is None:
        return None
    kind, digits = token[:1], token[1:]
    # By recency the cursor is a stream position: negative below backfilled history.
    negative = kind == "s" and digits.startswith("-")
    digits = digits[1:] if negative else digits
    if kind != ("r" if by_rank else "s") or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise MatrixError("Invalid next_batch", "M_INVALID_PARAM")
    return -int(digits) if negative else int(digits)


class SearchService:
    def __init__(
        self,
        storage: Storage,
        timeline: TimelineCache,
        messages: MessagesService,
        indexer: SearchIndexer,
        ignored: IgnoredUsers,
        index_wait_s: float,
    ) -> None:
        self.storage = storage
        self.timeline = timeline
        self.messages = messages
        self.indexer = indexer
        self.ignored = ignored
        self.index_wait_s = index_wait_s

    async def search(self, user_id: str, body: dict[str, Any], next_batch: str | None) -> dict[str, Any]:
        categories = body.get("search_categories")
        if not isinstance(categories, dict):
            raise MatrixError("Missing 'search_categories'", "M_MISSING_PARAM")
        raw = categories.get("room_events")
        if raw is None:
            return {"search_categories": {}}
        if not isinstance(raw, dict):
            raise _bad("'room_events' must be an object")
        query = _Query(raw)
        cursor = _parse_batch(next_batch, query.by_rank)
        return {"search_categories": {"room_events": await self._room_events(user_id, query, cursor)}}

    async def _rooms(self, user_id: str, query: _Query) -> list[str]:
        memberships = await self.timeline.rooms_for_user(user_id)
        forgotten = await self.messages.rooms.forgotten(user_id)
        wanted = set(query.rooms) if query.rooms is not None else None
        return sorted(
            r
            for r in memberships
            if r not in forgotten and r not in query.not_rooms and (wanted is None or r in wanted)
        )

    async def _room_events(self, user_id: str, query: _Query, cursor: int | None) -> dict[str, Any]:
        room_ids = await self._rooms(user_id, query)
        if not query.words or not room_ids:
            return {"count": 0, "highlights": [], "results": []}
        await self.indexer.caught_up(self.index_wait_s)
        ignored = await self.ignored.of(user_id)
        judges: dict[str, HistoryJudge] = {}
        found: list[tuple[StoredEvent, float]] = []
        store = self.storage.search
        before = None if query.by_rank else cursor
        offset = (cursor or 0) if query.by_rank else 0
        more = False
        batch = query.limit * 2
        for _ in range(MAX_ROUNDS):
            hits = await store.search(
                query.words, room_ids, query.keys, query.by_rank, before, offset, batch + 1
            )
            more = len(hits) > batch
            hits = hits[:batch]
            events = await self.storage.events.get_events([h.event_id for h in hits])
            visible = await self._visible(user_id, judges, list(events.values()), query, ignored)
            for i, hit in enumerate(hits):
                ev = events.get(hit.event_id)
                if ev is not None and ev.event_id in visible:
                    found.append((ev, hit.rank))
                    if len(found) == query.limit:
                        more = more or i < len(hits) - 1
                        hits = hits[: i + 1]
                        break
            offset += len(hits)
            if hits and not query.by_rank:
                before = hits[-1].stream_ordering
            if len(found) == query.limit or not more:
                break
        out: dict[str, Any] = {
            "highlights": _highlights(query.words, [ev for ev, _ in found]),
            "results": await self._results(user_id, judges, found, query, ignored),
        }
        if more:
            out["next_batch"] = f"r{offset}" if query.by_rank else f"s{before}"
        elif cursor is None:
            # Counted only when every visible match is in hand: a count of the index's matches
            # would tell how many messages match that the user may not see (sent after they left).
            out["count"] = len(found)
        if query.group_by:
            out["groups"] = _groups(query.group_by, [ev for ev, _ in found], out.get("next_batch"))
        if query.include_state:
            out["state"] = await self._state(user_id, {ev.room_id for ev, _ in found})
        return out

    async def _visible(
        self,
        user_id: str,
        judges: dict[str, HistoryJudge],
        events: list[StoredEvent],
        query: _Query,
        ignored: frozenset[str],
    ) -> set[str]:
        """The ids of the events the user may see and the filter lets through."""
        by_room: dict[str, list[StoredEvent]] = {}
        for ev in events:
            if ev.redacted_by is not None or ev.sender in ignored:
                continue
            if query.events.allows(ev.type, ev.sender):
                by_room.setdefault(ev.room_id, []).append(ev)
        visible: set[str] = set()
        for room_id, room_events in by_room.items():
            judge = judges.get(room_id)
            if judge is None:
                judge = judges[room_id] = self.messages.visibility.judge(user_id, room_id)
            room_events.sort(key=lambda ev: ev.stream_ordering)
            visible.update(ev.event_id for ev in await judge.filter(room_events))
        return visible

    async def _results(
        self,
        user_id: str,
        judges: dict[str, HistoryJudge],
        found: list[tuple[StoredEvent, float]],
        query: _Query,
        ignored: frozenset[str],
    ) -> list[dict[str, Any]]:
        # Serialized room by room: a room's bundled aggregations are read in one go.
        by_room: dict[str, list[StoredEvent]] = {}
        for ev, _ in found:
            by_room.setdefault(ev.room_id, []).append(ev)
        serialized: dict[str, dict[str, Any]] = {}
        for room_id, events in by_room.items():
            head = await self.messages.rooms.head(room_id)
            bodies = await self.messages.serialize(head, events, judges[room_id])
            serialized.update((ev.event_id, body) for ev, body in zip(events, bodies, strict=True))
        results = []
        for ev, rank in found:
            result: dict[str, Any] = {"rank": rank, "result": serialized[ev.event_id]}
            if query.context:
                result["context"] = await self._context(ev, judges[ev.room_id], query, ignored)
            results.append(result)
        return results

    async def _context(
        self, ev: StoredEvent, judge: HistoryJudge, query: _Query, ignored: frozenset[str]
    ) -> dict[str, Any]:
        store = self.storage.events
        room_id, position = ev.room_id, ev.stream_ordering
        upto = self.indexer.stream.position
        before = await store.room_events_between(room_id, HISTORY_START, position - 1, query.before_limit)
        after = await store.room_events_between(
            room_id, position, upto, query.after_limit, newest_first=False
        )
        before = [e for e in await judge.filter(before) if e.sender not in ignored]
        after = [e for e in await judge.filter(after) if e.sender not in ignored]
        head = await self.messages.rooms.head(room_id)
        context: dict[str, Any] = {
            "events_before": await self.messages.serialize(head, before, judge),
            "events_after": await self.messages.serialize(head, after, judge),
            "start": pagination_token(before[-1].stream_ordering - 1 if before else position - 1),
            "end": pagination_token(after[-1].stream_ordering if after else position),
        }
        if query.include_profile:
            senders = list(dict.fromkeys(event.sender for event in [*before, ev, *after]))
            members = await store.state_events_at(room_id, "m.room.member", senders, position)
            profiles: dict[str, Any] = {}
            for sender in senders:
                member = members.get(sender)
                content = member.content if member is not None else {}
                profiles[sender] = {
                    k: content[k] for k in ("displayname", "avatar_url") if isinstance(content.get(k), str)
                }
            context["profile_info"] = profiles
        return context

    async def _state(self, user_id: str, room_ids: set[str]) -> dict[str, Any]:
        """The current state of the result rooms the user is joined to."""
        state = {}
        for room_id in sorted(room_ids):
            try:
                state[room_id] = await self.messages.state(user_id, room_id)
            except Forbidden:
                continue  # a former member: the state they may see is that of their leave
        return state


def _highlights(words: list[str], events: list[StoredEvent]) -> list[str]:
    """The query's words, and the words of the results they matched (as prefixes)."""
    found = set(words)
    for ev in events:
        for key in ("body", "name", "topic"):
            text = ev.content.get(key)
            if isinstance(text, str):
                found.update(w for w in words_of(text) if any(w.startswith(q) for q in words))
    return sorted(found)


def _groups(keys: list[str], events: list[StoredEvent], next_batch: str | None) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for key in keys:
        by_value: dict[str, dict[str, Any]] = {}
        for ev in events:
            value = ev.room_id if key == "room_id" else ev.sender
            group = by_value.setdefault(value, {"results": [], "order": len(by_value) + 1})
            group["results"].append(ev.event_id)
        if next_batch is not None:
            for group in by_value.values():
                group["next_batch"] = next_batch
        groups[key] = by_value
    return groups
