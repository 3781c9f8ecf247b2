"""Power levels for room versions 10, 11 and 12: defaults, lookups and "may this user do X?".

Everything here reads a room's state; nothing changes it. The rules that decide whether an
event is *accepted* live in `homeserver.events.auth_rules`; this module holds the pieces of
them that the client API layer also needs (what level does Alice have, what level does
`m.room.name` need, may Bob kick people), so both layers agree.

Spec sources:

- Client-Server API, `m.room.power_levels`: the defaults (`users_default` 0,
  `events_default` 0, `state_default` 50, `ban`/`kick`/`redact` 50, `invite` 0), and "if the
  room contains no `m.room.power_levels` event, the room's creator has a power level of 100,
  and all other users have a power level of 0".
- Server-Server API, "Definitions": *required power level* and invite/kick/ban/redact levels.
- rooms/v10: power-level values must be integers, never strings. The allowed range is the
  Canonical JSON integer range `[-(2**53)+1, (2**53)-1]`.
- rooms/v11: `m.room.create` has no `creator` key; the create event's `sender` is the creator.
- rooms/v12 (MSC4289): the *creators* are the create event's `sender` plus its
  `content.additional_creators`; their power level is infinitely high, whatever
  `m.room.power_levels` says (which may not name them at all, auth rule 10.4).

Older revisions of the spec said `state_default` is 0 when the room has *no* power levels
event. That was a documentation bug (matrix-spec #861, fixed by #1479; implementations
switched to 50 with MSC1304): it is 50 in both cases, otherwise anyone could set the first
power levels event of a room that lacks one.
"""

from collections.abc import Mapping
from typing import Any, Final, Literal, TypeGuard

from homeserver.events.room_versions import creator_is_sender, creators_are_privileged

StateMap = Mapping[tuple[str, str], Mapping[str, Any]]
"""Room state: (event type, state key) -> event (PDU or client format).

Only these keys of each event are read: `type`, `state_key`, `sender`, `content`,
`room_id`, `event_id`.
"""

CREATE: Final = ("m.room.create", "")
POWER_LEVELS: Final = ("m.room.power_levels", "")
JOIN_RULES: Final = ("m.room.join_rules", "")
MEMBER: Final = "m.room.member"

MIN_POWER_LEVEL: Final = -(2**53) + 1
MAX_POWER_LEVEL: Final = 2**53 - 1
"""The Canonical JSON integer range, which bounds every power-level value."""

CREATOR_DEFAULT_LEVEL: Final = 100

CREATOR_POWER_LEVEL: Final = MAX_POWER_LEVEL + 1
"""A v12 creator's level: "infinitely high", i.e. above every level a power levels event can
hold, so every comparison the auth rules make comes out as for infinity (and two creators
are equal: neither can kick or ban the other)."""
"""The creator's level while the room has no `m.room.power_levels` event."""

# Client-Server API `m.room.power_levels`: defaults for absent keys (and for a room with no
# power levels event at all).
DEFAULT_LEVELS: Final[Mapping[str, int]] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

# Per-event-type levels a new room starts with: state that only an admin (100) should touch
# because it can lock everyone out or is hard to undo, and cosmetic state for moderators (50).
_DEFAULT_EVENT_LEVELS: Final[Mapping[str, int]] = {
    "m.room.name": 50,
    "m.room.power_levels": 100,
    "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50,
    "m.room.avatar": 50,
    "m.room.tombstone": 100,
    "m.room.server_acl": 100,
    "m.room.encryption": 100,
}

Action = Literal["invite", "kick", "ban", "redact", "state", "event"]
"""What `can_do` can be asked about (see there)."""


def is_valid_power_level(value: object) -> TypeGuard[int]:
    """True iff `value` is a power level a v10/v11 room accepts: a JSON integer in range.

    `bool` is rejected although it subclasses `int` in Python (JSON `true` is not an
    integer), and so are strings such as `"50"` (rooms/v10 removed the string form) and
    floats, even integral ones.
    """
    return type(value) is int and MIN_POWER_LEVEL <= value <= MAX_POWER_LEVEL


def _level(value: object, default: int) -> int:
    # Malformed values cannot be in the state of a v10/v11 room whose events all passed the
    # auth rules (rule 9 rejects them); should one appear anyway (e.g. unchecked test data),
    # it is ignored and the default applies rather than raising from a read-only lookup.
    return value if is_valid_power_level(value) else default


def _content(event: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if event is None:
        return None
    content = event.get("content")
    return content if isinstance(content, Mapping) else {}


def _declared_version(create_event: Mapping[str, Any]) -> str:
    # A missing room_version means version 1, which takes the creator from content.creator.
    declared = (_content(create_event) or {}).get("room_version")
    return declared if isinstance(declared, str) else "1"


def room_creator(create_event: Mapping[str, Any], room_version: str | None = None) -> str | None:
    """Return the room creator named by `create_event`, or None if it names none.

    rooms/v11 and v12: the creator is the `sender` of `m.room.create`. rooms/v10 (and
    earlier): the creator is `content.creator`, which the auth rules require but do not tie
    to `sender`. When `room_version` is None it is read from the create event's
    `content.room_version`. In v12 this is the *first* creator only (the one whose join
    may follow the create event directly, auth rule 5.3.1); see `room_creators`.
    """
    content = _content(create_event) or {}
    if room_version is None:
        room_version = _declared_version(create_event)
    creator = create_event.get("sender") if creator_is_sender(room_version) else content.get("creator")
    return creator if isinstance(creator, str) else None


def room_creators(create_event: Mapping[str, Any], room_version: str | None = None) -> frozenset[str]:
    """All of the room's creators: in v12 the create event's `sender` and every string in
    `content.additional_creators`; in earlier versions just `room_creator`.

    The auth rules reject a create event whose `additional_creators` is malformed (v12
    rule 1.4); should one reach this function anyway, its non-string entries are ignored.
    """
    if room_version is None:
        room_version = _declared_version(create_event)
    first = room_creator(create_event, room_version)
    creators = {first} if first is not None else set()
    if creators_are_privileged(room_version):
        additional = (_content(create_event) or {}).get("additional_creators")
        if isinstance(additional, list):
            creators.update(user for user in additional if isinstance(user, str))
    return frozenset(creators)


def power_levels_content(state: StateMap) -> Mapping[str, Any] | None:
    """The `content` of the room's `m.room.power_levels` event, or None if there is none."""
    return _content(state.get(POWER_LEVELS))


def membership(user_id: str, state: StateMap) -> str | None:
    """`user_id`'s current membership (`join`, `invite`, `leave`, `ban`, `knock`), or None.

    None means the room has no `m.room.member` event for the user (or it is malformed); the
    auth rules treat that like `leave`: the user is not in the room.
    """
    value = (_content(state.get((MEMBER, user_id))) or {}).get("membership")
    return value if isinstance(value, str) else None


def named_power_level(name: str, pl_content: Mapping[str, Any] | None) -> int:
    """The level stored under `name` (one of `DEFAULT_LEVELS`' keys), or its default.

    Server-Server API "Definitions": the *invite/kick/ban/redact level* is the value of that
    key in the current power levels, defaulting to 50 (0 for `invite`) when the key or the
    whole event is missing. Raises `KeyError` for names that are not power-level keys.
    """
    default = DEFAULT_LEVELS[name]
    return default if pl_content is None else _level(pl_content.get(name), default)


def event_power_level(event_type: str, is_state: bool, power_levels_content: Mapping[str, Any] | None) -> int:
    """The *required power level* for sending an event of `event_type`.

    Server-Server API "Definitions": `events[event_type]` if listed, otherwise
    `state_default` (50 if absent) for state events and `events_default` (0 if absent) for
    other events. `power_levels_content` None means the room has no power levels event,
    in which case the same defaults apply.
    """
    if power_levels_content is not None:
        events = power_levels_content.get("events")
        if isinstance(events, Mapping) and is_valid_power_level(events.get(event_type)):
            return int(events[event_type])
    return named_power_level("state_default" if is_state else "events_default", power_levels_content)


def user_power_level(user_id: str, state: StateMap, room_version: str | None = None) -> int:
    """`user_id`'s current power level in the room whose state is `state`.

    v12: a creator (see `room_creators`) has `CREATOR_POWER_LEVEL`, above any listed level.
    Otherwise, with a power levels event: `users[user_id]` if present, else `users_default`
    (0 if absent). Without one: 100 for the room creator (see `room_creator`; `room_version`
    None means "as declared by the create event"), 0 for everyone else. Membership plays no
    part: a user who left keeps their level, which is what the auth rules compare.
    """
    create = state.get(CREATE)
    if create is not None:
        version = room_version if room_version is not None else _declared_version(create)
        if creators_are_privileged(version) and user_id in room_creators(create, version):
            return CREATOR_POWER_LEVEL
    pl_content = power_levels_content(state)
    if pl_content is not None:
        users = pl_content.get("users")
        if isinstance(users, Mapping) and is_valid_power_level(users.get(user_id)):
            return int(users[user_id])
        return named_power_level("users_default", pl_content)
    if create is not None and room_creator(create, room_version) == user_id:
        return CREATOR_DEFAULT_LEVEL
    return DEFAULT_LEVELS["users_default"]


def default_power_levels_content(creator: str, room_version: str = "10") -> dict[str, Any]:
    """The `m.room.power_levels` content a new room gets before any override.

    Client-Server API `/createRoom` step 3: the creator (and nobody else) may send state
    events. All defaults are written out explicitly (as integers, never strings) so clients
    need not know them; `invite` is 0, the spec default, so every member may invite (the
    `private_chat`/`trusted_private_chat` behaviour; a `public_chat` preset may raise it via
    `power_level_content_override`). Returns a fresh dict on every call.

    v12: the creator is not listed (creators outrank every level, and auth rule 10.4 rejects
    a power levels event that names one), so `users` starts empty.
    """
    users = {} if creators_are_privileged(room_version) else {creator: CREATOR_DEFAULT_LEVEL}
    return {
        "users": users,
        **DEFAULT_LEVELS,
        "events": dict(_DEFAULT_EVENT_LEVELS),
    }


def can_do(
    user_id: str,
    action: Action,
    state: StateMap,
    *,
    event_type: str | None = None,
    target: str | None = None,
    room_version: str | None = None,
) -> bool:
    """Whether `user_id` may currently perform `action`, judged the way the auth rules do.

    A convenience for the client API (to answer 403 early and to tell clients what they may
    do); `auth_rules.check_auth` on the resulting event remains the authority. Promises:

    - Every action needs `user_id` to be joined (auth rules 4.4.2, 4.5.2, 4.6.1 and 5).
    - `invite`, `kick`, `ban`, `redact`: the user's level is at least the invite, kick, ban
      or redact level. `redact` is the level for redacting *other users'* events; redacting
      one's own needs only the level for sending `m.room.redaction`.
    - `kick` and `ban` with a `target`: additionally the target's level is strictly below
      the user's (rules 4.5.4 and 4.6.2), and kicking a banned target (an unban) also needs
      the ban level (rule 4.5.3).
    - `state` / `event`: sending a state / non-state event of `event_type` (required) is
      allowed by the level checks (rule 7). State keys are not checked (rule 8).

    Raises `ValueError` if `event_type` is missing for `state` / `event`.
    """
    if action in ("state", "event") and event_type is None:
        raise ValueError(f"can_do({action!r}) needs event_type")
    if membership(user_id, state) != "join":
        return False
    level = user_power_level(user_id, state, room_version)
    pl_content = power_levels_content(state)
    if action == "state" or action == "event":
        assert event_type is not None
        return level >= event_power_level(event_type, action == "state", pl_content)
    if level < named_power_level(action, pl_content):
        return False
    if action in ("kick", "ban") and target is not None:
        if user_power_level(target, state, room_version) >= level:
            return False
        if action == "kick" and membership(target, state) == "ban":
            return level >= named_power_level("ban", pl_content)
    return True
