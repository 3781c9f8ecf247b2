"""Authorization rules for room versions 10 and 11 (homeserver.events.auth_rules, .power_levels).

Each test names the spec rule it exercises (rooms/v10 and rooms/v11 "Authorization rules");
most run under both versions through the `version` fixture, and the differences (rule 1.4,
rule 4.3.1, the creator for default power levels, where a redaction names its target) have
tests of their own. Rejections are matched on the rule number the reason cites, so a test
fails if the event is refused for the wrong reason.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import pytest
from signedjson.key import generate_signing_key
from signedjson.sign import sign_json

from homeserver.events.auth_rules import (
    AuthError,
    auth_state_for_event,
    auth_types_for_event,
    check_auth,
    redaction_allowed,
    redaction_target,
    servers_required_to_sign,
)
from homeserver.events.canonical import encode_base64
from homeserver.events.power_levels import (
    DEFAULT_LEVELS,
    MAX_POWER_LEVEL,
    MIN_POWER_LEVEL,
    can_do,
    default_power_levels_content,
    event_power_level,
    is_valid_power_level,
    membership,
    named_power_level,
    room_creator,
    user_power_level,
)
from homeserver.events.redaction import UnsupportedRoomVersion

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is a test-only dependency
    HAVE_HYPOTHESIS = False

VERSIONS = ("10", "11")
ROOM_ID = "!room:example.org"
CREATOR = "@creator:example.org"
MOD = "@mod:example.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:other.org"
EVE = "@eve:evil.org"

CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")

_ids = itertools.count()


# --- builders --------------------------------------------------------------------------


def make_event(
    event_type: str, sender: str, content: Any, state_key: str | None = None, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "content": content,
        "room_id": ROOM_ID,
        "event_id": f"$event{next(_ids)}",
    }
    if state_key is not None:
        event["state_key"] = state_key
    event.update(extra)
    return event


def create_event(version: str, sender: str = CREATOR, **content: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"room_version": version}
    if version == "10":
        base["creator"] = sender
    base.update(content)
    return make_event("m.room.create", sender, base, "")


def member(user: str, membership_: str, sender: str | None = None, **content: Any) -> dict[str, Any]:
    return make_event("m.room.member", sender or user, {"membership": membership_, **content}, user)


def power_levels(sender: str = CREATOR, **content: Any) -> dict[str, Any]:
    return make_event("m.room.power_levels", sender, content, "")


def join_rules(rule: str, sender: str = CREATOR, **content: Any) -> dict[str, Any]:
    return make_event("m.room.join_rules", sender, {"join_rule": rule, **content}, "")


def message(sender: str, body: str = "hello") -> dict[str, Any]:
    return make_event("m.room.message", sender, {"msgtype": "m.text", "body": body})


def state(event_type: str, sender: str, content: Any = None, state_key: str = "") -> dict[str, Any]:
    return make_event(event_type, sender, {} if content is None else content, state_key)


class Room:
    """A room's state, grown only through events that `check_auth` accepts."""

    def __init__(self, version: str, create: dict[str, Any] | None = None) -> None:
        self.version = version
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.send(create or create_event(version))

    def check(self, event: dict[str, Any]) -> None:
        check_auth(event, self.state, self.version)

    def allows(self, event: dict[str, Any]) -> bool:
        try:
            self.check(event)
        except AuthError:
            return False
        return True

    def send(self, event: dict[str, Any]) -> dict[str, Any]:
        self.check(event)
        if "state_key" in event:
            self.state[(event["type"], event["state_key"])] = event
        return event

    def rejects(self, event: dict[str, Any], rule: str) -> AuthError:
        with pytest.raises(AuthError, match=rf"\(rule {re.escape(rule)}\)") as info:
            self.check(event)
        return info.value

    @property
    def pl_content(self) -> dict[str, Any]:
        return copy.deepcopy(self.state[PL]["content"])


STANDARD_PL: dict[str, Any] = {
    "users": {CREATOR: 100, MOD: 50},
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
    "events": {"m.room.name": 50, "m.room.power_levels": 100},
}


def standard_room(
    version: str, join_rule: str = "public", members: tuple[str, ...] = (MOD, ALICE), **pl: Any
) -> Room:
    """create, creator join, power levels (STANDARD_PL updated with `pl`), join rules, and
    `members` invited by the creator and joined."""
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(power_levels(**{**copy.deepcopy(STANDARD_PL), **pl}))
    room.send(join_rules(join_rule))
    for user in members:
        room.send(member(user, "invite", sender=CREATOR))
        room.send(member(user, "join"))
    return room


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def room(version: str) -> Room:
    return standard_room(version)


# --- AuthError, room versions, malformed events ----------------------------------------


def test_auth_error_carries_reason_and_forbidden_code() -> None:
    error = AuthError("nope")
    assert error.reason == "nope"
    assert str(error) == "nope"
    assert error.errcode == "M_FORBIDDEN"
    assert error.http_status == 403


@pytest.mark.parametrize("bad_version", ["1", "9", "13", ""])
def test_unsupported_room_version_is_a_caller_error(bad_version: str) -> None:
    with pytest.raises(UnsupportedRoomVersion):
        check_auth(message(ALICE), {}, bad_version)


@pytest.mark.parametrize("missing", ["type", "sender"])
def test_event_without_type_or_sender_rejected(room: Room, missing: str) -> None:
    event = message(ALICE)
    del event[missing]
    with pytest.raises(AuthError, match=missing):
        room.check(event)


@pytest.mark.parametrize("content", [None, [], "x", 3])
def test_non_object_content_rejected(room: Room, content: Any) -> None:
    event = message(ALICE)
    event["content"] = content
    with pytest.raises(AuthError, match="content"):
        room.check(event)


def test_check_auth_does_not_modify_its_arguments(room: Room) -> None:
    event = power_levels(**{**STANDARD_PL, "ban": 40})
    before_event, before_state = copy.deepcopy(event), copy.deepcopy(room.state)
    room.check(event)
    assert event == before_event
    assert room.state == before_state


# --- rule 1: m.room.create ---------------------------------------------------------------


def test_create_is_allowed_as_first_event(version: str) -> None:
    check_auth(create_event(version), {}, version)


def test_v10_create_requires_creator() -> None:
    event = create_event("10")
    del event["content"]["creator"]
    with pytest.raises(AuthError, match=r"rule 1\.4"):
        check_auth(event, {}, "10")


def test_v11_create_needs_no_creator() -> None:
    event = create_event("11")
    assert "creator" not in event["content"]
    check_auth(event, {}, "11")


def test_create_with_prev_events_rejected(version: str) -> None:
    with pytest.raises(AuthError, match=r"rule 1\.1"):
        check_auth({**create_event(version), "prev_events": ["$earlier"]}, {}, version)


def test_create_with_empty_prev_events_allowed(version: str) -> None:
    event = create_event(version)
    event["prev_events"] = []
    check_auth(event, {}, version)


def test_create_must_be_first_in_state(room: Room) -> None:
    room.rejects(create_event(room.version), "1.1")


@pytest.mark.parametrize("room_id", ["!room:other.org", "!room", None])
def test_create_room_id_domain_must_match_sender(version: str, room_id: str | None) -> None:
    event = create_event(version)
    event["room_id"] = room_id
    with pytest.raises(AuthError, match=r"rule 1\.2"):
        check_auth(event, {}, version)


def test_create_room_id_domain_with_port(version: str) -> None:
    event = create_event(version, sender="@creator:example.org:8448")
    event["room_id"] = "!room:example.org:8448"
    check_auth(event, {}, version)


@pytest.mark.parametrize("declared", ["9", "13", "org.example.custom", 10])
def test_create_unknown_room_version_rejected(version: str, declared: Any) -> None:
    with pytest.raises(AuthError, match=r"rule 1\.3"):
        check_auth(create_event(version, room_version=declared), {}, version)


def test_create_room_version_must_match_rules_applied() -> None:
    with pytest.raises(AuthError, match=r"rule 1\.3"):
        check_auth(create_event("11", room_version="10", creator=CREATOR), {}, "11")


def test_create_without_room_version_key_is_not_rejected_by_rule_1_3(version: str) -> None:
    event = create_event(version)
    del event["content"]["room_version"]
    check_auth(event, {}, version)


# --- rules 2.4 and 3 -------------------------------------------------------------------


def test_no_create_event_in_state_rejected(version: str) -> None:
    with pytest.raises(AuthError, match=r"rule 2\.4"):
        check_auth(message(ALICE), {}, version)
    with pytest.raises(AuthError, match=r"rule 2\.4"):
        check_auth(member(ALICE, "join"), {("m.room.member", ALICE): member(ALICE, "join")}, version)


def test_auth_state_from_another_room_rejected(room: Room) -> None:
    event = message(ALICE)
    event["room_id"] = "!elsewhere:example.org"
    with pytest.raises(AuthError, match="different rooms"):
        room.check(event)


def test_m_federate_false_keeps_other_servers_out(version: str) -> None:
    room = Room(version, create_event(version, **{"m.federate": False}))
    room.send(member(CREATOR, "join"))
    room.send(join_rules("public"))
    room.send(member(ALICE, "join"))  # same server as the creator
    room.rejects(member(CAROL, "join"), "3")
    room.rejects(message(CAROL), "3")


def test_m_federate_true_or_absent_lets_other_servers_in(version: str) -> None:
    room = Room(version, create_event(version, **{"m.federate": True}))
    room.send(member(CREATOR, "join"))
    room.send(join_rules("public"))
    room.send(member(CAROL, "join"))


# --- rule 4.1, 4.8: malformed membership events ----------------------------------------


def test_member_without_state_key_rejected(room: Room) -> None:
    event = member(BOB, "join")
    del event["state_key"]
    room.rejects(event, "4.1")


@pytest.mark.parametrize("content", [{}, {"membership": None}, {"membership": 1}])
def test_member_without_membership_rejected(room: Room, content: dict[str, Any]) -> None:
    room.rejects(make_event("m.room.member", BOB, content, BOB), "4.1")


@pytest.mark.parametrize("value", ["joined", "JOIN", "kick", ""])
def test_unknown_membership_rejected(room: Room, value: str) -> None:
    room.rejects(member(ALICE, value), "4.8")


# --- rule 4.3.1: the creator's first join ------------------------------------------------


def test_creator_joins_right_after_create(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    assert membership(CREATOR, room.state) == "join"


def test_creator_first_join_with_prev_events(version: str) -> None:
    room = Room(version)
    create_id = room.state[CREATE]["event_id"]
    room.check({**member(CREATOR, "join"), "prev_events": [create_id]})
    # Not the only previous event, or not the create event: no invite, so rule 4.3.4.
    room.rejects({**member(CREATOR, "join"), "prev_events": [create_id, "$other"]}, "4.3.4")
    room.rejects({**member(CREATOR, "join"), "prev_events": ["$other"]}, "4.3.4")
    room.rejects({**member(CREATOR, "join"), "prev_events": []}, "4.3.4")


def test_non_creator_cannot_join_right_after_create(version: str) -> None:
    room = Room(version)
    room.rejects(member(ALICE, "join"), "4.3.4")  # no join rules: treated as invite-only


def test_creator_rejoin_later_follows_join_rules(version: str) -> None:
    room = standard_room(version, join_rule="invite")
    room.send(member(CREATOR, "leave"))
    room.rejects(member(CREATOR, "join"), "4.3.4")


def test_rule_4_3_1_compares_only_the_state_key(version: str) -> None:
    # Spec quirk: right after the create event, a join *for* the creator is allowed
    # whoever sends it (rule 4.3.2 comes later). The sender's server must still sign it.
    room = Room(version)
    room.check(member(CREATOR, "join", sender=ALICE))


def test_v10_creator_is_content_creator() -> None:
    room = Room("10", create_event("10", sender=CREATOR, creator=ALICE))
    room.check(member(ALICE, "join"))
    room.rejects(member(CREATOR, "join"), "4.3.4")
    assert user_power_level(ALICE, room.state, "10") == 100
    assert user_power_level(CREATOR, room.state, "10") == 0


def test_v11_creator_is_create_sender_and_creator_key_is_ignored() -> None:
    room = Room("11", create_event("11", sender=CREATOR, creator=ALICE))
    room.check(member(CREATOR, "join"))
    room.rejects(member(ALICE, "join"), "4.3.4")
    assert user_power_level(CREATOR, room.state, "11") == 100
    assert user_power_level(ALICE, room.state, "11") == 0


# --- rule 4.3: joins ---------------------------------------------------------------------


def test_public_join(room: Room) -> None:
    room.send(member(BOB, "join"))
    room.send(member(CAROL, "join"))  # other servers too


def test_join_on_behalf_of_someone_else_rejected(room: Room) -> None:
    room.rejects(member(BOB, "join", sender=ALICE), "4.3.2")


def test_banned_user_cannot_join_public_room(room: Room) -> None:
    room.send(member(BOB, "ban", sender=MOD))
    room.rejects(member(BOB, "join"), "4.3.3")


@pytest.mark.parametrize("rule", ["invite", "knock"])
def test_invite_only_join_needs_invite(version: str, rule: str) -> None:
    room = standard_room(version, join_rule=rule)
    room.rejects(member(BOB, "join"), "4.3.4")
    room.send(member(BOB, "invite", sender=ALICE))
    room.send(member(BOB, "join"))
    # Already joined: a repeated join (e.g. a profile change) is allowed.
    room.send(member(BOB, "join", displayname="Bob"))


def test_invite_only_join_after_leaving_needs_new_invite(version: str) -> None:
    room = standard_room(version, join_rule="invite")
    room.send(member(ALICE, "leave"))
    room.rejects(member(ALICE, "join"), "4.3.4")


def test_missing_join_rules_event_means_invite_only(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.rejects(member(BOB, "join"), "4.3.4")
    room.send(member(BOB, "invite", sender=CREATOR))
    room.send(member(BOB, "join"))


@pytest.mark.parametrize("rule", ["private", "secret", ""])
def test_other_join_rules_reject_joins(version: str, rule: str) -> None:
    room = standard_room(version, join_rule=rule, members=())
    room.rejects(member(BOB, "join"), "4.3.7")
    room.send(member(BOB, "invite", sender=CREATOR))
    room.rejects(member(BOB, "join"), "4.3.7")  # even invited: only invite/knock/restricted honour invites


# --- rule 4.3.5: restricted joins --------------------------------------------------------

RESTRICTED_ALLOW = [{"type": "m.room_membership", "room_id": "!space:example.org"}]


@pytest.fixture(params=["restricted", "knock_restricted"])
def restricted_room(version: str, request: pytest.FixtureRequest) -> Room:
    room = standard_room(version, join_rule=request.param)
    room.send(join_rules(request.param, allow=RESTRICTED_ALLOW))
    return room


def test_restricted_join_with_authorising_user(restricted_room: Room) -> None:
    restricted_room.send(member(BOB, "join", join_authorised_via_users_server=ALICE))


def test_restricted_join_with_remote_user_authorised_by_mod(restricted_room: Room) -> None:
    restricted_room.send(member(CAROL, "join", join_authorised_via_users_server=MOD))


def test_restricted_join_without_authoriser_rejected(restricted_room: Room) -> None:
    restricted_room.rejects(member(BOB, "join"), "4.3.5.2")
    restricted_room.rejects(member(BOB, "join", join_authorised_via_users_server=None), "4.3.5.2")


def test_restricted_join_authoriser_must_be_joined(restricted_room: Room) -> None:
    restricted_room.rejects(member(BOB, "join", join_authorised_via_users_server=EVE), "4.3.5.2")
    restricted_room.send(member(ALICE, "leave"))
    restricted_room.rejects(member(BOB, "join", join_authorised_via_users_server=ALICE), "4.3.5.2")


def test_restricted_join_authoriser_needs_invite_level(version: str) -> None:
    room = standard_room(version, join_rule="restricted", invite=50)
    room.rejects(member(BOB, "join", join_authorised_via_users_server=ALICE), "4.3.5.2")
    room.send(member(BOB, "join", join_authorised_via_users_server=MOD))


def test_restricted_join_needs_no_authoriser_when_invited(restricted_room: Room) -> None:
    restricted_room.send(member(BOB, "invite", sender=ALICE))
    restricted_room.send(member(BOB, "join"))


def test_restricted_join_banned_user_rejected_even_with_authoriser(restricted_room: Room) -> None:
    restricted_room.send(member(BOB, "ban", sender=MOD))
    restricted_room.rejects(member(BOB, "join", join_authorised_via_users_server=MOD), "4.3.3")


def test_authoriser_key_is_ignored_in_public_rooms(room: Room) -> None:
    room.send(member(BOB, "join", join_authorised_via_users_server=EVE))


# --- rule 4.4: invites -------------------------------------------------------------------


def test_member_invites_with_default_invite_level(room: Room) -> None:
    room.send(member(BOB, "invite", sender=ALICE))
    room.send(member(BOB, "invite", sender=ALICE))  # re-inviting an invited user is fine


def test_invite_needs_invite_level(version: str) -> None:
    room = standard_room(version, invite=50)
    room.rejects(member(BOB, "invite", sender=ALICE), "4.4.5")
    room.send(member(BOB, "invite", sender=MOD))


def test_invite_sender_must_be_joined(room: Room) -> None:
    room.rejects(member(ALICE, "invite", sender=BOB), "4.4.2")
    room.send(member(BOB, "invite", sender=ALICE))
    room.rejects(member(CAROL, "invite", sender=BOB), "4.4.2")  # invited is not joined


def test_cannot_invite_joined_or_banned_user(room: Room) -> None:
    room.rejects(member(MOD, "invite", sender=ALICE), "4.4.3")
    room.send(member(BOB, "ban", sender=MOD))
    room.rejects(member(BOB, "invite", sender=ALICE), "4.4.3")
    room.rejects(member(BOB, "invite", sender=CREATOR), "4.4.3")


def test_invite_after_leave_or_knock(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.send(member(BOB, "knock"))
    room.send(member(BOB, "invite", sender=ALICE))
    room.send(member(ALICE, "leave"))
    room.send(member(ALICE, "invite", sender=MOD))


# --- rule 4.4.1: third-party invites -----------------------------------------------------

IDENTITY_SERVER = "id.example.org"
TOKEN = "abc123"


@pytest.fixture
def identity_key() -> Any:
    return generate_signing_key("0")


def third_party_invite_state(key: Any, sender: str = ALICE, *, as_list: bool = False) -> dict[str, Any]:
    public_key = encode_base64(key.verify_key.encode())
    content: dict[str, Any] = {"display_name": "b...@example.com", "key_validity_url": "https://id/isvalid"}
    if as_list:
        content["public_keys"] = [
            {"public_key": "bm90IGEga2V5", "key_validity_url": "x"},
            {"public_key": public_key},
        ]
    else:
        content["public_key"] = public_key
    return make_event("m.room.third_party_invite", sender, content, TOKEN)


def third_party_member(
    key: Any, target: str = BOB, sender: str = ALICE, **signed_overrides: Any
) -> dict[str, Any]:
    signed = sign_json({"mxid": target, "token": TOKEN}, IDENTITY_SERVER, key)
    signed.update(signed_overrides)
    return member(
        target, "invite", sender=sender, third_party_invite={"display_name": "b...", "signed": signed}
    )


def test_third_party_invite_event_needs_invite_level_not_state_default(
    version: str, identity_key: Any
) -> None:
    # Rule 6: only the invite level matters (state_default is 50 here, invite 0).
    room = standard_room(version)
    room.send(third_party_invite_state(identity_key))
    strict = standard_room(version, invite=50)
    strict.rejects(third_party_invite_state(identity_key), "6.1")
    strict.send(third_party_invite_state(identity_key, sender=MOD))


def test_third_party_invite_event_sender_must_be_joined(room: Room, identity_key: Any) -> None:
    room.rejects(third_party_invite_state(identity_key, sender=BOB), "5")


@pytest.mark.parametrize("as_list", [False, True])
def test_third_party_invite_completed(room: Room, identity_key: Any, as_list: bool) -> None:
    room.send(third_party_invite_state(identity_key, as_list=as_list))
    room.send(third_party_member(identity_key))
    room.send(member(BOB, "join"))


def test_third_party_invite_signed_by_wrong_key_rejected(room: Room, identity_key: Any) -> None:
    room.send(third_party_invite_state(identity_key))
    room.rejects(third_party_member(generate_signing_key("0")), "4.4.1.8")


def test_third_party_invite_tampered_signed_rejected(room: Room, identity_key: Any) -> None:
    room.send(third_party_invite_state(identity_key))
    event = third_party_member(identity_key)
    event["content"]["third_party_invite"]["signed"]["extra"] = "tampered"
    room.rejects(event, "4.4.1.8")


def test_third_party_invite_mxid_must_match_target(room: Room, identity_key: Any) -> None:
    room.send(third_party_invite_state(identity_key))
    room.rejects(third_party_member(identity_key, mxid=CAROL), "4.4.1.4")


def test_third_party_invite_needs_matching_token(room: Room, identity_key: Any) -> None:
    room.rejects(third_party_member(identity_key), "4.4.1.5")


def test_third_party_invite_sender_must_match(room: Room, identity_key: Any) -> None:
    room.send(third_party_invite_state(identity_key, sender=ALICE))
    room.rejects(third_party_member(identity_key, sender=MOD), "4.4.1.6")


def test_third_party_invite_banned_target_rejected(room: Room, identity_key: Any) -> None:
    room.send(third_party_invite_state(identity_key))
    room.send(member(BOB, "ban", sender=MOD))
    room.rejects(third_party_member(identity_key), "4.4.1.1")


@pytest.mark.parametrize(
    "third_party_invite, rule",
    [
        ({}, "4.4.1.2"),
        ("x", "4.4.1.2"),
        ({"signed": "x"}, "4.4.1.2"),
        ({"signed": {"token": TOKEN}}, "4.4.1.3"),
        ({"signed": {"mxid": BOB}}, "4.4.1.3"),
    ],
)
def test_third_party_invite_malformed(room: Room, third_party_invite: Any, rule: str) -> None:
    room.rejects(member(BOB, "invite", sender=ALICE, third_party_invite=third_party_invite), rule)


@pytest.mark.parametrize(
    "signatures",
    [None, "x", {}, {IDENTITY_SERVER: "x"}, {IDENTITY_SERVER: {"ed25519:0": "bm90IGEgc2ln"}}, {"other": {}}],
)
def test_third_party_invite_bad_signatures_rejected(room: Room, identity_key: Any, signatures: Any) -> None:
    room.send(third_party_invite_state(identity_key))
    room.rejects(third_party_member(identity_key, signatures=signatures), "4.4.1.8")


def test_third_party_invite_unusable_public_keys_rejected(room: Room, identity_key: Any) -> None:
    event = third_party_invite_state(identity_key)
    event["content"] = {"public_key": "!!not base64!!", "public_keys": ["x", {"public_key": 5}]}
    room.send(event)
    room.rejects(third_party_member(identity_key), "4.4.1.8")


def test_third_party_invite_unknown_key_algorithm_rejected(room: Room, identity_key: Any) -> None:
    room.send(third_party_invite_state(identity_key))
    event = third_party_member(identity_key)
    signed = event["content"]["third_party_invite"]["signed"]
    signed["signatures"][IDENTITY_SERVER] = {
        "curve25519:0": signed["signatures"][IDENTITY_SERVER]["ed25519:0"]
    }
    room.rejects(event, "4.4.1.8")


def test_third_party_invite_skips_sender_membership_check(room: Room, identity_key: Any) -> None:
    # Spec subtlety: rule 4.4.1 allows before rule 4.4.2, so the user who sent the
    # m.room.third_party_invite may complete it even after leaving.
    room.send(third_party_invite_state(identity_key))
    room.send(member(ALICE, "leave"))
    room.send(third_party_member(identity_key))


# --- rule 4.5: leave, kick, unban ------------------------------------------------------


def test_self_leave_when_joined(room: Room) -> None:
    room.send(member(ALICE, "leave"))
    room.rejects(message(ALICE), "5")


def test_reject_invite_and_retract_knock(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.send(member(BOB, "invite", sender=ALICE))
    room.send(member(BOB, "leave"))
    room.send(member(CAROL, "knock"))
    room.send(member(CAROL, "leave"))


def test_self_leave_when_not_in_room_rejected(room: Room) -> None:
    room.rejects(member(BOB, "leave"), "4.5.1")
    room.send(member(ALICE, "leave"))
    room.rejects(member(ALICE, "leave"), "4.5.1")


def test_banned_user_cannot_leave(room: Room) -> None:
    room.send(member(ALICE, "ban", sender=MOD))
    room.rejects(member(ALICE, "leave"), "4.5.1")


def test_mod_kicks_member(room: Room) -> None:
    room.send(member(ALICE, "leave", sender=MOD))
    assert membership(ALICE, room.state) == "leave"


def test_member_cannot_kick(room: Room) -> None:
    room.send(member(BOB, "join"))
    room.rejects(member(BOB, "leave", sender=ALICE), "4.5.5")


def test_kick_needs_kick_level(version: str) -> None:
    room = standard_room(version, kick=75)
    room.rejects(member(ALICE, "leave", sender=MOD), "4.5.5")
    room.send(member(ALICE, "leave", sender=CREATOR))


def test_cannot_kick_equal_or_higher(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE, BOB), users={CREATOR: 100, MOD: 50, BOB: 50})
    room.rejects(member(BOB, "leave", sender=MOD), "4.5.5")  # equal
    room.rejects(member(CREATOR, "leave", sender=MOD), "4.5.5")  # higher


def test_kick_sender_must_be_joined(room: Room) -> None:
    room.send(member(MOD, "leave"))
    room.rejects(member(ALICE, "leave", sender=MOD), "4.5.2")


def test_kick_revokes_invite(room: Room) -> None:
    room.send(member(BOB, "invite", sender=ALICE))
    room.send(member(BOB, "leave", sender=MOD))


def test_kick_of_user_not_in_room_is_allowed_by_the_rules(room: Room) -> None:
    # The rules do not look at the target's membership for kicks; refusing "kick a user who
    # is not in the room" is a client-API decision (and being stricter here would reject
    # events other servers accept).
    room.check(member(BOB, "leave", sender=MOD))


def test_unban_needs_ban_and_kick_levels(version: str) -> None:
    room = standard_room(version, users={CREATOR: 100, MOD: 60}, kick=50, ban=70)
    room.send(member(BOB, "ban", sender=CREATOR))
    room.send(member(ALICE, "leave", sender=MOD))  # a kick: 60 >= kick 50
    room.rejects(member(BOB, "leave", sender=MOD), "4.5.3")  # unban: 60 < ban 70
    room.send(member(BOB, "leave", sender=CREATOR))
    assert membership(BOB, room.state) == "leave"
    room.send(member(BOB, "join"))


def test_unban_needs_kick_level_too(version: str) -> None:
    room = standard_room(version, users={CREATOR: 100, MOD: 60}, kick=70, ban=50)
    room.send(member(BOB, "ban", sender=MOD))
    room.rejects(member(BOB, "leave", sender=MOD), "4.5.5")


def test_unban_of_higher_user_rejected(version: str) -> None:
    room = standard_room(version)
    room.send(power_levels(**{**STANDARD_PL, "users": {CREATOR: 100, MOD: 50, BOB: 70}}))
    room.send(member(BOB, "ban", sender=CREATOR))
    room.rejects(member(BOB, "leave", sender=MOD), "4.5.5")


# --- rule 4.6: bans ------------------------------------------------------------------------


def test_mod_bans_member_and_absent_user(room: Room) -> None:
    room.send(member(ALICE, "ban", sender=MOD))
    room.send(member(EVE, "ban", sender=MOD))  # pre-emptive ban
    room.rejects(message(ALICE), "5")


def test_member_cannot_ban(room: Room) -> None:
    room.rejects(member(BOB, "ban", sender=ALICE), "4.6.3")


def test_cannot_ban_equal_or_higher(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE, BOB), users={CREATOR: 100, MOD: 50, BOB: 50})
    room.rejects(member(BOB, "ban", sender=MOD), "4.6.3")
    room.rejects(member(CREATOR, "ban", sender=MOD), "4.6.3")
    room.rejects(member(MOD, "ban", sender=MOD), "4.6.3")  # nor oneself


def test_ban_sender_must_be_joined(room: Room) -> None:
    room.send(member(MOD, "leave"))
    room.rejects(member(ALICE, "ban", sender=MOD), "4.6.1")


def test_ban_needs_ban_level(version: str) -> None:
    room = standard_room(version, ban=75)
    room.rejects(member(ALICE, "ban", sender=MOD), "4.6.3")
    room.send(member(ALICE, "ban", sender=CREATOR))


# --- rule 4.7: knocks ----------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["knock", "knock_restricted"])
def test_knock_flow(version: str, rule: str) -> None:
    room = standard_room(version, join_rule=rule)
    room.send(member(BOB, "knock"))
    room.rejects(member(BOB, "join"), "4.3.4" if rule == "knock" else "4.3.5.2")
    room.send(member(BOB, "invite", sender=MOD))  # accepting the knock
    room.send(member(BOB, "join"))
    room.send(message(BOB))


@pytest.mark.parametrize("rule", ["public", "invite", "restricted", "private"])
def test_knock_needs_knock_join_rule(version: str, rule: str) -> None:
    room = standard_room(version, join_rule=rule, members=())
    room.rejects(member(BOB, "knock"), "4.7.1")


def test_knock_without_join_rules_event_rejected(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.rejects(member(BOB, "knock"), "4.7.1")


def test_knock_on_behalf_of_someone_else_rejected(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.rejects(member(BOB, "knock", sender=ALICE), "4.7.2")


def test_knock_when_joined_invited_or_banned_rejected(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.rejects(member(ALICE, "knock"), "4.7.4")
    room.send(member(BOB, "invite", sender=ALICE))
    room.rejects(member(BOB, "knock"), "4.7.4")
    room.send(member(EVE, "ban", sender=MOD))
    room.rejects(member(EVE, "knock"), "4.7.4")


def test_knock_again_after_leaving_or_knocking(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.send(member(ALICE, "leave"))
    room.send(member(ALICE, "knock"))
    room.send(member(ALICE, "knock"))


# --- rules 5-8: other events ---------------------------------------------------------------


def test_member_can_send_message(room: Room) -> None:
    room.send(message(ALICE))
    room.send(message(CREATOR))


@pytest.mark.parametrize("setup", ["absent", "invited", "left", "banned", "knocked"])
def test_non_joined_user_cannot_send(version: str, setup: str) -> None:
    room = standard_room(version, join_rule="knock")
    if setup == "invited":
        room.send(member(BOB, "invite", sender=ALICE))
    elif setup == "left":
        room.send(member(BOB, "invite", sender=ALICE))
        room.send(member(BOB, "join"))
        room.send(member(BOB, "leave"))
    elif setup == "banned":
        room.send(member(BOB, "ban", sender=MOD))
    elif setup == "knocked":
        room.send(member(BOB, "knock"))
    room.rejects(message(BOB), "5")
    room.rejects(state("m.room.topic", BOB, {"topic": "x"}), "5")


def test_member_cannot_set_room_name_but_mod_and_admin_can(room: Room) -> None:
    room.rejects(state("m.room.name", ALICE, {"name": "x"}), "7")
    room.send(state("m.room.name", MOD, {"name": "x"}))
    room.send(state("m.room.name", CREATOR, {"name": "y"}))


def test_state_default_applies_to_unlisted_state(room: Room) -> None:
    room.rejects(state("m.room.topic", ALICE, {"topic": "x"}), "7")
    room.send(state("m.room.topic", MOD, {"topic": "x"}))
    room.rejects(state("m.room.power_levels", MOD, STANDARD_PL), "7")  # events map: 100


def test_events_default_and_events_map_for_messages(version: str) -> None:
    room = standard_room(version, events_default=10, events={"m.reaction": 0, "m.room.encrypted": 60})
    room.rejects(message(ALICE), "7")
    room.send(make_event("m.reaction", ALICE, {}))
    room.send(message(MOD))
    room.rejects(make_event("m.room.encrypted", MOD, {}), "7")


def test_negative_levels(version: str) -> None:
    room = standard_room(version, users_default=-10, events_default=-5)
    room.rejects(message(ALICE), "7")
    room.send(member(BOB, "join"))


def test_state_key_of_another_user_forbidden(version: str) -> None:
    room = standard_room(version, state_default=0)
    room.rejects(state("m.custom", ALICE, {}, state_key=BOB), "8")
    room.rejects(state("m.custom", CREATOR, {}, state_key=ALICE), "8")  # power does not help
    room.rejects(state("m.custom", ALICE, {}, state_key=f"{ALICE}_x"), "8")
    room.send(state("m.custom", ALICE, {}, state_key=ALICE))
    room.send(state("m.custom", ALICE, {}, state_key="not_a_user"))
    room.send(state("m.custom", ALICE, {}, state_key=f"x{BOB}"))


def test_rule_7_is_checked_before_rule_8(room: Room) -> None:
    room.rejects(state("m.custom", ALICE, {}, state_key=BOB), "7")


def test_redaction_events_are_authorised_like_messages(version: str) -> None:
    room = standard_room(version)
    redaction = make_event("m.room.redaction", ALICE, {"redacts": "$x"}, redacts="$x")
    room.send(redaction)  # rule 10, even though ALICE is below the redact level
    room.rejects(make_event("m.room.redaction", BOB, {"redacts": "$x"}), "5")
    strict = standard_room(version, events={"m.room.redaction": 50})
    strict.rejects(redaction, "7")


# --- rule 9: power levels -------------------------------------------------------------------


def test_creator_sets_first_power_levels(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(power_levels(**default_power_levels_content(CREATOR)))


def test_non_creator_cannot_set_first_power_levels(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(join_rules("public"))
    room.send(member(ALICE, "join"))
    room.send(message(ALICE))  # events_default 0 without a power levels event
    room.rejects(power_levels(sender=ALICE, users={ALICE: 100}), "7")  # state_default 50
    room.rejects(state("m.room.name", ALICE, {"name": "x"}), "7")


def test_first_power_levels_may_hold_any_values(version: str) -> None:
    # Rule 9.4: nothing to compare with, so the creator may even give others more than 100.
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(power_levels(users={CREATOR: 100, ALICE: 1000}, ban=500))


@pytest.mark.parametrize(
    "key", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
)
@pytest.mark.parametrize("value", ["50", "0", 50.0, 1.5, True, None, [], {}, 2**53, -(2**53)])
def test_scalar_levels_must_be_integers(version: str, key: str, value: Any) -> None:
    # v10 removed string power levels; v11 inherits that (rule 9.1).
    room = standard_room(version)
    room.rejects(power_levels(**{**STANDARD_PL, key: value}), "9.1")
    fresh = Room(version)
    fresh.send(member(CREATOR, "join"))
    fresh.rejects(power_levels(**{key: value}), "9.1")  # validated even for the first event


@pytest.mark.parametrize("key", ["events", "notifications"])
@pytest.mark.parametrize("value", [{"m.room.name": "50"}, {"room": True}, {"x": 1.0}, [], "x", None])
def test_event_and_notification_levels_must_be_integers(version: str, key: str, value: Any) -> None:
    room = standard_room(version)
    room.rejects(power_levels(**{**STANDARD_PL, key: value}), "9.2")


@pytest.mark.parametrize(
    "users",
    [
        {CREATOR: "100"},
        {CREATOR: 100, ALICE: "0"},
        {CREATOR: 100, "alice": 0},
        {CREATOR: 100, "@alice": 0},
        {CREATOR: 100, "@:example.org": 0},
        {CREATOR: 100, "@alice:": 0},
        {CREATOR: 100, ALICE: False},
        [CREATOR],
        None,
    ],
)
def test_users_must_map_user_ids_to_integers(version: str, users: Any) -> None:
    room = standard_room(version)
    room.rejects(power_levels(**{**STANDARD_PL, "users": users}), "9.3")


def test_boundary_power_levels_are_integers(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(power_levels(users={CREATOR: MAX_POWER_LEVEL, ALICE: MIN_POWER_LEVEL}, ban=MAX_POWER_LEVEL))


def test_power_levels_without_users_key_allowed(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(power_levels(users_default=100))


@pytest.fixture
def pl_room(version: str) -> Room:
    """MOD (50) may send power levels; ALICE is at 10; BOB (another mod at 50) is joined."""
    return standard_room(
        version,
        members=(MOD, ALICE, BOB),
        users={CREATOR: 100, MOD: 50, ALICE: 10, BOB: 50},
        events={"m.room.power_levels": 50, "m.room.tombstone": 100, "m.room.name": 50},
        notifications={"room": 100},
        kick=100,
    )


def changed(room: Room, sender: str = MOD, **changes: Any) -> dict[str, Any]:
    """A power levels event from `sender` with `changes` applied to the current content:
    `users` / `events` / `notifications` values are merged (None deletes an entry), other keys
    replace (None deletes the key)."""
    content = room.pl_content
    for key, value in changes.items():
        if key in ("users", "events", "notifications"):
            merged = content.setdefault(key, {})
            for name, level in value.items():
                if level is None:
                    merged.pop(name, None)
                else:
                    merged[name] = level
        elif value is None:
            content.pop(key, None)
        else:
            content[key] = value
    return power_levels(sender=sender, **content)


def test_unchanged_power_levels_allowed(pl_room: Room) -> None:
    pl_room.send(changed(pl_room))  # kick 100, tombstone 100, CREATOR 100 untouched


def test_cannot_raise_self_above_own_level(pl_room: Room) -> None:
    pl_room.rejects(changed(pl_room, users={MOD: 51}), "9.9.1")


def test_cannot_raise_others_above_own_level(pl_room: Room) -> None:
    pl_room.rejects(changed(pl_room, users={ALICE: 51}), "9.9.1")
    pl_room.rejects(changed(pl_room, users={CAROL: 51}), "9.9.1")


def test_can_raise_others_to_own_level(pl_room: Room) -> None:
    pl_room.send(changed(pl_room, users={ALICE: 50, CAROL: 50}))


def test_cannot_change_users_at_or_above_own_level(pl_room: Room) -> None:
    pl_room.rejects(changed(pl_room, users={CREATOR: 0}), "9.8.1")  # above
    pl_room.rejects(changed(pl_room, users={CREATOR: None}), "9.8.1")  # removal
    pl_room.rejects(changed(pl_room, users={BOB: 0}), "9.8.1")  # equal
    pl_room.rejects(changed(pl_room, users={BOB: None}), "9.8.1")


def test_can_change_and_remove_users_below_own_level(pl_room: Room) -> None:
    pl_room.send(changed(pl_room, users={ALICE: 0}))
    pl_room.send(changed(pl_room, users={ALICE: None}))


def test_can_demote_self(pl_room: Room) -> None:
    pl_room.send(changed(pl_room, users={MOD: 0}))
    pl_room.rejects(changed(pl_room, users={MOD: 50}), "7")  # and cannot undo it


def test_scalar_levels_above_own_level(pl_room: Room) -> None:
    pl_room.rejects(changed(pl_room, ban=51), "9.5.2")
    pl_room.rejects(changed(pl_room, kick=50), "9.5.1")  # old value 100 > 50
    pl_room.rejects(changed(pl_room, kick=None), "9.5.1")  # removing it is a change too
    pl_room.rejects(changed(pl_room, users_default=51), "9.5.2")
    pl_room.send(changed(pl_room, ban=50, redact=0, state_default=40, invite=50, users_default=5))


def test_adding_scalar_key_above_own_level(version: str) -> None:
    room = standard_room(version, events={"m.room.power_levels": 50})
    content = room.pl_content
    del content["redact"]
    room.send(power_levels(sender=CREATOR, **content))
    room.rejects(changed(room, redact=60), "9.5.2")
    room.send(changed(room, redact=40))


def test_event_levels_above_own_level(pl_room: Room) -> None:
    pl_room.send(changed(pl_room, events={"m.room.topic": 50}))
    pl_room.rejects(changed(pl_room, events={"m.room.topic": 51}), "9.7.1")
    pl_room.rejects(changed(pl_room, events={"m.room.tombstone": 50}), "9.6.1")
    pl_room.rejects(changed(pl_room, events={"m.room.tombstone": None}), "9.6.1")
    pl_room.send(changed(pl_room, events={"m.room.name": 0}))
    pl_room.send(changed(pl_room, events={"m.room.name": None}))


def test_notification_levels_above_own_level(pl_room: Room) -> None:
    pl_room.rejects(changed(pl_room, notifications={"room": 50}), "9.6.1")
    pl_room.rejects(changed(pl_room, notifications={"x": 60}), "9.7.1")
    pl_room.send(changed(pl_room, notifications={"x": 50}))


def test_admin_can_change_anything_up_to_own_level(pl_room: Room) -> None:
    pl_room.send(
        changed(pl_room, CREATOR, users={MOD: 0, BOB: 100, ALICE: None}, kick=0, events={"m.x": 100})
    )
    pl_room.rejects(changed(pl_room, CREATOR, users={ALICE: 101}), "9.9.1")


def test_two_admins_cannot_demote_each_other(version: str) -> None:
    room = standard_room(version, users={CREATOR: 100, MOD: 100})
    room.rejects(changed(room, MOD, users={CREATOR: 50}), "9.8.1")
    room.rejects(changed(room, CREATOR, users={MOD: 50}), "9.8.1")


def test_malformed_old_power_level_values_are_not_compared(version: str) -> None:
    # Unreachable through these rules (9.1 rejects such values); documented behaviour for
    # unchecked state: the malformed old value is ignored, the new one is still checked.
    room = standard_room(version, events={"m.room.power_levels": 50})
    room.state[PL] = power_levels(**{**room.pl_content, "ban": "100"})
    room.check(changed(room, ban=40))
    room.rejects(changed(room, ban=60), "9.5.2")


# --- power level helpers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, valid",
    [(0, True), (-1, True), (100, True), (MAX_POWER_LEVEL, True), (MIN_POWER_LEVEL, True)]
    + [(MAX_POWER_LEVEL + 1, False), (MIN_POWER_LEVEL - 1, False), (True, False), (False, False)]
    + [("50", False), (50.0, False), (None, False), ([], False)],
)
def test_is_valid_power_level(value: Any, valid: bool) -> None:
    assert is_valid_power_level(value) is valid


def test_user_power_level_without_power_levels_event(version: str) -> None:
    room = Room(version)
    assert user_power_level(CREATOR, room.state) == 100  # version read from the create event
    assert user_power_level(CREATOR, room.state, version) == 100
    assert user_power_level(ALICE, room.state, version) == 0
    assert user_power_level(ALICE, {}, version) == 0


def test_user_power_level_with_power_levels_event(room: Room) -> None:
    assert user_power_level(CREATOR, room.state) == 100
    assert user_power_level(MOD, room.state) == 50
    assert user_power_level(ALICE, room.state) == 0
    room.send(power_levels(users={CREATOR: 100}, users_default=7))
    assert user_power_level(ALICE, room.state) == 7
    assert user_power_level(MOD, room.state) == 7  # the creator bonus applies only without PL


def test_user_power_level_ignores_malformed_values() -> None:
    pl_state = {PL: power_levels(users={ALICE: "100", BOB: True}, users_default="5")}
    assert user_power_level(ALICE, pl_state) == 0
    assert user_power_level(BOB, pl_state) == 0


def test_room_creator() -> None:
    assert room_creator(create_event("10", creator=ALICE)) == ALICE
    assert room_creator(create_event("11", creator=ALICE)) == CREATOR
    assert room_creator(create_event("11", creator=ALICE), "10") == ALICE
    assert room_creator(create_event("10", creator=ALICE), "11") == CREATOR
    legacy = make_event("m.room.create", CREATOR, {"creator": ALICE}, "")  # no room_version: v1
    assert room_creator(legacy) == ALICE
    assert room_creator(make_event("m.room.create", CREATOR, {"creator": 5}, ""), "10") is None


def test_event_power_level() -> None:
    content = {"events": {"m.room.name": 75, "m.bad": "10"}, "state_default": 40, "events_default": 5}
    assert event_power_level("m.room.name", True, content) == 75
    assert event_power_level("m.room.name", False, content) == 75  # the map ignores statefulness
    assert event_power_level("m.room.topic", True, content) == 40
    assert event_power_level("m.room.message", False, content) == 5
    assert event_power_level("m.bad", True, content) == 40  # malformed entry: default applies
    assert event_power_level("m.room.topic", True, {}) == 50
    assert event_power_level("m.room.message", False, {}) == 0
    assert event_power_level("m.room.topic", True, None) == 50  # no power levels event: still 50
    assert event_power_level("m.room.message", False, None) == 0


def test_named_power_level_defaults() -> None:
    assert {name: named_power_level(name, None) for name in DEFAULT_LEVELS} == {
        "users_default": 0,
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
    }
    assert named_power_level("ban", {"ban": 10}) == 10
    assert named_power_level("ban", {"ban": "10"}) == 50
    with pytest.raises(KeyError):
        named_power_level("users", {})


def test_default_power_levels_content() -> None:
    content = default_power_levels_content(CREATOR)
    assert content == {
        "users": {CREATOR: 100},
        "users_default": 0,
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
    }
    content["events"]["m.room.name"] = 0
    content["users"][ALICE] = 1
    assert default_power_levels_content(CREATOR)["events"]["m.room.name"] == 50  # fresh copies
    assert ALICE not in default_power_levels_content(CREATOR)["users"]


def test_default_power_levels_room_lifecycle(version: str) -> None:
    """A room set up the way /createRoom does it, then used by a member and the creator."""
    room = Room(version)
    room.send(member(CREATOR, "join"))
    room.send(power_levels(**default_power_levels_content(CREATOR)))
    room.send(join_rules("invite"))
    room.send(state("m.room.history_visibility", CREATOR, {"history_visibility": "shared"}))
    room.send(state("m.room.guest_access", CREATOR, {"guest_access": "can_join"}))
    room.send(state("m.room.name", CREATOR, {"name": "Room"}))
    room.send(member(ALICE, "invite", sender=CREATOR))
    room.send(member(ALICE, "join"))
    room.send(member(BOB, "invite", sender=ALICE))  # invite 0: members may invite
    room.send(message(ALICE))
    for event_type in ("m.room.name", "m.room.topic", "m.room.encryption", "m.room.tombstone"):
        room.rejects(state(event_type, ALICE, {}), "7")
    room.rejects(member(BOB, "leave", sender=ALICE), "4.5.5")
    room.send(state("m.room.encryption", CREATOR, {"algorithm": "m.megolm.v1.aes-sha2"}))
    room.send(member(BOB, "ban", sender=CREATOR))


# --- can_do ----------------------------------------------------------------------------------


def test_can_do_levels(room: Room) -> None:
    state_ = room.state
    for action in ("kick", "ban", "redact"):
        assert can_do(CREATOR, action, state_)
        assert can_do(MOD, action, state_)
        assert not can_do(ALICE, action, state_)
    assert can_do(ALICE, "invite", state_)
    assert can_do(ALICE, "event", state_, event_type="m.room.message")
    assert not can_do(ALICE, "state", state_, event_type="m.room.name")
    assert can_do(MOD, "state", state_, event_type="m.room.name")
    assert not can_do(MOD, "state", state_, event_type="m.room.power_levels")
    assert can_do(CREATOR, "state", state_, event_type="m.room.power_levels")


def test_can_do_requires_joined(room: Room) -> None:
    room.send(member(MOD, "leave"))
    assert not can_do(MOD, "kick", room.state)
    assert not can_do(BOB, "invite", room.state)
    assert not can_do(BOB, "event", room.state, event_type="m.room.message")


def test_can_do_target(version: str) -> None:
    room = standard_room(version, users={CREATOR: 100, MOD: 60}, ban=70)
    assert can_do(MOD, "kick", room.state, target=ALICE)
    assert not can_do(MOD, "kick", room.state, target=CREATOR)
    assert not can_do(MOD, "kick", room.state, target=MOD)
    assert not can_do(MOD, "ban", room.state, target=ALICE)
    room.send(member(BOB, "ban", sender=CREATOR))
    assert not can_do(MOD, "kick", room.state, target=BOB)  # unban needs ban level
    assert can_do(CREATOR, "kick", room.state, target=BOB)


def test_can_do_needs_event_type_for_events(room: Room) -> None:
    with pytest.raises(ValueError, match="event_type"):
        can_do(ALICE, "state", room.state)
    with pytest.raises(ValueError, match="event_type"):
        can_do(ALICE, "event", room.state)


def test_can_do_without_power_levels_event(version: str) -> None:
    room = Room(version)
    room.send(member(CREATOR, "join"))
    assert can_do(CREATOR, "state", room.state, event_type="m.room.power_levels")
    assert can_do(CREATOR, "ban", room.state)


# --- auth events selection ----------------------------------------------------------------


def test_auth_types_for_create() -> None:
    assert auth_types_for_event(create_event("11")) == []


def test_auth_types_for_message() -> None:
    assert auth_types_for_event(message(ALICE)) == [CREATE, PL, ("m.room.member", ALICE)]
    assert auth_types_for_event(state("m.room.name", ALICE)) == [CREATE, PL, ("m.room.member", ALICE)]


def test_auth_types_for_joins() -> None:
    assert auth_types_for_event(member(ALICE, "join")) == [CREATE, PL, ("m.room.member", ALICE), JR]
    restricted = member(ALICE, "join", join_authorised_via_users_server=MOD)
    assert auth_types_for_event(restricted) == [
        CREATE,
        PL,
        ("m.room.member", ALICE),
        JR,
        ("m.room.member", MOD),
    ]


def test_auth_types_for_invite_kick_ban_knock() -> None:
    target_and_sender = [CREATE, PL, ("m.room.member", MOD), ("m.room.member", ALICE)]
    assert auth_types_for_event(member(ALICE, "invite", sender=MOD)) == [*target_and_sender, JR]
    assert auth_types_for_event(member(ALICE, "leave", sender=MOD)) == target_and_sender
    assert auth_types_for_event(member(ALICE, "ban", sender=MOD)) == target_and_sender
    assert auth_types_for_event(member(ALICE, "leave")) == [CREATE, PL, ("m.room.member", ALICE)]
    assert auth_types_for_event(member(ALICE, "knock")) == [CREATE, PL, ("m.room.member", ALICE), JR]


def test_auth_types_for_third_party_invite(identity_key: Any) -> None:
    event = third_party_member(identity_key)
    assert auth_types_for_event(event) == [
        CREATE,
        PL,
        ("m.room.member", ALICE),
        ("m.room.member", BOB),
        JR,
        ("m.room.third_party_invite", TOKEN),
    ]


def test_auth_types_for_malformed_member_event() -> None:
    event = make_event("m.room.member", ALICE, "not an object")
    assert auth_types_for_event(event) == [CREATE, PL, ("m.room.member", ALICE)]


def test_auth_state_for_event_selects_present_entries(room: Room) -> None:
    selected = auth_state_for_event(member(BOB, "join"), room.state)
    assert set(selected) == {CREATE, PL, JR}
    check_auth(member(BOB, "join"), selected, room.version)
    selected = auth_state_for_event(member(ALICE, "leave", sender=MOD), room.state)
    assert set(selected) == {CREATE, PL, ("m.room.member", MOD), ("m.room.member", ALICE)}


def test_creator_join_against_its_own_auth_events(version: str) -> None:
    room = Room(version)
    event = {**member(CREATOR, "join"), "prev_events": [room.state[CREATE]["event_id"]]}
    check_auth(event, auth_state_for_event(event, room.state), version)


def test_servers_required_to_sign() -> None:
    assert servers_required_to_sign(message(ALICE)) == {"example.org"}
    assert servers_required_to_sign(member(CAROL, "join", join_authorised_via_users_server=ALICE)) == {
        "other.org",
        "example.org",
    }
    assert servers_required_to_sign(make_event("m.custom", "nobody", {})) == set()


# --- redactions ---------------------------------------------------------------------------


def redaction(version: str, sender: str, target: str) -> dict[str, Any]:
    if version == "11":
        return make_event("m.room.redaction", sender, {"redacts": target})
    return make_event("m.room.redaction", sender, {}, redacts=target)


def test_redaction_target_placement() -> None:
    v10 = make_event("m.room.redaction", ALICE, {"redacts": "$content"}, redacts="$top")
    assert redaction_target(v10, "10") == "$top"
    assert redaction_target(v10, "11") == "$content"
    assert redaction_target(make_event("m.room.redaction", ALICE, {}), "11") is None
    assert redaction_target(make_event("m.room.redaction", ALICE, {"redacts": 5}), "11") is None
    with pytest.raises(UnsupportedRoomVersion):
        redaction_target(v10, "9")


def test_redaction_allowed(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE, BOB, CAROL))
    by_alice = room.send(message(ALICE))
    by_carol = room.send(message(CAROL))
    # Redact level (50): any event.
    assert redaction_allowed(redaction(version, MOD, by_carol["event_id"]), by_carol, room.state, version)
    # Same sender, hence same server.
    assert redaction_allowed(redaction(version, CAROL, by_carol["event_id"]), by_carol, room.state, version)
    # Different server, below the redact level: either way round.
    assert not redaction_allowed(
        redaction(version, CAROL, by_alice["event_id"]), by_alice, room.state, version
    )
    assert not redaction_allowed(
        redaction(version, ALICE, by_carol["event_id"]), by_carol, room.state, version
    )
    # Same server, other user: the spec trusts the server; the client API must not (can_do).
    assert redaction_allowed(redaction(version, BOB, by_alice["event_id"]), by_alice, room.state, version)
    assert not can_do(BOB, "redact", room.state)


def test_redaction_allowed_needs_matching_target_and_room(version: str) -> None:
    room = standard_room(version)
    original = room.send(message(ALICE))
    assert not redaction_allowed(redaction(version, MOD, "$other"), original, room.state, version)
    wrong_place = redaction("11" if version == "10" else "10", MOD, original["event_id"])
    assert not redaction_allowed(wrong_place, original, room.state, version)
    elsewhere = {**redaction(version, MOD, original["event_id"]), "room_id": "!elsewhere:example.org"}
    assert not redaction_allowed(elsewhere, original, room.state, version)


def test_redaction_allowed_follows_redact_level(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE, CAROL), redact=0)
    original = room.send(message(ALICE))
    assert redaction_allowed(redaction(version, CAROL, original["event_id"]), original, room.state, version)
    assert can_do(CAROL, "redact", room.state)


# --- property tests ---------------------------------------------------------------------------

if not HAVE_HYPOTHESIS:  # pragma: no cover

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_property_tests_need_hypothesis() -> None:
        pass

else:
    PROPERTY_SETTINGS = settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    levels = st.integers(min_value=-20, max_value=120) | st.integers(
        min_value=MIN_POWER_LEVEL, max_value=MAX_POWER_LEVEL
    )
    small_levels = st.integers(min_value=-5, max_value=105)
    plain_event_types = st.sampled_from(
        [
            "m.room.message",
            "m.room.name",
            "m.room.topic",
            "m.reaction",
            "m.room.redaction",
            "m.room.tombstone",
        ]
    ) | st.text(alphabet="abcxyz.", min_size=1, max_size=12).filter(
        lambda t: (
            t not in ("m.room.member", "m.room.create", "m.room.power_levels", "m.room.third_party_invite")
        )
    )

    def joined_state(
        version: str, pl_content: dict[str, Any], *users: str
    ) -> dict[tuple[str, str], dict[str, Any]]:
        state_ = {CREATE: create_event(version), PL: power_levels(**pl_content)}
        for user in (CREATOR, *users):
            state_[("m.room.member", user)] = member(user, "join")
        return state_

    def allowed(event: dict[str, Any], state_: Any, version: str) -> bool:
        try:
            check_auth(event, state_, version)
        except AuthError:
            return False
        return True

    @pytest.mark.parametrize("version", VERSIONS)
    @PROPERTY_SETTINGS
    @given(
        event_type=plain_event_types, is_state=st.booleans(), level=levels, required=levels, default=levels
    )
    def test_property_event_allowed_iff_level_reaches_required(
        version: str, event_type: str, is_state: bool, level: int, required: int, default: int
    ) -> None:
        """An event from a joined user is refused exactly when their level is below the
        event's required level (rule 7); listed types use `events`, others the default."""
        listed = {"m.room.name", "m.room.message", "m.room.redaction"}
        events = {t: required for t in listed}
        default_key = "state_default" if is_state else "events_default"
        pl_content = {"users": {CREATOR: 100, ALICE: level}, "events": events, default_key: default}
        event = make_event(event_type, ALICE, {}, "" if is_state else None)
        expected_required = required if event_type in listed else default
        assert allowed(event, joined_state(version, pl_content, ALICE), version) == (
            level >= expected_required
        )
        assert can_do(
            ALICE,
            "state" if is_state else "event",
            joined_state(version, pl_content, ALICE),
            event_type=event_type,
        ) == (level >= expected_required)

    target_memberships = st.sampled_from([None, "join", "invite", "leave", "ban", "knock"])

    @pytest.mark.parametrize("version", VERSIONS)
    @PROPERTY_SETTINGS
    @given(
        action=st.sampled_from(["kick", "ban"]),
        sender_level=small_levels,
        target_level=small_levels,
        kick=small_levels,
        ban=small_levels,
        target_membership=target_memberships,
    )
    def test_property_kick_and_ban(
        version: str,
        action: str,
        sender_level: int,
        target_level: int,
        kick: int,
        ban: int,
        target_membership: str | None,
    ) -> None:
        """Kicks and bans follow rules 4.5.3-4.5.5 and 4.6.2-4.6.3, and `can_do` agrees."""
        pl_content = {"users": {CREATOR: 100, MOD: sender_level, BOB: target_level}, "kick": kick, "ban": ban}
        state_ = joined_state(version, pl_content, MOD)
        if target_membership is not None:
            state_[("m.room.member", BOB)] = member(BOB, target_membership, sender=CREATOR)
        event = member(BOB, "leave" if action == "kick" else "ban", sender=MOD)
        if action == "ban":
            expected = sender_level >= ban and target_level < sender_level
        else:
            unban_blocked = target_membership == "ban" and sender_level < ban
            expected = not unban_blocked and sender_level >= kick and target_level < sender_level
        assert allowed(event, state_, version) == expected
        assert can_do(MOD, "kick" if action == "kick" else "ban", state_, target=BOB) == expected

    pool = st.sampled_from([CREATOR, MOD, ALICE, BOB, CAROL])
    users_maps = st.dictionaries(pool, small_levels, max_size=5)

    @pytest.mark.parametrize("version", VERSIONS)
    @PROPERTY_SETTINGS
    @given(old_users=users_maps, new_users=users_maps, sender=pool)
    def test_property_power_level_user_changes(
        version: str, old_users: dict[str, int], new_users: dict[str, int], sender: str
    ) -> None:
        """A users change is allowed iff every changed entry other than the sender's own was
        below the sender's level (9.8) and every new value is at most it (9.9)."""
        base = {"events": {"m.room.power_levels": MIN_POWER_LEVEL}, "users_default": 0}
        state_ = joined_state(version, {**base, "users": old_users}, sender)
        sender_level = old_users.get(sender, 0)
        expected = True
        for user in set(old_users) | set(new_users):
            if old_users.get(user) == new_users.get(user):
                continue
            if user != sender and user in old_users and old_users[user] >= sender_level:
                expected = False
            if user in new_users and new_users[user] > sender_level:
                expected = False
        event = power_levels(sender=sender, **base, users=new_users)
        assert allowed(event, state_, version) == expected

    @pytest.mark.parametrize("version", VERSIONS)
    @PROPERTY_SETTINGS
    @given(
        sender_level=small_levels,
        old=st.one_of(st.none(), small_levels),
        new=st.one_of(st.none(), small_levels),
    )
    def test_property_power_level_scalar_changes(
        version: str, sender_level: int, old: int | None, new: int | None
    ) -> None:
        """Rule 9.5: a changed `ban` is allowed iff neither present value exceeds the sender's level."""
        base = {"events": {"m.room.power_levels": MIN_POWER_LEVEL}, "users": {ALICE: sender_level}}
        old_content = {**base, **({} if old is None else {"ban": old})}
        new_content = {**base, **({} if new is None else {"ban": new})}
        expected = old == new or (
            (old is None or old <= sender_level) and (new is None or new <= sender_level)
        )
        event = power_levels(sender=ALICE, **new_content)
        assert allowed(event, joined_state(version, old_content, ALICE), version) == expected

    json_scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**60), 2**60)
        | st.floats(allow_nan=False)
        | st.text(max_size=8)
    )
    interesting_strings = st.sampled_from(
        [CREATOR, MOD, ALICE, BOB, CAROL, "@", "", "join", "invite", "leave", "ban", "knock", TOKEN, "$x"]
    )
    json_values = st.recursive(
        json_scalars | interesting_strings,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "membership",
                        "join_authorised_via_users_server",
                        "third_party_invite",
                        "signed",
                        "mxid",
                        "token",
                        "signatures",
                        "users",
                        "events",
                        "notifications",
                        "ban",
                        "kick",
                        "users_default",
                        "redacts",
                    ]
                )
                | st.text(max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
    event_types = st.sampled_from(
        [
            "m.room.member",
            "m.room.create",
            "m.room.power_levels",
            "m.room.third_party_invite",
            "m.room.message",
        ]
    )

    @pytest.mark.parametrize("version", VERSIONS)
    @settings(max_examples=300, deadline=None)
    @given(
        event_type=event_types,
        sender=interesting_strings | st.text(max_size=5) | st.none(),
        state_key=st.none() | interesting_strings,
        content=json_values,
        join_rule=st.sampled_from(["public", "invite", "knock", "restricted", "knock_restricted"]),
    )
    def test_property_arbitrary_events_only_raise_auth_error(
        version: str, event_type: str, sender: Any, state_key: Any, content: Any, join_rule: str
    ) -> None:
        """Whatever the event, check_auth returns or raises AuthError, leaves its inputs alone,
        and decides the same against the full state as against the auth events selection."""
        room = standard_room(version, join_rule=join_rule, members=(MOD, ALICE))
        event = make_event(event_type, sender, content, state_key)
        before_event, before_state = copy.deepcopy(event), copy.deepcopy(room.state)
        full = allowed(event, room.state, version)
        assert event == before_event
        assert room.state == before_state
        types = auth_types_for_event(event)
        assert len(types) == len(set(types))
        if event_type == "m.room.create":
            return  # checked against the (empty) state before it, which the full state is not
        assert allowed(event, auth_state_for_event(event, room.state), version) == full
