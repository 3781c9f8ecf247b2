"""The state a resident answers send_join with, checked before the joining server trusts it
(core/federation/join_state.py): real signed PDUs (tests/fast/test_pdu_checks.py's Room),
versions 10 to 12."""

from __future__ import annotations

from typing import Any

import pytest
from signedjson.key import generate_signing_key
from test_pdu_checks import ALICE, EVE, VERSIONS, Room, key_lookup
from twisted.internet.defer import ensureDeferred, succeed

from homeserver.core.federation.join_state import BadJoinState, checked_state, verified_signatures
from homeserver.events.signing import sign_event

CAROL = "@carol:two.org"


def _answer(room: Room, join: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """send_join's state and auth_chain for `join`: the room's state events, all its events."""
    state = [{k: v for k, v in pdu.items() if k != "event_id"} for pdu in room.state.values()]
    return state, list(room.events.values())


def _join(room: Room, user: str = EVE) -> dict[str, Any]:
    return room.build("m.room.member", user, {"membership": "join"}, user)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_good_answer_gives_the_rooms_state(version: str) -> None:
    room = Room(version)
    room.add(room.build("m.room.topic", ALICE, {"topic": "hello"}, ""))
    join = _join(room)
    state, chain = _answer(room, join)
    got = checked_state(room.room_id, version, join, state, chain, key_lookup)
    assert set(got) == set(room.state)
    assert got[("m.room.topic", "")]["content"] == {"topic": "hello"}
    assert got[("m.room.create", "")]["event_id"] == room.state[("m.room.create", "")]["event_id"]


@pytest.mark.parametrize("version", VERSIONS)
def test_events_that_fail_their_checks_are_left_out(version: str) -> None:
    room = Room(version)
    # A topic signed by a key one.org never had; a name by someone not in the room.
    forged = room.build("m.room.topic", ALICE, {"topic": "forged"}, "", sign=False)
    forged = sign_event(forged, "one.org", generate_signing_key("k1"), version)
    room.add(forged)
    room.add(room.build("m.room.name", EVE, {"name": "not a member"}, ""))
    join = _join(room)
    state, chain = _answer(room, join)
    got = checked_state(room.room_id, version, join, state, chain, key_lookup)
    assert ("m.room.topic", "") not in got
    assert ("m.room.name", "") not in got
    assert ("m.room.power_levels", "") in got
    # An event whose auth events the answer leaves out is not used either: without the
    # power levels the join rule goes, and with it the room's being public.
    without_power = [p for p in chain if p.get("type") != "m.room.power_levels"]
    state = [p for p in state if p.get("type") != "m.room.power_levels"]
    with pytest.raises(BadJoinState, match="needs an invite"):
        checked_state(room.room_id, version, join, state, without_power, key_lookup)


@pytest.mark.parametrize("version", VERSIONS)
def test_answers_that_cannot_be_used(version: str) -> None:
    room = Room(version)
    join = _join(room)
    state, chain = _answer(room, join)

    def refused(state: Any, chain: Any, room_id: str = room.room_id, join: Any = join) -> str:
        with pytest.raises(BadJoinState) as e:
            checked_state(room_id, version, join, state, chain, key_lookup)
        return str(e.value)

    assert "no state and auth_chain" in refused(None, chain)
    assert "not an object" in refused([*state, 1], chain)
    no_create = [p for p in state if p["type"] != "m.room.create"]
    assert "create event" in refused(no_create, [p for p in chain if p["type"] != "m.room.create"])
    # Another room's state: its events are not of this room.
    other = Room(version)
    other_state, other_chain = _answer(other, join)
    other_id = "!elsewhere:one.org" if version != "12" else "!" + "A" * 43
    assert "create event" in refused(other_state, other_chain, other_id)
    # A room that does not let us in.
    room.add(room.build("m.room.join_rules", ALICE, {"join_rule": "invite"}, ""))
    join = _join(room, CAROL)
    state, chain = _answer(room, join)
    assert "does not allow this join" in refused(state, chain, join=join)


def _verified(version: str, pdus: list[dict[str, Any]]) -> set[int]:
    """`verified_signatures` with its slices run in line (the server runs them on threads)."""
    found: list[set[int]] = []
    run = lambda fn, *args: succeed(fn(*args))  # noqa: E731
    ensureDeferred(verified_signatures(version, pdus, key_lookup, run, 2)).addCallback(found.append)
    assert found, "verified_signatures did not finish"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_signatures_verified_beforehand_still_refuse_forged_events(version: str) -> None:
    room = Room(version)
    forged = room.build("m.room.topic", ALICE, {"topic": "forged"}, "", sign=False)
    forged = sign_event(forged, "one.org", generate_signing_key("k1"), version)
    room.add(forged)
    room.add(room.build("m.room.name", ALICE, {"name": "honest"}, ""))
    join = _join(room)
    state, chain = _answer(room, join)
    pdus = [*chain, *state]
    verified = _verified(version, pdus)
    assert {i for i, p in enumerate(pdus) if p["content"] == {"topic": "forged"}}.isdisjoint(verified)
    assert len(verified) == len(pdus) - 2  # the forged topic, in the chain and in the state
    got = checked_state(room.room_id, version, join, state, chain, key_lookup, verified)
    assert got == checked_state(room.room_id, version, join, state, chain, key_lookup)
    assert ("m.room.topic", "") not in got
    assert got[("m.room.name", "")]["content"] == {"name": "honest"}
    # A second copy of a good event, its signature spoilt: the copy used is that last one,
    # and its own check (not the first copy's) decides.
    name = next(p for p in state if p["type"] == "m.room.name")
    spoilt = {**name, "signatures": {"one.org": {"ed25519:k1": "A" * 86}}}
    state = [*state, spoilt]
    verified = _verified(version, [*chain, *state])
    assert len(chain) + len(state) - 1 not in verified
    got = checked_state(room.room_id, version, join, state, chain, key_lookup, verified)
    assert ("m.room.name", "") not in got
