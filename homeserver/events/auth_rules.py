"""The event authorization rules for room versions 10, 11 and 12.

Every event a room accepts must pass these rules against the state before it (and, on
receipt over federation, against its own `auth_events` and against the current state:
Server-Server API, "Checks performed on receipt of a PDU"). Two servers that disagree here
disagree about the room's state, so this module follows the spec text rule by rule; comments
cite the rule numbers of rooms/v10 and rooms/v11 "Authorization rules".

What the two versions change (everything else is shared):

- rule 1.4 (v10 only): `m.room.create` must have `content.creator`; in v11 the `sender` of
  the create event is the creator and `creator` is no longer used.
- rule 4.3.1: the creator's first join is recognised by `content.creator` (v10) or by the
  create event's `sender` (v11).
- redactions: in v11 the redacted event's ID moved from the top-level `redacts` into
  `content.redacts` (see `redaction_target`).

What v12 changes on top of v11 (MSC4289, MSC4291): the create event has no `room_id` (v12
rule 1.2), the room ID is `!` + the create event's reference hash (v12 rule 2; see
`room_id_for_create`), `additional_creators` must be a list of user IDs (v12 rule 1.4), the
creators have an infinite power level (`power_levels.user_power_level`) and may not be
named in `m.room.power_levels` (v12 rule 10.4), and the create event is not listed in
`auth_events` (`auth_event_types`). v12 inserts rule 2, so its rules from 2 on are numbered
one higher than v11's; reasons cite v11's numbers, and "v12 rule N" for the rules v12 added.

Pure functions only: no I/O, no signature checks (the opening "events must be signed by the
sender's server" and rule 4.2 need keys; `servers_required_to_sign` says which servers, and
`homeserver.events.signing.verify_event_signature` checks them), except that the identity
server signature of a third-party invite (rule 4.4.1.7) is verified here because its public
keys are in the room state.

Spec: rooms/v10 and rooms/v11 "Authorization rules" and "Handling redactions"; Server-Server
API "Auth events selection" and "Definitions".
"""

from collections.abc import Mapping
from typing import Any, Final

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from homeserver.events.canonical import decode_base64
from homeserver.events.hashing import compute_event_id
from homeserver.events.power_levels import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    StateMap,
    event_power_level,
    is_valid_power_level,
    membership,
    named_power_level,
    power_levels_content,
    room_creator,
    room_creators,
    user_power_level,
)
from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS,
    check_room_version,
    redacts_in_content,
    room_id_is_create_hash,
)

__all__ = [
    "AuthError",
    "StateMap",
    "auth_event_types",
    "auth_state_for_event",
    "auth_types_for_event",
    "check_auth",
    "redaction_allowed",
    "redaction_target",
    "room_id_for_create",
    "servers_required_to_sign",
]

THIRD_PARTY_INVITE: Final = "m.room.third_party_invite"

# Rule 9.1: the scalar power-level keys (v10 added the integer requirement).
_SCALAR_LEVEL_KEYS: Final = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
# Rules 9.2, 9.6 and 9.7: the maps from a name to a level (`users` is handled separately).
_MAP_LEVEL_KEYS: Final = ("events", "notifications")


class AuthError(Exception):
    """The event is not allowed by the authorization rules.

    `reason` is a human-readable sentence safe to show to the user who tried to send the
    event (the client API returns it with 403 `M_FORBIDDEN`); it names the rule that failed.
    """

    errcode: Final = "M_FORBIDDEN"
    http_status: Final = 403

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _domain(identifier: object) -> str | None:
    """The server part of a user or room ID (`@a:example.org:8448` -> `example.org:8448`)."""
    if not isinstance(identifier, str) or ":" not in identifier:
        return None
    domain = identifier.split(":", 1)[1]
    return domain or None


def _is_user_id(value: object) -> bool:
    # `@localpart:domain`, both parts non-empty (historical user IDs allow most characters in
    # the localpart, so nothing more is checked: being stricter than other servers would
    # reject power levels events they accept).
    return (
        isinstance(value, str) and value.startswith("@") and ":" in value[2:] and _domain(value) is not None
    )


def _content(event: Mapping[str, Any]) -> Mapping[str, Any]:
    content = event.get("content")
    if not isinstance(content, Mapping):
        raise AuthError("The event's content must be a JSON object")
    return content


def _string_field(event: Mapping[str, Any], key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str):
        raise AuthError(f"The event has no valid {key!r}")
    return value


def _is_state_event(event: Mapping[str, Any]) -> bool:
    return event.get("state_key") is not None


# --- auth events selection ---------------------------------------------------------------


def auth_types_for_event(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (type, state_key) pairs of the state that `event`'s authorization depends on.

    Server-Server API "Auth events selection" (room versions 10 and 11 both support
    restricted rooms). Promises, in this order and without duplicates:

    - nothing for `m.room.create`;
    - otherwise `m.room.create`, `m.room.power_levels` and the sender's `m.room.member`;
    - for `m.room.member`: the target's (`state_key`) member event; `m.room.join_rules` when
      `membership` is `join`, `invite` or `knock`; the `m.room.third_party_invite` whose
      state key is `content.third_party_invite.signed.token` for a third-party invite; the
      member event of `content.join_authorised_via_users_server` if present.

    The spec's list names `join_rules` only for `join` and `invite`, but rule 4.7.1 reads
    the join rule of a knock, which could then never pass against its own auth events; like
    the implementations that added knocking, `knock` is included.

    The entries are what to put in `auth_events` (those present in the state) and what
    `check_auth` reads; a malformed event yields the pairs that can be derived from it.
    """
    event_type = event.get("type")
    if event_type == CREATE[0]:
        return []
    wanted: list[tuple[str, str]] = [CREATE, POWER_LEVELS]
    sender = event.get("sender")
    if isinstance(sender, str):
        wanted.append((MEMBER, sender))
    if event_type == MEMBER:
        content = event.get("content")
        content = content if isinstance(content, Mapping) else {}
        state_key = event.get("state_key")
        if isinstance(state_key, str):
            wanted.append((MEMBER, state_key))
        membership_value = content.get("membership")
        if membership_value in ("join", "invite", "knock"):
            wanted.append(JOIN_RULES)
        token = _third_party_invite_token(content)
        if membership_value == "invite" and token is not None:
            wanted.append((THIRD_PARTY_INVITE, token))
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):
            wanted.append((MEMBER, authoriser))
    return list(dict.fromkeys(wanted))


def auth_state_for_event(
    event: Mapping[str, Any], state: StateMap
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The subset of `state` named by `auth_types_for_event(event)` that is present.

    For building an event's `auth_events`. For any event but `m.room.create` (whose auth
    state is empty), `check_auth(event, auth_state_for_event(event, state), v)` decides as
    `check_auth(event, state, v)` does, for any state a room can reach under these rules.
    """
    return {key: state[key] for key in auth_types_for_event(event) if key in state}


def auth_event_types(event: Mapping[str, Any], room_version: str) -> list[tuple[str, str]]:
    """The (type, state_key) pairs an event of `room_version` may list in its `auth_events`.

    `auth_types_for_event`, except that in v12 the create event is never listed (v12 rule
    3.2: "m.room.create MUST NOT be selected"; the room ID names it instead). `check_auth`
    still needs the create event in its `auth_state`: a v12 caller looks it up by room ID.
    """
    check_room_version(room_version)
    wanted = auth_types_for_event(event)
    if room_id_is_create_hash(room_version):
        return [key for key in wanted if key != CREATE]
    return wanted


def room_id_for_create(create_event: Mapping[str, Any]) -> str:
    """The v12 room ID minted by `create_event`: its event ID with the sigil `!` for `$`.

    rooms/v12 "Event format": the room ID is the create event's reference hash, so no
    server owns the ID and nobody can mint a second create event for it.
    """
    return "!" + compute_event_id(create_event, "12")[1:]


def _third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    third_party_invite = content.get("third_party_invite")
    if not isinstance(third_party_invite, Mapping):
        return None
    signed = third_party_invite.get("signed")
    if not isinstance(signed, Mapping):
        return None
    token = signed.get("token")
    return token if isinstance(token, str) else None


def servers_required_to_sign(event: Mapping[str, Any]) -> frozenset[str]:
    """The servers whose signatures `event` must carry before `check_auth` is meaningful.

    The sender's server ("Events must be signed by the server denoted by the `sender`
    property"), plus, for an `m.room.member` event with `join_authorised_via_users_server`,
    that user's server (rule 4.2). Verifying the signatures is the caller's job.
    """
    servers: set[str] = set()
    sender_domain = _domain(event.get("sender"))
    if sender_domain is not None:
        servers.add(sender_domain)
    content = event.get("content")
    if event.get("type") == MEMBER and isinstance(content, Mapping):
        authoriser_domain = _domain(content.get("join_authorised_via_users_server"))
        if authoriser_domain is not None:
            servers.add(authoriser_domain)
    return frozenset(servers)


# --- the rules -----------------------------------------------------------------------------


def check_auth(event: Mapping[str, Any], auth_state: StateMap, room_version: str) -> None:
    """Raise `AuthError` unless the rules of `room_version` allow `event` given `auth_state`.

    `auth_state` is the state the event is checked against: the state before the event, the
    current state, or the event's own `auth_events` keyed by (type, state_key). Entries that
    `auth_types_for_event` does not name are not consulted, so passing the full state is
    fine; the one exception is the creator's first join (rule 4.3.1), which for a PDU
    requires that `prev_events` be exactly the create event's ID and, for a client-format
    event (no `prev_events`), that `auth_state` hold nothing but the create event.

    Promises:
    - Returns None iff rules 1-10 allow the event; otherwise `AuthError` whose reason cites
      the failing rule. Malformed events (missing `type`/`sender`, non-object `content`)
      are rejected, never allowed.
    - Never modifies its arguments; never performs I/O.
    - Raises `UnsupportedRoomVersion` (a `ValueError`, not `AuthError`) for room versions
      other than "10", "11" and "12": that is a bug in the caller, not a forbidden event.
    - v12: `auth_state` must hold the create event (with its `event_id`) although a v12
      event never lists it in `auth_events`: the caller looks it up by the room ID.

    Not checked here (the caller must): signatures and hashes (the opening requirement and
    rule 4.2; see `servers_required_to_sign`); rules 2.1-2.3, which are about the PDU's
    `auth_events` list (duplicates, unexpected entries, rejected entries) rather than the
    state it implies. `m.room.redaction` is authorised like any other event here (rules 5
    and 7); whether the redaction may be *applied* is `redaction_allowed`.
    """
    check_room_version(room_version)
    event_type = _string_field(event, "type")
    sender = _string_field(event, "sender")
    content = _content(event)

    # Rule 1: m.room.create.
    if event_type == CREATE[0]:
        _check_create(event, content, sender, auth_state, room_version)
        return

    # Rule 2.4: there must be an m.room.create event among the auth events.
    create = auth_state.get(CREATE)
    if create is None:
        raise AuthError("The room has no m.room.create event (rule 2.4)")
    create_room_id = create.get("room_id")
    if room_id_is_create_hash(room_version):
        # v12 rule 2: the room ID is the create event's ID with `!` for `$` (when the create
        # event's ID is known; a client-format event may omit room_id, as elsewhere).
        create_id = create.get("event_id")
        create_room_id = "!" + create_id[1:] if isinstance(create_id, str) and create_id else None
        if create_room_id is not None and event.get("room_id") not in (None, create_room_id):
            raise AuthError("The event's room ID is not its create event's ID (v12 rule 2)")
    if create_room_id is not None and event.get("room_id") not in (None, create_room_id):
        # Not a numbered rule: the auth state must belong to the event's room (newer spec
        # versions make this explicit for auth_events).
        raise AuthError("The event and its auth state are in different rooms")

    # Rule 3: m.federate false keeps the room on the creator's server.
    create_content = create.get("content")
    federate = create_content.get("m.federate") if isinstance(create_content, Mapping) else None
    if federate is False and _domain(sender) != _domain(create.get("sender")):
        raise AuthError(
            "This room does not federate: only users on the creator's server may take part (rule 3)"
        )

    # Rule 4: m.room.member.
    if event_type == MEMBER:
        _check_membership(event, content, sender, auth_state, room_version)
        return

    # Rule 5: everything else needs the sender to be joined.
    if membership(sender, auth_state) != "join":
        raise AuthError(f"{sender} is not joined to the room (rule 5)")

    sender_level = user_power_level(sender, auth_state, room_version)
    pl_content = power_levels_content(auth_state)

    # Rule 6: m.room.third_party_invite needs the invite level, and nothing else.
    if event_type == THIRD_PARTY_INVITE:
        invite_level = named_power_level("invite", pl_content)
        if sender_level >= invite_level:
            return
        raise AuthError(
            f"Sending third-party invites needs power level {invite_level}; "
            f"{sender} has {sender_level} (rule 6.1)"
        )

    # Rule 7: the event type's required power level.
    is_state = _is_state_event(event)
    required = event_power_level(event_type, is_state, pl_content)
    if required > sender_level:
        kind = "state event" if is_state else "event"
        raise AuthError(
            f"Sending {kind} {event_type} needs power level {required}; {sender} has {sender_level} (rule 7)"
        )

    # Rule 8: state keys that look like a user ID are reserved for that user.
    state_key = event.get("state_key")
    if isinstance(state_key, str) and state_key.startswith("@") and state_key != sender:
        raise AuthError(f"Only {state_key} may send state with state key {state_key!r} (rule 8)")

    # Rule 9: m.room.power_levels.
    if event_type == POWER_LEVELS[0]:
        if room_id_is_create_hash(room_version):
            _check_no_creators_listed(content, room_creators(create, room_version))
        _check_power_levels(content, sender, sender_level, pl_content)

    # Rule 10: otherwise, allow.


def _check_create(
    event: Mapping[str, Any], content: Mapping[str, Any], sender: str, auth_state: StateMap, room_version: str
) -> None:
    # Rule 1.1: the create event is the first event: no prev_events. For client-format
    # events (no prev_events key) the state before it must likewise be empty.
    if event.get("prev_events") or len(auth_state) > 0:
        raise AuthError("m.room.create must be the first event in the room (rule 1.1)")
    if room_id_is_create_hash(room_version):
        # v12 rule 1.2: the room ID is derived from this event, so it cannot carry one.
        if "room_id" in event:
            raise AuthError("m.room.create must not have a room_id in room version 12 (v12 rule 1.2)")
    else:
        # Rule 1.2: the room ID is minted by the creator's server.
        room_domain = _domain(event.get("room_id"))
        if room_domain is None or room_domain != _domain(sender):
            raise AuthError("The room ID's server must be the creator's server (rule 1.2)")
    # Rule 1.3: a declared room version must be one we know; it must also be the version
    # whose rules we were asked to apply (anything else is a caller bug we refuse to guess
    # around). A missing room_version is left alone, as the rule says.
    declared = content.get("room_version")
    if declared is not None and (declared not in KNOWN_ROOM_VERSIONS or declared != room_version):
        raise AuthError(f"Unsupported room version {declared!r} in m.room.create (rule 1.3)")
    # v12 rule 1.4: additional_creators, if present, lists user IDs.
    if room_id_is_create_hash(room_version) and "additional_creators" in content:
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(_is_user_id(user) for user in additional):
            raise AuthError("additional_creators must be a list of user IDs (v12 rule 1.4)")
    # Rule 1.4 (v10 only; v11 removed it): content.creator is required.
    if room_version == "10" and "creator" not in content:
        raise AuthError("m.room.create needs content.creator in room version 10 (rule 1.4)")
    # Rule 1.4 (v10) / 1.4 (v11): otherwise, allow.


def _check_membership(
    event: Mapping[str, Any], content: Mapping[str, Any], sender: str, auth_state: StateMap, room_version: str
) -> None:
    # Rule 4.1: a state_key and a membership are required.
    target = event.get("state_key")
    if not isinstance(target, str):
        raise AuthError("m.room.member needs a state_key (rule 4.1)")
    new_membership = content.get("membership")
    if not isinstance(new_membership, str):
        raise AuthError("m.room.member needs content.membership (rule 4.1)")
    # Rule 4.2 (signature of the join_authorised_via_users_server's server) is the caller's.

    if new_membership == "join":
        _check_join(event, content, sender, target, auth_state, room_version)
    elif new_membership == "invite":
        _check_invite(content, sender, target, auth_state, room_version)
    elif new_membership == "leave":
        _check_leave(sender, target, auth_state, room_version)
    elif new_membership == "ban":
        _check_ban(sender, target, auth_state, room_version)
    elif new_membership == "knock":
        _check_knock(sender, target, auth_state)
    else:
        # Rule 4.8: unknown membership.
        raise AuthError(f"Unknown membership {new_membership!r} (rule 4.8)")


def _join_rule(auth_state: StateMap) -> str:
    join_rules = auth_state.get(JOIN_RULES)
    content = join_rules.get("content") if join_rules is not None else None
    rule = content.get("join_rule") if isinstance(content, Mapping) else None
    # No (valid) m.room.join_rules event: the spec names no default; treat the room as
    # invite-only, the most restrictive rule that still lets invited users in.
    return rule if isinstance(rule, str) else "invite"


def _only_previous_event_is_create(
    event: Mapping[str, Any], auth_state: StateMap, create: Mapping[str, Any]
) -> bool:
    # A PDU: exactly one prev_event, the create event (when its ID is known); that is the
    # whole rule, so it gives the same answer against any state (state resolution re-checks
    # the creator's join against a partial state that may already hold power levels). A
    # client-format event (no prev_events) is judged by the state before it instead: it
    # must hold nothing but the create event.
    prev_events = event.get("prev_events")
    if prev_events is not None:
        if not isinstance(prev_events, list) or len(prev_events) != 1:
            return False
        create_id = create.get("event_id")
        return create_id is None or prev_events[0] == create_id
    return all(key == CREATE for key in auth_state)


def _check_join(
    event: Mapping[str, Any],
    content: Mapping[str, Any],
    sender: str,
    target: str,
    auth_state: StateMap,
    room_version: str,
) -> None:
    create = auth_state[CREATE]
    # Rule 4.3.1: the creator's own join straight after the create event. v10 names the
    # creator in content.creator; v11 uses the create event's sender. (The rule compares
    # only the state_key; rule 4.3.2 below is not consulted for this case.)
    if target == room_creator(create, room_version) and _only_previous_event_is_create(
        event, auth_state, create
    ):
        return
    # Rule 4.3.2: nobody joins on someone else's behalf.
    if sender != target:
        raise AuthError("Users can only join on their own behalf (rule 4.3.2)")
    current = membership(sender, auth_state)
    # Rule 4.3.3: banned users stay out.
    if current == "ban":
        raise AuthError(f"{sender} is banned from the room (rule 4.3.3)")
    join_rule = _join_rule(auth_state)
    # Rule 4.3.4: invite-only (and knock) rooms need an invite (or an existing join).
    if join_rule in ("invite", "knock"):
        if current in ("invite", "join"):
            return
        raise AuthError(f"{sender} needs an invite to join this room (rule 4.3.4)")
    # Rule 4.3.5: restricted rooms: invited/joined users, or a join vouched for by a joined
    # user who may invite (join_authorised_via_users_server). Whether the joining user met
    # the `allow` conditions is the vouching server's call, not an auth rule.
    if join_rule in ("restricted", "knock_restricted"):
        if current in ("join", "invite"):
            return
        authoriser = content.get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            raise AuthError(
                f"{sender} needs an invite or an authorising user to join this room (rule 4.3.5.2)"
            )
        if not _may_invite(authoriser, auth_state, room_version):
            raise AuthError(
                f"{authoriser} cannot authorise joins: not joined or lacks the invite level (rule 4.3.5.2)"
            )
        return
    # Rule 4.3.6: public rooms.
    if join_rule == "public":
        return
    # Rule 4.3.7: any other join rule (e.g. `private`, or unknown).
    raise AuthError(f"Joining is not possible with join rule {join_rule!r} (rule 4.3.7)")


def _may_invite(user_id: str, auth_state: StateMap, room_version: str) -> bool:
    # "A user with sufficient permission to invite other users" (rule 4.3.5.2), i.e. one
    # whose own invite would pass rules 4.4.2 and 4.4.4.
    return membership(user_id, auth_state) == "join" and user_power_level(
        user_id, auth_state, room_version
    ) >= named_power_level("invite", power_levels_content(auth_state))


def _check_invite(
    content: Mapping[str, Any], sender: str, target: str, auth_state: StateMap, room_version: str
) -> None:
    target_membership = membership(target, auth_state)
    # Rule 4.4.1: third-party invites (an identity server vouches that `target` owns the
    # invited e-mail address / phone number).
    if "third_party_invite" in content:
        _check_third_party_invite(content, sender, target, target_membership, auth_state)
        return
    # Rule 4.4.2: only joined users invite.
    if membership(sender, auth_state) != "join":
        raise AuthError(f"{sender} is not joined to the room (rule 4.4.2)")
    # Rule 4.4.3: joined users need no invite; banned users must be unbanned first.
    if target_membership in ("join", "ban"):
        state = "already in the room" if target_membership == "join" else "banned"
        raise AuthError(f"{target} is {state} (rule 4.4.3)")
    # Rules 4.4.4 and 4.4.5: the invite level.
    sender_level = user_power_level(sender, auth_state, room_version)
    invite_level = named_power_level("invite", power_levels_content(auth_state))
    if sender_level < invite_level:
        raise AuthError(
            f"Inviting needs power level {invite_level}; {sender} has {sender_level} (rule 4.4.5)"
        )


def _check_third_party_invite(
    content: Mapping[str, Any], sender: str, target: str, target_membership: str | None, auth_state: StateMap
) -> None:
    # Rule 4.4.1.1.
    if target_membership == "ban":
        raise AuthError(f"{target} is banned (rule 4.4.1.1)")
    third_party_invite = content["third_party_invite"]
    signed = third_party_invite.get("signed") if isinstance(third_party_invite, Mapping) else None
    # Rule 4.4.1.2.
    if not isinstance(signed, Mapping):
        raise AuthError("third_party_invite has no 'signed' object (rule 4.4.1.2)")
    # Rule 4.4.1.3.
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs 'mxid' and 'token' (rule 4.4.1.3)")
    # Rule 4.4.1.4.
    if mxid != target:
        raise AuthError("third_party_invite.signed.mxid does not match the invited user (rule 4.4.1.4)")
    # Rule 4.4.1.5.
    invite_event = auth_state.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError("No m.room.third_party_invite matches the token (rule 4.4.1.5)")
    # Rule 4.4.1.6.
    if invite_event.get("sender") != sender:
        raise AuthError("Only the user who sent the third-party invite may complete it (rule 4.4.1.6)")
    # Rules 4.4.1.7 and 4.4.1.8: a signature by one of the identity server's keys.
    invite_content = invite_event.get("content")
    if not isinstance(invite_content, Mapping) or not _signed_by_any_key(
        signed, _public_keys(invite_content)
    ):
        raise AuthError("The third-party invite is not signed by the identity server (rule 4.4.1.8)")


def _public_keys(invite_content: Mapping[str, Any]) -> list[str]:
    # Rule 4.4.1.7.1 and 4.4.1.7.2: `public_key`, and `public_keys[].public_key`.
    keys = []
    if isinstance(invite_content.get("public_key"), str):
        keys.append(invite_content["public_key"])
    public_keys = invite_content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def _signed_by_any_key(signed: Mapping[str, Any], public_keys: list[str]) -> bool:
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    for server_name, server_signatures in signatures.items():
        if not isinstance(server_signatures, Mapping):
            continue
        for key_id in server_signatures:
            for public_key in public_keys:
                try:
                    verify_key = decode_verify_key_bytes(key_id, decode_base64(public_key))
                    verify_signed_json(dict(signed), server_name, verify_key)
                except (SignatureVerifyException, ValueError, TypeError):
                    continue  # wrong key, unknown algorithm or malformed data: try the next
                return True
    return False


def _check_leave(sender: str, target: str, auth_state: StateMap, room_version: str) -> None:
    sender_membership = membership(sender, auth_state)
    # Rule 4.5.1: leaving, rejecting an invite, or retracting a knock.
    if sender == target:
        if sender_membership in ("invite", "join", "knock"):
            return
        raise AuthError(
            f"{sender} cannot leave: their membership is {sender_membership or 'none'} (rule 4.5.1)"
        )
    # Rule 4.5.2: kicking (and unbanning) needs the sender to be joined.
    if sender_membership != "join":
        raise AuthError(f"{sender} is not joined to the room (rule 4.5.2)")
    pl_content = power_levels_content(auth_state)
    sender_level = user_power_level(sender, auth_state, room_version)
    # Rule 4.5.3: unbanning needs the ban level too.
    ban_level = named_power_level("ban", pl_content)
    if membership(target, auth_state) == "ban" and sender_level < ban_level:
        raise AuthError(f"Unbanning needs power level {ban_level}; {sender} has {sender_level} (rule 4.5.3)")
    # Rules 4.5.4 and 4.5.5: the kick level, and only users below oneself. (The target's
    # membership is not consulted: kicking an absent user is allowed by the rules.)
    kick_level = named_power_level("kick", pl_content)
    if sender_level < kick_level:
        raise AuthError(f"Kicking needs power level {kick_level}; {sender} has {sender_level} (rule 4.5.5)")
    target_level = user_power_level(target, auth_state, room_version)
    if target_level >= sender_level:
        raise AuthError(
            f"{sender} (power level {sender_level}) cannot kick {target} "
            f"(power level {target_level}) (rule 4.5.5)"
        )


def _check_ban(sender: str, target: str, auth_state: StateMap, room_version: str) -> None:
    # Rule 4.6.1.
    if membership(sender, auth_state) != "join":
        raise AuthError(f"{sender} is not joined to the room (rule 4.6.1)")
    # Rules 4.6.2 and 4.6.3: the ban level, and only users below oneself (whatever their
    # membership: pre-emptive bans are allowed).
    sender_level = user_power_level(sender, auth_state, room_version)
    ban_level = named_power_level("ban", power_levels_content(auth_state))
    if sender_level < ban_level:
        raise AuthError(f"Banning needs power level {ban_level}; {sender} has {sender_level} (rule 4.6.3)")
    target_level = user_power_level(target, auth_state, room_version)
    if target_level >= sender_level:
        raise AuthError(
            f"{sender} (power level {sender_level}) cannot ban {target} "
            f"(power level {target_level}) (rule 4.6.3)"
        )


def _check_knock(sender: str, target: str, auth_state: StateMap) -> None:
    # Rule 4.7.1: only rooms that accept knocks.
    join_rule = _join_rule(auth_state)
    if join_rule not in ("knock", "knock_restricted"):
        raise AuthError(f"This room does not accept knocks (join rule {join_rule!r}) (rule 4.7.1)")
    # Rule 4.7.2.
    if sender != target:
        raise AuthError("Users can only knock on their own behalf (rule 4.7.2)")
    # Rules 4.7.3 and 4.7.4: not if banned, invited or joined already.
    current = membership(sender, auth_state)
    if current in ("ban", "invite", "join"):
        raise AuthError(f"{sender} cannot knock: their membership is {current} (rule 4.7.4)")


def _check_no_creators_listed(content: Mapping[str, Any], creators: frozenset[str]) -> None:
    # v12 rule 10.4: creators' power is fixed; naming one in `users` is refused outright
    # rather than ignored, so every server reads the same levels from the event.
    users = content.get("users")
    if isinstance(users, Mapping):
        listed = sorted(creators.intersection(users))
        if listed:
            raise AuthError(
                f"Room creators cannot be given a power level: {', '.join(listed)} (v12 rule 10.4)"
            )


def _check_power_levels(
    content: Mapping[str, Any], sender: str, sender_level: int, old: Mapping[str, Any] | None
) -> None:
    # Rule 9.1 (added in v10): scalar levels are integers.
    for key in _SCALAR_LEVEL_KEYS:
        if key in content and not is_valid_power_level(content[key]):
            raise AuthError(f"Power level {key!r} must be an integer (rule 9.1)")
    # Rule 9.2 (added in v10): events / notifications map to integers.
    for key in _MAP_LEVEL_KEYS:
        if key in content:
            value = content[key]
            if not isinstance(value, Mapping) or not all(is_valid_power_level(v) for v in value.values()):
                raise AuthError(f"Power levels {key!r} must be an object of integers (rule 9.2)")
    # Rule 9.3: users maps user IDs to integers. (An absent `users` is an empty one.)
    users = content.get("users", {})
    if not isinstance(users, Mapping) or not all(
        _is_user_id(user) and is_valid_power_level(level) for user, level in users.items()
    ):
        raise AuthError("Power levels 'users' must map user IDs to integers (rule 9.3)")

    # Rule 9.4: the first power levels event is not compared with anything.
    if old is None:
        return

    def too_high(value: object, *, or_equal: bool = False) -> bool:
        # An old value that is not a valid level cannot exist in a v10/v11 room (rule 9.1
        # rejected it); such a value is not compared.
        if not is_valid_power_level(value):
            return False
        return value >= sender_level if or_equal else value > sender_level

    # Rule 9.5: scalar keys added, changed or removed: neither the old nor the new value may
    # exceed the sender's level.
    for key in _SCALAR_LEVEL_KEYS:
        old_value, new_value = old.get(key), content.get(key)
        if (key in old) == (key in content) and old_value == new_value:
            continue
        if key in old and too_high(old_value):
            raise AuthError(f"{sender} cannot change {key!r} from a level above their own (rule 9.5.1)")
        if key in content and too_high(new_value):
            raise AuthError(f"{sender} cannot set {key!r} above their own level {sender_level} (rule 9.5.2)")

    # Rules 9.6 and 9.7: entries of events / notifications.
    for key in _MAP_LEVEL_KEYS:
        old_map, new_map = _as_mapping(old.get(key)), _as_mapping(content.get(key))
        for name in sorted(set(old_map) | set(new_map)):
            if (name in old_map) == (name in new_map) and old_map.get(name) == new_map.get(name):
                continue
            if name in old_map and too_high(old_map[name]):
                raise AuthError(
                    f"{sender} cannot change {key}[{name!r}] from a level above their own (rule 9.6.1)"
                )
            if name in new_map and too_high(new_map[name]):
                raise AuthError(
                    f"{sender} cannot set {key}[{name!r}] above their own level {sender_level} (rule 9.7.1)"
                )

    # Rules 9.8 and 9.9: entries of users. Others at or above the sender's level are
    # untouchable (9.8; the sender may lower their own entry); nobody may be raised above
    # the sender's level (9.9).
    old_users = _as_mapping(old.get("users"))
    for user in sorted(set(old_users) | set(users)):
        if (user in old_users) == (user in users) and old_users.get(user) == users.get(user):
            continue
        if user != sender and user in old_users and too_high(old_users[user], or_equal=True):
            raise AuthError(
                f"{sender} cannot change the power level of {user}, who is not below them (rule 9.8.1)"
            )
        if user in users and too_high(users[user]):
            raise AuthError(
                f"{sender} cannot give {user} a power level above their own {sender_level} (rule 9.9.1)"
            )
    # Rule 9.10: otherwise, allow.


def _as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# --- redactions --------------------------------------------------------------------------


def redaction_target(event: Mapping[str, Any], room_version: str) -> str | None:
    """The event ID an `m.room.redaction` event redacts, or None if it names none.

    rooms/v11 "Moving the `redacts` property ... to a `content` property": v11 reads
    `content.redacts` only; v10 reads the top-level `redacts` only (servers may copy it to
    the other place for clients, but that copy is not what other servers sign). Raises
    `UnsupportedRoomVersion` for other versions.
    """
    check_room_version(room_version)
    if redacts_in_content(room_version):
        content = event.get("content")
        target = content.get("redacts") if isinstance(content, Mapping) else None
    else:
        target = event.get("redacts")
    return target if isinstance(target, str) else None


def redaction_allowed(
    redaction: Mapping[str, Any], original: Mapping[str, Any], auth_state: StateMap, room_version: str
) -> bool:
    """Whether the accepted `redaction` may be applied to `original` (and shown to clients).

    rooms/v10 and v11 "Handling redactions" (unchanged since v3): redactions always pass
    the auth rules (they are only subject to rules 5 and 7, see `check_auth`), and are
    applied once both events are known if either

    1. the redaction's sender has at least the *redact level* in `auth_state` (the state
       before the redaction), or
    2. the redaction's sender is on the same server as the original event's sender.

    Also requires that `redaction` targets `original` (`redaction_target` equals
    `original["event_id"]`) in the same room. Note that 2. trusts the *server*: the client
    API must itself stop a user redacting another local user's events without the redact
    level (`power_levels.can_do(user, "redact", state)`).
    """
    target = redaction_target(redaction, room_version)
    if target is None or target != original.get("event_id"):
        return False
    if redaction.get("room_id") != original.get("room_id"):
        return False
    sender = redaction.get("sender")
    if not isinstance(sender, str):
        return False
    redact_level = named_power_level("redact", power_levels_content(auth_state))
    if user_power_level(sender, auth_state, room_version) >= redact_level:
        return True
    sender_domain = _domain(sender)
    return sender_domain is not None and sender_domain == _domain(original.get("sender"))
