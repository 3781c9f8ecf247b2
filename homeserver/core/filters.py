"""Sync filters (spec: Client-Server API, Filtering): the parts this server applies.

Applied: room.rooms / not_rooms, room.timeline.limit / types / not_types /
senders / not_senders, room.state.lazy_load_members, room.include_leave,
presence / account_data / room.ephemeral / room.account_data disabled with
`"not_types": ["*"]` or `"types": []`. Other keys are accepted and ignored, as
the spec allows a server to send more than asked.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.globs import glob_fullmatch
from homeserver.errors import BadJson, Forbidden, InvalidParam, MatrixError, NotFound, TooLarge
from homeserver.storage import Storage

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 500
FILTER_CACHE_SIZE = 10_000
# Globs (`*`) in one `types` or `not_types` list. Each is matched against each event type a
# sync meets: a filter of 20,000 of them took 50-80 ms an event. Clients list a few
# (`m.room.*`); plain types are any number (a set lookup).
MAX_FILTER_GLOBS = 20
# Event types whose verdict one filter remembers (a sync meets a handful, again and again).
_DECIDED_TYPES = 1024
# Filter ids count up from 1; more digits than this cannot name one.
_MAX_FILTER_ID_DIGITS = 18
# All of one user's stored filters, as JSON. Filters are kept forever (a client may sync
# with an old id), and a loop of `POST /filter` with fresh bodies of up to the request
# limit each filled the database. An identical filter is not stored again (its id is
# answered, as Synapse does), so a client that makes its filter at every start stores it
# once; a filter is a few hundred bytes.
MAX_FILTER_BYTES_PER_USER = 1024 * 1024


def _types_filter(raw: Any) -> tuple[list[str] | None, list[str]]:
    if not isinstance(raw, dict):
        return None, []
    types = raw.get("types")
    not_types = raw.get("not_types") or []
    return (types if isinstance(types, list) else None), (not_types if isinstance(not_types, list) else [])


@dataclass(frozen=True)
class _Patterns:
    """A `types` list: plain types as a set, globs apart."""

    plain: frozenset[str]
    globs: tuple[str, ...]

    @classmethod
    def of(cls, patterns: list[Any]) -> "_Patterns":
        strings = [p for p in patterns if isinstance(p, str)]
        return cls(frozenset(p for p in strings if "*" not in p), tuple(p for p in strings if "*" in p))

    def match(self, value: str) -> bool:
        if value in self.plain:  # most filters list plain types: no glob needed
            return True
        # The spec's only wildcard in filters is `*`; a pattern without one is matched
        # exactly (so `[`, `?` are literal), and globs go through the non-backtracking
        # matcher: a filter is any user's input.
        return any(glob_fullmatch(p, value) for p in self.globs)


def _strings(items: list[Any]) -> frozenset[str]:
    """The strings of a list from a filter (which may hold anything: they match nothing)."""
    return frozenset(item for item in items if isinstance(item, str))


def _check_globs(name: str, patterns: list[Any]) -> None:
    if sum(1 for p in patterns if isinstance(p, str) and "*" in p) > MAX_FILTER_GLOBS:
        raise InvalidParam(f"At most {MAX_FILTER_GLOBS} patterns with '*' in '{name}'")


@dataclass(frozen=True)
class EventFilter:
    types: list[str] | None = None
    not_types: list[str] = field(default_factory=list)
    senders: list[str] | None = None
    not_senders: list[str] = field(default_factory=list)
    # event type -> whether the types and not_types let it through (filters are kept and
    # reused across syncs: FilterService)
    _decided: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: Any) -> "EventFilter":
        if not isinstance(raw, dict):
            return cls()
        types, not_types = _types_filter(raw)
        _check_globs("types", types or [])
        _check_globs("not_types", not_types)
        senders = raw.get("senders")
        not_senders = raw.get("not_senders") or []
        return cls(
            types,
            not_types,
            senders if isinstance(senders, list) else None,
            not_senders if isinstance(not_senders, list) else [],
        )

    @functools.cached_property
    def _lists(self) -> tuple[_Patterns, _Patterns | None, frozenset[str], frozenset[str] | None]:
        return (
            _Patterns.of(self.not_types),
            _Patterns.of(self.types) if self.types is not None else None,
            _strings(self.not_senders),
            _strings(self.senders) if self.senders is not None else None,
        )

    def allows(self, event_type: str, sender: str) -> bool:
        not_types, types, not_senders, senders = self._lists
        if sender in not_senders or (senders is not None and sender not in senders):
            return False
        allowed = self._decided.get(event_type)
        if allowed is None:
            allowed = not not_types.match(event_type) and (types is None or types.match(event_type))
            if len(self._decided) >= _DECIDED_TYPES:
                self._decided.clear()
            self._decided[event_type] = allowed
        return allowed

    @property
    def disabled(self) -> bool:
        return "*" in self.not_types or self.types == []


@dataclass(frozen=True)
class SyncFilter:
    rooms: list[str] | None = None
    not_rooms: list[str] = field(default_factory=list)
    timeline: EventFilter = field(default_factory=EventFilter)
    timeline_limit: int = DEFAULT_TIMELINE_LIMIT
    lazy_load_members: bool = False
    # room.timeline.unread_thread_notifications: counts split by thread in /sync.
    unread_thread_notifications: bool = False
    include_leave: bool = False
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    room_account_data: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)

    @classmethod
    def parse(cls, raw: Any) -> "SyncFilter":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise MatrixError("A filter must be a JSON object", "M_BAD_JSON")
        room: dict[str, Any] = raw["room"] if isinstance(raw.get("room"), dict) else {}
        timeline: dict[str, Any] = room["timeline"] if isinstance(room.get("timeline"), dict) else {}
        state: dict[str, Any] = room["state"] if isinstance(room.get("state"), dict) else {}
        limit = timeline.get("limit", DEFAULT_TIMELINE_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise MatrixError("'room.timeline.limit' must be a non-negative integer", "M_BAD_JSON")
        rooms = room.get("rooms")
        return cls(
            rooms=rooms if isinstance(rooms, list) else None,
            not_rooms=room["not_rooms"] if isinstance(room.get("not_rooms"), list) else [],
            timeline=EventFilter.parse(timeline),
            timeline_limit=min(limit, MAX_TIMELINE_LIMIT),
            lazy_load_members=state.get("lazy_load_members") is True,
            unread_thread_notifications=timeline.get("unread_thread_notifications") is True,
            include_leave=room.get("include_leave") is True,
            presence=EventFilter.parse(raw.get("presence")),
            account_data=EventFilter.parse(raw.get("account_data")),
            room_account_data=EventFilter.parse(room.get("account_data")),
            ephemeral=EventFilter.parse(room.get("ephemeral")),
        )

    @functools.cached_property
    def _room_sets(self) -> tuple[frozenset[str], frozenset[str] | None]:
        # Sets: a filter may name thousands of rooms, asked about each of the user's rooms.
        return _strings(self.not_rooms), _strings(self.rooms) if self.rooms is not None else None

    def allows_room(self, room_id: str) -> bool:
        not_rooms, rooms = self._room_sets
        if room_id in not_rooms:
            return False
        return rooms is None or room_id in rooms


def validate_filter_definition(raw: Any) -> dict[str, Any]:
    """Check a filter uploaded to /user/{userId}/filter enough that sync can apply it later."""
    if not isinstance(raw, dict):
        raise MatrixError("A filter must be a JSON object", "M_BAD_JSON")
    SyncFilter.parse(raw)
    for key in ("event_fields",):
        if key in raw and not isinstance(raw[key], list):
            raise MatrixError(f"'{key}' must be a list", "M_BAD_JSON")
    return raw


def _filter_id(raw: str) -> int | None:
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_FILTER_ID_DIGITS:
        return None
    return int(raw)


class FilterService:
    """Filters stored by `POST /user/{userId}/filter`, and the filter a /sync names
    (a stored id or inline JSON), parsed once: clients send the same one on every sync."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        # Filters never change once stored.
        self._parsed: OrderedDict[tuple[str, str], SyncFilter] = OrderedDict()

    async def create(self, requester: str, user_id: str, definition: Any) -> str:
        if requester != user_id:
            raise Forbidden("You may only create filters for yourself")
        checked = validate_filter_definition(definition)
        filter_id = await self.storage.user_data.add_filter(user_id, checked, MAX_FILTER_BYTES_PER_USER)
        if filter_id is None:
            raise TooLarge(f"Your filters would hold more than {MAX_FILTER_BYTES_PER_USER} bytes")
        return str(filter_id)

    async def get(self, requester: str, user_id: str, filter_id: str) -> dict[str, Any]:
        if requester != user_id:
            raise Forbidden("You may only read your own filters")
        number = _filter_id(filter_id)
        stored = await self.storage.user_data.get_filter(user_id, number) if number is not None else None
        if stored is None:
            raise NotFound("Unknown filter")
        return stored

    async def for_sync(self, user_id: str, raw: str | None) -> SyncFilter:
        """The `filter` query parameter of /sync: a stored filter's id or a filter as JSON."""
        if raw is None:
            return SyncFilter()
        number = _filter_id(raw)
        key = (user_id if number is not None else "", raw)
        cached = self._parsed.get(key)
        if cached is not None:
            return cached
        if raw.lstrip().startswith("{"):
            try:
                result = SyncFilter.parse(json.loads(raw))
            except (ValueError, RecursionError):
                raise BadJson("'filter' is not valid JSON") from None
        elif number is None:
            raise InvalidParam("Unknown filter")
        else:
            stored = await self.storage.user_data.get_filter(user_id, number)
            if stored is None:
                raise NotFound("Unknown filter")
            result = SyncFilter.parse(stored)
        self._parsed[key] = result
        if len(self._parsed) > FILTER_CACHE_SIZE:
            self._parsed.popitem(last=False)
        return result
