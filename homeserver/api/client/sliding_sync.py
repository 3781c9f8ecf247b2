"""POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync (MSC4186, simplified
sliding sync): parse the request, call core/sliding_sync.py, render.

Fields of the wrong type are M_BAD_JSON and out-of-range values M_INVALID_PARAM; keys
this server does not know are ignored (the MSC still grows, and Element X sends some of
them), as /sync ignores unknown filter keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router
from homeserver.api.validate import optional
from homeserver.core.sliding_sync import (
    ALL,
    MAX_TIMELINE_LIMIT,
    Extensions,
    ExtensionScope,
    ListFilters,
    ListRequest,
    RoomConfig,
    SlidingSyncRequest,
)
from homeserver.errors import BadJson, InvalidParam

if TYPE_CHECKING:
    from homeserver.server import HomeServer

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
MAX_LISTS = 100
MAX_RANGES = 100
MAX_SUBSCRIPTIONS = 1000
MAX_REQUIRED_STATE = 1000
MAX_RANGE_END = 2**31
MAX_FILTER_VALUES = 1000
# The server keeps each connection under its conn_id (Element X's are words like "room-list").
MAX_CONN_ID_LENGTH = 128


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    return optional(body, key, dict) or {}


def _room_config(body: dict[str, Any], where: str) -> RoomConfig:
    pairs = optional(body, "required_state", list) or []
    if len(pairs) > MAX_REQUIRED_STATE:
        raise InvalidParam(f"{where}: too many 'required_state' entries")
    required: dict[tuple[str, str], None] = {}  # ordered, without repeats
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise BadJson(f"{where}: 'required_state' entries must be [type, state_key] strings")
        required[(pair[0], pair[1])] = None
    limit = optional(body, "timeline_limit", int, 0) or 0
    if limit < 0:
        raise InvalidParam(f"{where}: 'timeline_limit' must not be negative")
    return RoomConfig(tuple(required), min(limit, MAX_TIMELINE_LIMIT))


def _optional_bool(body: dict[str, Any], key: str) -> bool | None:
    return optional(body, key, bool)


def _room_types(body: dict[str, Any], key: str) -> tuple[str | None, ...] | None:
    values = optional(body, key, list)
    if values is None:
        return None
    if not all(v is None or isinstance(v, str) for v in values):
        raise BadJson(f"'{key}' must hold room types (strings, or null for rooms without one)")
    return tuple(values)


def _strings(body: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    values = optional(body, key, list)
    if values is None:
        return None
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidParam(f"{where}: too many '{key}'")
    if not all(isinstance(v, str) for v in values):
        raise BadJson(f"{where}: '{key}' must hold strings")
    return tuple(values)


def _list(name: str, body: Any) -> ListRequest:
    if not isinstance(body, dict):
        raise BadJson(f"list '{name}' must be an object")
    ranges_in = optional(body, "ranges", list) or []
    if len(ranges_in) > MAX_RANGES:
        raise InvalidParam(f"list '{name}': too many ranges")
    ranges: list[tuple[int, int]] = []
    for item in ranges_in:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in item)
        ):
            raise BadJson(f"list '{name}': each range must be [start, end] integers")
        start, end = item
        if start < 0 or end < start or end > MAX_RANGE_END:
            raise InvalidParam(f"list '{name}': a range needs 0 <= start <= end")
        ranges.append((start, end))
    filters = _object(body, "filters")
    # Checked and not applied: Synapse never implemented it and MSC4186 dropped it.
    optional(filters, "room_name_like", str)
    where = f"list '{name}'"
    return ListRequest(
        ranges=tuple(ranges),
        config=_room_config(body, f"list '{name}'"),
        filters=ListFilters(
            is_dm=_optional_bool(filters, "is_dm"),
            is_encrypted=_optional_bool(filters, "is_encrypted"),
            is_invite=_optional_bool(filters, "is_invite"),
            room_types=_room_types(filters, "room_types"),
            not_room_types=_room_types(filters, "not_room_types") or (),
            spaces=_strings(filters, "spaces", where),
            tags=_strings(filters, "tags", where),
            not_tags=_strings(filters, "not_tags", where) or (),
        ),
    )


def _enabled(extensions: dict[str, Any], name: str) -> tuple[bool, dict[str, Any]]:
    ext = _object(extensions, name)
    return bool(optional(ext, "enabled", bool, False)), ext


def _scope(ext: dict[str, Any], name: str) -> ExtensionScope:
    """An extension's `lists` and `rooms` (`["*"]` each when absent: every room)."""
    where = f"extension '{name}'"
    lists = _strings(ext, "lists", where)
    rooms = _strings(ext, "rooms", where)
    return ExtensionScope(ALL if lists is None else lists, ALL if rooms is None else rooms)


def _scoped(extensions: dict[str, Any], name: str) -> ExtensionScope | None:
    enabled, ext = _enabled(extensions, name)
    return _scope(ext, name) if enabled else None


def _extensions(body: dict[str, Any]) -> Extensions:
    extensions = _object(body, "extensions")
    to_device, to_device_ext = _enabled(extensions, "to_device")
    since_text = optional(to_device_ext, "since", str)
    since: int | None = None
    if since_text is not None:
        if not (since_text.isascii() and since_text.isdigit() and len(since_text) <= 15):
            raise InvalidParam("'extensions.to_device.since' must be a next_batch of this server")
        since = int(since_text)
    return Extensions(
        to_device=to_device,
        to_device_since=since,
        e2ee=_enabled(extensions, "e2ee")[0],
        account_data=_scoped(extensions, "account_data"),
        receipts=_scoped(extensions, "receipts"),
        typing=_scoped(extensions, "typing"),
    )


def parse_request(
    user_id: str, device_id: str, pos: str | None, timeout_ms: int, body: Any
) -> SlidingSyncRequest:
    if not isinstance(body, dict):
        raise BadJson("The body must be a JSON object")
    lists_in = _object(body, "lists")
    if len(lists_in) > MAX_LISTS:
        raise InvalidParam("Too many lists")
    subscriptions_in = _object(body, "room_subscriptions")
    if len(subscriptions_in) > MAX_SUBSCRIPTIONS:
        raise InvalidParam("Too many room subscriptions")
    subscriptions: dict[str, RoomConfig] = {}
    for room_id, config in subscriptions_in.items():
        if not isinstance(config, dict):
            raise BadJson(f"room subscription '{room_id}' must be an object")
        if not room_id.startswith("!"):
            raise InvalidParam(f"'{room_id}' is not a room id")
        subscriptions[room_id] = _room_config(config, f"room subscription '{room_id}'")
    lists = {name: _list(name, value) for name, value in lists_in.items()}
    # A room in several lists gets the union of their required_state: bounded, so that
    # union stays small however many lists name the room.
    distinct = {pair for lst in lists.values() for pair in lst.config.required_state}
    distinct.update(pair for config in subscriptions.values() for pair in config.required_state)
    if len(distinct) > MAX_REQUIRED_STATE:
        raise InvalidParam(f"More than {MAX_REQUIRED_STATE} different 'required_state' entries")
    conn_id = optional(body, "conn_id", str, "") or ""
    if len(conn_id) > MAX_CONN_ID_LENGTH:
        raise InvalidParam(f"'conn_id' is longer than {MAX_CONN_ID_LENGTH} characters")
    return SlidingSyncRequest(
        user_id=user_id,
        device_id=device_id,
        conn_id=conn_id,
        pos=pos,
        timeout_ms=timeout_ms,
        lists=lists,
        subscriptions=subscriptions,
        extensions=_extensions(body),
    )


def register(router: Router, hs: "HomeServer") -> None:
    async def sliding_sync(request: ApiRequest) -> Response:
        requester = await require_user(hs, request)
        timeout = request.int_param("timeout", 0)
        if timeout < 0:
            raise InvalidParam("'timeout' must not be negative")
        req = parse_request(
            requester.user_id,
            requester.device_id,
            request.query_param("pos") or None,
            timeout,
            request.json_body(),
        )
        # A long-poll may wait minutes: it needs nothing more from the request's head.
        request.forget_head()
        body = await hs.sliding_sync.sync(req)
        return Response(body.encode("utf-8"), 200, b"application/json")

    router.add("POST", PATH, sliding_sync)
