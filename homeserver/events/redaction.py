"""The redaction algorithm for room versions 10, 11 and 12.

Redaction strips an event down to the properties the protocol needs to keep the room
working (auth, state resolution, the DAG). It matters far beyond `m.room.redaction`:
signatures and event IDs are computed over the *redacted* form (Server-Server API,
"Signing Events" and "Calculating the reference hash for an event"), so getting one key
wrong here makes every signature and event ID disagree with other servers.

Spec: rooms/v10 "Redactions" (unchanged from v9) and rooms/v11 "Redactions"; rooms/v12 keeps
v11's algorithm unchanged (its `m.room.create` rule already keeps `additional_creators`).
"""

import copy
from collections.abc import Callable, Mapping
from typing import Any

from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS,
    UnsupportedRoomVersion,
    check_room_version,
)

__all__ = [
    "KNOWN_ROOM_VERSIONS",
    "UnsupportedRoomVersion",
    "check_room_version",
    "redact",
    "redacted_view",
]

# Top-level keys that survive redaction in every supported version (the v11 list).
_TOP_LEVEL_KEYS_V11: frozenset[str] = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)

# v11 stopped protecting these three (rooms/v11: "The top-level origin, membership, and
# prev_state properties are no longer protected from redaction").
_TOP_LEVEL_KEYS_V10: frozenset[str] = _TOP_LEVEL_KEYS_V11 | {"origin", "membership", "prev_state"}

# Per-type `content` keys that survive redaction (rooms/v9 redactions, inherited by v10).
_CONTENT_KEYS_V10: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset(
        {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
    ),
    "m.room.history_visibility": frozenset({"history_visibility"}),
}

# rooms/v11: power levels also keep `invite`, and `m.room.redaction` keeps `content.redacts`
# (in v11 `redacts` moved from the top level into content). `m.room.create` and
# `m.room.member` get special handling in `_redact_content_v11`.
_CONTENT_KEYS_V11: dict[str, frozenset[str]] = {
    **_CONTENT_KEYS_V10,
    "m.room.power_levels": _CONTENT_KEYS_V10["m.room.power_levels"] | {"invite"},
    "m.room.redaction": frozenset({"redacts"}),
}


def _keep(content: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in content.items() if k in keys}


def _redact_content_v10(event_type: Any, content: Mapping[str, Any]) -> dict[str, Any]:
    return _keep(content, _CONTENT_KEYS_V10.get(event_type, frozenset()))


def _redact_content_v11(event_type: Any, content: Mapping[str, Any]) -> dict[str, Any]:
    if event_type == "m.room.create":
        # rooms/v11: "m.room.create allows all keys".
        return dict(content)
    kept = _keep(content, _CONTENT_KEYS_V11.get(event_type, frozenset()))
    if event_type == "m.room.member":
        # rooms/v11: m.room.member "additionally ... allows the `signed` key of the
        # `third_party_invite` key" (MSC3821). The spec text does not say what happens to a
        # `third_party_invite` object that has no `signed`; like Synapse we keep it as `{}`,
        # so event IDs and signatures agree with the reference implementation.
        third_party_invite = content.get("third_party_invite")
        if isinstance(third_party_invite, Mapping):
            kept["third_party_invite"] = _keep(third_party_invite, frozenset({"signed"}))
    return kept


_RULES: dict[str, tuple[frozenset[str], Callable[[Any, Mapping[str, Any]], dict[str, Any]]]] = {
    "10": (_TOP_LEVEL_KEYS_V10, _redact_content_v10),
    "11": (_TOP_LEVEL_KEYS_V11, _redact_content_v11),
    "12": (_TOP_LEVEL_KEYS_V11, _redact_content_v11),
}


def redact(event: Mapping[str, Any], room_version: str) -> dict[str, Any]:
    """Return the redacted form of `event` under the rules of `room_version`.

    Promises:
    - `event` is not modified; the result is a deep copy, so mutating it (e.g. adding
      signatures) never leaks back into the caller's event.
    - Only the top-level keys the room version protects survive. `unsigned` is always
      dropped: it is not in any version's list (servers may re-attach their own `unsigned`
      when serving a redacted event, but that is outside the algorithm).
    - `content` is always present in the result, reduced to the keys protected for the
      event's `type` (an empty object for other types, or if `content` was missing or not an
      object), so every server derives the same bytes.

    Raises `UnsupportedRoomVersion` for versions other than `KNOWN_ROOM_VERSIONS`.
    """
    return copy.deepcopy(redacted_view(event, room_version))


def redacted_view(event: Mapping[str, Any], room_version: str) -> dict[str, Any]:
    """`redact` without the deep copy: a new top-level dict and content dict, whose values
    are shared with `event` (for a caller that only reads them, or replaces them whole)."""
    check_room_version(room_version)
    top_level_keys, redact_content = _RULES[room_version]

    redacted = {k: v for k, v in event.items() if k in top_level_keys}
    content = event.get("content")
    redacted["content"] = redact_content(event.get("type"), content if isinstance(content, Mapping) else {})
    return redacted
