"""Room version 12 (MSC4289, MSC4291): room IDs from the create event, privileged creators.

Each test names the v12 rule it exercises; rules that v12 did not change keep the v11
numbers in the reasons (see homeserver.events.auth_rules). Events here are real v12 PDU
shapes: the create event has no room_id, and every event ID is its reference hash.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from homeserver.events.auth_rules import (
    AuthError,
    auth_event_types,
    auth_types_for_event,
    check_auth,
    redaction_target,
    room_id_for_create,
)
from homeserver.events.hashing import compute_event_id
from homeserver.events.power_levels import (
    CREATOR_POWER_LEVEL,
    MAX_POWER_LEVEL,
    can_do,
    default_power_levels_content,
    room_creators,
    user_power_level,
)
from homeserver.events.redaction import redact

CREATOR = "@creator:one.org"
CO = "@co:two.org"
ADMIN = "@admin:one.org"
ALICE = "@alice:two.org"
PL = ("m.room.power_levels", "")


def v12_create(sender: str = CREATOR, **content: Any) -> dict[str, Any]:
    create: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "sender": sender,
        "content": {"room_version": "12", **content},
        "origin_server_ts": 1,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "x"},
    }
    create["event_id"] = compute_event_id(create, "12")
    return create


class V12Room:
    """A v12 room's state, grown only through events that `check_auth` accepts."""

    def __init__(self, create: dict[str, Any] | None = None) -> None:
        self.create = create or v12_create()
        check_auth(self.create, {}, "12")
        self.room_id = room_id_for_create(self.create)
        self.state: dict[tuple[str, str], dict[str, Any]] = {("m.room.create", ""): self.create}
        self.ts = 1

    def event(
        self, event_type: str, sender: str, content: Any, state_key: str | None = None
    ) -> dict[str, Any]:
        self.ts += 1
        event: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "room_id": self.room_id,
            "origin_server_ts": self.ts,
            "depth": self.ts,
            "prev_events": [],
            "auth_events": [],
            "hashes": {"sha256": "x"},
        }
        if state_key is not None:
            event["state_key"] = state_key
        event["event_id"] = compute_event_id(event, "12")
        return event

    def member(self, user: str, membership: str, sender: str | None = None) -> dict[str, Any]:
        return self.event("m.room.member", sender or user, {"membership": membership}, user)

    def send(self, event: dict[str, Any]) -> dict[str, Any]:
        check_auth(event, self.state, "12")
        if "state_key" in event:
            self.state[(event["type"], event["state_key"])] = event
        return event

    def rejects(self, event: dict[str, Any], rule: str) -> None:
        with pytest.raises(AuthError, match=rf"\({re.escape(rule)}\)"):
            check_auth(event, self.state, "12")


def creator_join(room: V12Room) -> None:
    join = room.member(CREATOR, "join")
    join["prev_events"] = [room.create["event_id"]]
    room.send(join)


def public_room(**create_content: Any) -> V12Room:
    room = V12Room(v12_create(**create_content))
    creator_join(room)
    room.send(room.event("m.room.join_rules", CREATOR, {"join_rule": "public"}, ""))
    return room


# --- room IDs (v12 rules 1.2 and 2) -------------------------------------------------------


def test_room_id_is_the_create_events_hash_without_a_server_part() -> None:
    create = v12_create()
    room_id = room_id_for_create(create)
    assert room_id == "!" + create["event_id"][1:]
    assert ":" not in room_id
    assert room_id_for_create(v12_create(**{"m.federate": False})) != room_id


def test_create_with_a_room_id_is_rejected_in_v12_only() -> None:
    create = v12_create()
    check_auth(create, {}, "12")
    with pytest.raises(AuthError, match=r"v12 rule 1\.2"):
        check_auth({**create, "room_id": "!abc:one.org"}, {}, "12")
    # v11 still needs a room ID on the creator's server (its rule 1.2).
    v11 = {**create, "content": {"room_version": "11"}}
    with pytest.raises(AuthError, match=r"\(rule 1\.2\)"):
        check_auth(v11, {}, "11")


def test_event_in_another_room_id_than_its_create_event_is_rejected() -> None:
    room = public_room()
    message = room.event("m.room.message", CREATOR, {"body": "hi"})
    room.send(message)
    elsewhere = {**message, "room_id": "!someotherhash"}
    room.rejects(elsewhere, "v12 rule 2")
    # A server-style room ID is not accepted for a v12 room either.
    room.rejects({**message, "room_id": "!" + room.room_id[1:] + ":one.org"}, "v12 rule 2")


# --- additional_creators (v12 rule 1.4) -----------------------------------------------------


@pytest.mark.parametrize(
    "additional", ["@co:two.org", [5], ["co:two.org"], ["@co"], [None], {"@co:two.org": 1}]
)
def test_malformed_additional_creators_are_rejected(additional: Any) -> None:
    with pytest.raises(AuthError, match=r"v12 rule 1\.4"):
        check_auth(v12_create(additional_creators=additional), {}, "12")


def test_additional_creators_are_not_checked_before_v12() -> None:
    create = v12_create(additional_creators="junk")
    create["content"]["room_version"] = "11"
    create["room_id"] = "!r:one.org"
    check_auth(create, {}, "11")
    assert room_creators(create, "11") == {CREATOR}


def test_creators_are_sender_plus_additional_creators() -> None:
    create = v12_create(additional_creators=[CO, ALICE])
    assert room_creators(create) == {CREATOR, CO, ALICE}


# --- infinite power (the v12 creators note, rule 10.4) --------------------------------------


def test_creators_outrank_every_power_level() -> None:
    room = public_room(additional_creators=[CO])
    room.send(room.member(CO, "join"))
    room.send(room.member(ADMIN, "join"))
    room.send(room.event("m.room.power_levels", CREATOR, {"users": {ADMIN: MAX_POWER_LEVEL}}, ""))
    assert user_power_level(CO, room.state) == CREATOR_POWER_LEVEL > MAX_POWER_LEVEL
    # The highest possible listed level still cannot ban a creator ...
    room.rejects(room.member(CO, "ban", sender=ADMIN), "rule 4.6.3")
    # ... while an additional creator, listed nowhere, may ban that admin and change levels.
    assert can_do(CO, "ban", room.state, target=ADMIN)
    room.send(room.event("m.room.power_levels", CO, {"users": {ADMIN: 0}, "ban": 100}, ""))
    room.send(room.member(ADMIN, "ban", sender=CO))


def test_creators_cannot_kick_each_other() -> None:
    room = public_room(additional_creators=[CO])
    room.send(room.member(CO, "join"))
    room.rejects(room.member(CO, "leave", sender=CREATOR), "rule 4.5.5")
    room.rejects(room.member(CREATOR, "ban", sender=CO), "rule 4.6.3")


def test_without_power_levels_only_creators_may_send_state() -> None:
    room = public_room(additional_creators=[CO])
    room.send(room.member(CO, "join"))
    room.send(room.member(ALICE, "join"))
    room.send(room.event("m.room.name", CO, {"name": "co's"}, ""))
    room.rejects(room.event("m.room.name", ALICE, {"name": "alice's"}, ""), "rule 7")


@pytest.mark.parametrize("listed", [CREATOR, CO])
def test_power_levels_naming_a_creator_are_rejected(listed: str) -> None:
    room = public_room(additional_creators=[CO])
    room.rejects(room.event("m.room.power_levels", CREATOR, {"users": {listed: 100}}, ""), "v12 rule 10.4")


def test_power_levels_naming_the_creator_are_fine_in_v11() -> None:
    create = {
        "type": "m.room.create",
        "state_key": "",
        "sender": CREATOR,
        "room_id": "!r:one.org",
        "content": {"room_version": "11"},
        "event_id": "$c",
    }
    state = {("m.room.create", ""): create}
    join = {"type": "m.room.member", "state_key": CREATOR, "sender": CREATOR, "room_id": "!r:one.org"}
    join["content"] = {"membership": "join"}
    state[("m.room.member", CREATOR)] = join
    pl = {"type": "m.room.power_levels", "state_key": "", "sender": CREATOR, "room_id": "!r:one.org"}
    pl["content"] = {"users": {CREATOR: 100}}
    check_auth(pl, state, "11")


def test_only_the_create_sender_joins_straight_after_the_create_event() -> None:
    room = V12Room(v12_create(additional_creators=[CO]))
    early = room.member(CO, "join")
    early["prev_events"] = [room.create["event_id"]]
    # An additional creator is not "the sender of the m.room.create" (rule 4.3.1); with no
    # join rules yet the room is invite-only.
    room.rejects(early, "rule 4.3.4")
    creator_join(room)


def test_default_power_levels_of_a_v12_room_name_no_creator() -> None:
    assert default_power_levels_content(CREATOR, "12")["users"] == {}
    assert default_power_levels_content(CREATOR, "11")["users"] == {CREATOR: 100}
    room = public_room()
    room.send(room.event("m.room.power_levels", CREATOR, default_power_levels_content(CREATOR, "12"), ""))


# --- auth events selection (v12 rule 3.2) and redaction --------------------------------------


def test_create_event_is_not_selected_for_auth_events_in_v12() -> None:
    room = public_room()
    join = room.member(ALICE, "join")
    assert ("m.room.create", "") in auth_types_for_event(join)
    assert ("m.room.create", "") in auth_event_types(join, "11")
    assert ("m.room.create", "") not in auth_event_types(join, "12")
    assert auth_event_types(join, "12") == [PL, ("m.room.member", ALICE), ("m.room.join_rules", "")]


def test_v12_redaction_keeps_what_v11_keeps() -> None:
    create = v12_create(additional_creators=[CO], extra="kept in v11 and v12")
    assert redact(create, "12")["content"] == create["content"]
    room = public_room()
    redaction = room.event("m.room.redaction", CREATOR, {"redacts": "$target", "reason": "spam"})
    redaction["redacts"] = "$top"
    assert redaction_target(redaction, "12") == "$target"
    assert redact(redaction, "12")["content"] == {"redacts": "$target"}
    assert redact(redaction, "12") == redact(redaction, "11")


def test_admin_api_accepts_v12_room_ids() -> None:
    from homeserver.core.admin import check_room_id

    room_id = room_id_for_create(v12_create())
    assert check_room_id(room_id) == room_id
