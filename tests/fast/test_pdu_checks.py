"""Checks on receipt of a PDU (Server-Server API): drop, redact, reject or soft-fail.

Events here are real signed PDUs (ed25519 keys of two servers, content hashes, event IDs
from reference hashes) in room versions 10, 11 and 12; keys come through the injected
lookup as the transport will provide them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.types import SigningKey, VerifyKey

from homeserver.events.auth_chain import MissingEvent
from homeserver.events.auth_rules import auth_event_types, room_id_for_create
from homeserver.events.canonical import encode_canonical_json
from homeserver.events.hashing import compute_event_id
from homeserver.events.pdu_checks import (
    MAX_PDU_BYTES,
    InvalidPdu,
    PduOutcome,
    PduStatus,
    check_pdu,
    validate_pdu,
)
from homeserver.events.signing import sign_event

ALICE = "@alice:one.org"
BOB = "@bob:two.org"
EVE = "@eve:two.org"
KEYS: dict[str, SigningKey] = {"one.org": generate_signing_key("k1"), "two.org": generate_signing_key("k2")}
VERSIONS = ("10", "11", "12")


def key_lookup(server: str, key_id: str, ts: int) -> VerifyKey | None:
    key = KEYS.get(server)
    if key is None or key_id != f"ed25519:{key.version}":
        return None
    return get_verify_key(key)


class Room:
    """A room whose events are signed PDUs; `state` holds the current state as events."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.events: dict[str, dict[str, Any]] = {}
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.depth = 0
        self.last: list[str] = []
        content: dict[str, Any] = {"room_version": version}
        if version == "10":
            content["creator"] = ALICE
        self.room_id = "!room:one.org"
        create = self.build("m.room.create", ALICE, content, "", auth=[])
        if version == "12":
            self.room_id = room_id_for_create(create)
        self.add(create)
        self.add(self.build("m.room.member", ALICE, {"membership": "join"}, ALICE))
        users = {} if version == "12" else {ALICE: 100}
        self.add(self.build("m.room.power_levels", ALICE, {"users": users}, ""))
        self.add(self.build("m.room.join_rules", ALICE, {"join_rule": "public"}, ""))
        self.add(self.build("m.room.member", BOB, {"membership": "join"}, BOB))

    def build(
        self,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        auth: list[str] | None = None,
        sign: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        self.depth += 1
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "room_id": self.room_id,
            "origin_server_ts": 1000 + self.depth,
            "depth": self.depth,
            "prev_events": list(self.last),
            "auth_events": [],
            "hashes": {"sha256": ""},
            "signatures": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if event_type == "m.room.create" and self.version == "12":
            del pdu["room_id"]
        pdu.update(extra)
        if auth is None:
            keys = auth_event_types(pdu, self.version)
            auth = [self.id_of(self.state[key]) for key in keys if key in self.state]
        pdu["auth_events"] = auth
        server = sender.split(":", 1)[1]
        return sign_event(pdu, server, KEYS[server], self.version) if sign else pdu

    def id_of(self, pdu: dict[str, Any]) -> str:
        return compute_event_id(pdu, self.version)

    def add(self, pdu: dict[str, Any]) -> str:
        event_id = self.id_of(pdu)
        self.events[event_id] = pdu
        if "state_key" in pdu:
            self.state[(pdu["type"], pdu["state_key"])] = {**pdu, "event_id": event_id}
        self.last = [event_id]
        return event_id

    def check(
        self, pdu: dict[str, Any], *, before: Any = "current", current: Any = "current", rejected: Any = ()
    ) -> PduOutcome:
        return check_pdu(
            pdu,
            self.version,
            keys=key_lookup,
            events=self.events,
            state_before=self.state if before == "current" else before,
            current_state=self.state if current == "current" else current,
            rejected=rejected,
        )


@pytest.fixture(params=VERSIONS)
def room(request: pytest.FixtureRequest) -> Room:
    return Room(str(request.param))


def message(room: Room, sender: str = BOB, **extra: Any) -> dict[str, Any]:
    return room.build("m.room.message", sender, {"msgtype": "m.text", "body": "hi"}, **extra)


def test_a_good_message_is_accepted(room: Room) -> None:
    pdu = message(room)
    outcome = room.check(pdu)
    assert outcome.status is PduStatus.ACCEPTED and outcome.accepted
    assert outcome.event_id == room.id_of(pdu) and outcome.event is pdu and not outcome.redacted


def test_the_create_event_itself_is_checked(room: Room) -> None:
    create = next(iter(room.events.values()))
    assert room.check(create, before=None, current=None).accepted


# --- 1. format: dropped ----------------------------------------------------------------------


def _mutated(room: Room, change: Any) -> dict[str, Any]:
    pdu = message(room, sign=False)
    change(pdu)
    return pdu


BAD_FORMATS = {
    "too big": (lambda p: p["content"].update(body="x" * MAX_PDU_BYTES), "at most 65536"),
    "long type": (lambda p: p.update(type="t" * 256), "type is longer than 255 bytes"),
    "long state key in bytes": (lambda p: p.update(state_key="é" * 128), "state_key is longer"),
    "long sender": (lambda p: p.update(sender="@" + "a" * 250 + ":two.org"), "sender is longer"),
    "sender not a user": (lambda p: p.update(sender="bob"), "sender must be a user ID"),
    "float": (lambda p: p["content"].update(score=1.5), "must be integers"),
    "huge integer": (lambda p: p["content"].update(n=2**53), "canonical JSON range"),
    "bool depth": (lambda p: p.update(depth=True), "depth is missing or not a JSON integer"),
    "negative depth": (lambda p: p.update(depth=-1), "depth must not be negative"),
    "no depth": (lambda p: p.pop("depth"), "depth is missing"),
    "no hashes": (lambda p: p.pop("hashes"), "hashes is missing"),
    "no signatures": (lambda p: p.pop("signatures"), "signatures is missing"),
    "no origin_server_ts": (lambda p: p.pop("origin_server_ts"), "origin_server_ts is missing"),
    "no type": (lambda p: p.pop("type"), "type is missing"),
    "content not an object": (lambda p: p.update(content=[]), "content is missing or not a JSON object"),
    "21 prev events": (
        lambda p: p.update(prev_events=["$" + f"{i:043d}" for i in range(21)]),
        "at most 20",
    ),
    "11 auth events": (
        lambda p: p.update(auth_events=["$" + f"{i:043d}" for i in range(11)]),
        "at most 10",
    ),
    "v1-style prev events": (
        lambda p: p.update(prev_events=[["$a:one.org", {"sha256": "x"}]]),
        "list of event IDs",
    ),
    "duplicate prev events": (lambda p: p.update(prev_events=["$" + "a" * 43] * 2), "an event twice"),
    "non-string hash": (lambda p: p.update(hashes={"sha256": 5}), "sha256 must be a string"),
    "signatures not nested": (lambda p: p.update(signatures={"two.org": "sig"}), "must map key IDs"),
    "state key not a string": (lambda p: p.update(state_key=5), "state_key must be a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_FORMATS))
def test_malformed_pdus_are_dropped(room: Room, case: str) -> None:
    change, expected = BAD_FORMATS[case]
    pdu = _mutated(room, change)
    outcome = room.check(pdu)
    assert outcome.status is PduStatus.DROPPED and outcome.reason.startswith("Invalid event")
    assert expected in outcome.reason
    assert outcome.event_id is None


def test_the_size_limit_counts_the_whole_canonical_pdu(room: Room) -> None:
    pdu = message(room, sign=False)
    fits = copy.deepcopy(pdu)
    fits["content"]["body"] = "x" * (MAX_PDU_BYTES - len(encode_canonical_json(pdu)) + 2)
    assert len(encode_canonical_json(fits)) == MAX_PDU_BYTES
    validate_pdu(fits, room.version)
    fits["content"]["body"] += "x"
    with pytest.raises(InvalidPdu, match="65536"):
        validate_pdu(fits, room.version)


def test_room_id_shapes_per_version() -> None:
    v11, v12 = Room("11"), Room("12")
    with pytest.raises(InvalidPdu, match="room ID"):
        validate_pdu({**message(v11, sign=False), "room_id": "!noserver"}, "11")
    with pytest.raises(InvalidPdu, match="room version 12 room ID"):
        validate_pdu({**message(v12, sign=False), "room_id": "!abc:one.org"}, "12")
    create = next(iter(v12.events.values()))
    with pytest.raises(InvalidPdu, match="no room_id"):
        validate_pdu({**create, "room_id": v12.room_id}, "12")
    with pytest.raises(InvalidPdu):
        validate_pdu("not an object", "12")


# --- 2. signatures: dropped ------------------------------------------------------------------


def test_unsigned_and_badly_signed_pdus_are_dropped(room: Room) -> None:
    unsigned = message(room, sign=False)
    assert room.check(unsigned).status is PduStatus.DROPPED
    forged = sign_event(unsigned, "two.org", generate_signing_key("k2"), room.version)
    outcome = room.check(forged)
    assert outcome.status is PduStatus.DROPPED and "two.org" in outcome.reason
    # Signed by the wrong server (Alice's server signing Bob's event) is no better.
    by_other = sign_event(unsigned, "one.org", KEYS["one.org"], room.version)
    assert room.check(by_other).status is PduStatus.DROPPED


def test_unknown_key_is_a_bad_signature(room: Room) -> None:
    pdu = message(room)
    outcome = check_pdu(
        pdu,
        room.version,
        keys=lambda server, key_id, ts: None,
        events=room.events,
        state_before=room.state,
        current_state=room.state,
    )
    assert outcome.status is PduStatus.DROPPED


def test_a_restricted_join_needs_the_authorising_servers_signature(room: Room) -> None:
    join = room.build(
        "m.room.member", EVE, {"membership": "join", "join_authorised_via_users_server": ALICE}, EVE
    )
    assert room.check(join).status is PduStatus.DROPPED  # only two.org signed
    cosigned = sign_event(join, "one.org", KEYS["one.org"], room.version)
    assert room.check(cosigned).accepted


# --- 3. content hash: redacted ---------------------------------------------------------------


def test_a_content_hash_mismatch_redacts_the_event(room: Room) -> None:
    pdu = message(room)
    tampered = {**pdu, "content": {"msgtype": "m.text", "body": "changed in transit"}}
    outcome = room.check(tampered)
    assert outcome.accepted and outcome.redacted
    assert outcome.event["content"] == {}
    assert outcome.event_id == room.id_of(pdu)  # the ID covers the redacted form only


# --- 4. auth against its own auth events: rejected --------------------------------------------


def test_sender_not_joined_per_its_auth_events_is_rejected(room: Room) -> None:
    pdu = message(room, sender=EVE)
    outcome = room.check(pdu)
    assert outcome.status is PduStatus.REJECTED and "auth events" in outcome.reason


def test_auth_events_the_rules_do_not_use_are_rejected(room: Room) -> None:
    listed = message(room)["auth_events"] + [room.id_of(room.state[("m.room.join_rules", "")])]
    outcome = room.check(message(room, auth=listed))  # join rules do not authorise a message
    assert outcome.status is PduStatus.REJECTED and "rule 2.2" in outcome.reason


def test_rejected_auth_events_make_the_event_rejected(room: Room) -> None:
    pdu = message(room)
    outcome = room.check(pdu, rejected={pdu["auth_events"][-1]})
    assert outcome.status is PduStatus.REJECTED and "rule 2.3" in outcome.reason


def test_two_auth_events_for_one_key_are_rejected(room: Room) -> None:
    first_pl = room.id_of(room.state[("m.room.power_levels", "")])
    room.add(
        room.build("m.room.power_levels", ALICE, dict(room.state[("m.room.power_levels", "")]["content"]), "")
    )
    pdu = message(room)
    outcome = room.check(message(room, auth=pdu["auth_events"] + [first_pl]))
    assert outcome.status is PduStatus.REJECTED and "rule 2.1" in outcome.reason


def test_v12_events_must_not_list_the_create_event() -> None:
    room = Room("12")
    create_id = "$" + room.room_id[1:]
    pdu = message(room)
    assert create_id not in pdu["auth_events"]
    assert room.check(pdu).accepted
    outcome = room.check(message(room, auth=pdu["auth_events"] + [create_id]))
    assert outcome.status is PduStatus.REJECTED and "rule 2.2" in outcome.reason
    outcome = room.check(message(room), rejected={create_id})
    assert outcome.status is PduStatus.REJECTED and "v12 rule 2" in outcome.reason


def test_auth_events_from_another_room_are_rejected() -> None:
    room, other = Room("11"), Room("11")
    other.room_id = "!other:one.org"
    foreign = other.build("m.room.topic", ALICE, {"topic": "elsewhere"}, "", auth=[])
    foreign_id = other.id_of(foreign)
    room.events[foreign_id] = foreign
    pdu = message(room)
    outcome = room.check(message(room, auth=pdu["auth_events"][:-1] + [foreign_id]))
    assert outcome.status is PduStatus.REJECTED and "another room" in outcome.reason


def test_an_auth_chain_loop_is_rejected() -> None:
    room = Room("11")
    # A forged pair of events naming each other can only exist with made-up IDs: a stored
    # copy whose auth_events point back at a descendant.
    join_id = room.id_of(room.state[("m.room.member", BOB)])
    pl_id = room.id_of(room.state[("m.room.power_levels", "")])
    room.events[pl_id] = {**room.events[pl_id], "auth_events": room.events[pl_id]["auth_events"] + [join_id]}
    outcome = room.check(message(room))
    assert outcome.status is PduStatus.REJECTED and "loops" in outcome.reason


def test_unknown_auth_events_are_for_the_caller_to_fetch(room: Room) -> None:
    pdu = message(room, auth=["$" + "b" * 43])
    with pytest.raises(MissingEvent):
        room.check(pdu)


# --- 5. and 6. the state before it, the current state ------------------------------------------


def test_state_before_decides_rejection_and_current_state_soft_failure(room: Room) -> None:
    # Server-Server API "Soft failure": Bob sets the topic from before Alice banned him.
    pl = dict(room.state[("m.room.power_levels", "")]["content"])
    room.add(room.build("m.room.power_levels", ALICE, {**pl, "state_default": 0}, ""))
    before = dict(room.state)
    topic = room.build("m.room.topic", BOB, {"topic": "bob's"}, "")
    room.add(room.build("m.room.member", ALICE, {"membership": "ban"}, BOB))
    outcome = room.check(topic, before=before)
    assert outcome.status is PduStatus.SOFT_FAILED and "current state" in outcome.reason
    assert "rule 5" in outcome.reason  # not joined
    # Had the state before it held the ban too, it would be rejected.
    outcome = room.check(topic, before=room.state)
    assert outcome.status is PduStatus.REJECTED and "state before" in outcome.reason
    # Before the ban reaches the current state, it is accepted.
    assert room.check(topic, before=before, current=before).accepted
