"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12).

Each scenario builds a small event graph by hand (explicit auth_events, timestamps and
IDs), gives the states of its branches to `resolve_state`, and checks who ends up joined,
banned, powered or what the topic is: what users of the room would see once the branches
meet. Properties: the order of the state sets does not matter, and the result only holds
events from the inputs or their auth chains.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.events.auth_chain import AuthChainError, MissingEvent, auth_chain, check_auth_chain
from homeserver.events.state_resolution import _conflicted_subgraph, is_power_event, resolve_state

ALICE = "@alice:one.org"  # creator
BOB = "@bob:two.org"
CHARLIE = "@charlie:three.org"
ZARA = "@zara:evil.org"
CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
TOPIC = ("m.room.topic", "")

VERSIONS = ("10", "11", "12")


def member_key(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


class Graph:
    """Events of one room, with the state after each, built in causal order."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.events: dict[str, dict[str, Any]] = {}
        self.state_after: dict[str, dict[tuple[str, str], str]] = {}
        self.room_id = "!CREATE" if version == "12" else "!room:one.org"
        self.ts = 0
        content: dict[str, Any] = {"room_version": version}
        if version == "10":
            content["creator"] = ALICE
        create = {
            "event_id": "$CREATE",
            "type": "m.room.create",
            "state_key": "",
            "sender": ALICE,
            "content": content,
            "auth_events": [],
            "prev_events": [],
            "origin_server_ts": 0,
        }
        if version != "12":
            create["room_id"] = self.room_id
        self.events["$CREATE"] = create
        self.state_after["$CREATE"] = {CREATE: "$CREATE"}

    def add(
        self,
        name: str,
        after: str | list[str],
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = "",
        ts: int | None = None,
        state: dict[tuple[str, str], str] | None = None,
    ) -> str:
        """Add event `$name` whose parent(s) are `after`; its auth events are picked from
        the state before it (the parent's, or `state` for a merge)."""
        parents = [after] if isinstance(after, str) else after
        before = dict(state if state is not None else self.state_after[parents[0]])
        self.ts += 1
        event: dict[str, Any] = {
            "event_id": f"${name}",
            "room_id": self.room_id,
            "type": event_type,
            "sender": sender,
            "content": content,
            "prev_events": parents,
            "origin_server_ts": self.ts if ts is None else ts,
        }
        if state_key is not None:
            event["state_key"] = state_key
        wanted = [CREATE, PL, member_key(sender)]
        if event_type == "m.room.member":
            wanted += [member_key(state_key or ""), JR]
        if self.version == "12":
            wanted.remove(CREATE)
        event["auth_events"] = list(dict.fromkeys(before[key] for key in wanted if key in before))
        self.events[event["event_id"]] = event
        after_state = dict(before)
        if state_key is not None:
            after_state[(event_type, state_key)] = event["event_id"]
        self.state_after[event["event_id"]] = after_state
        return event["event_id"]

    def users(self, levels: dict[str, int]) -> dict[str, int]:
        # In v12 the creator has unlimited power and may not be listed (auth rule 10.4).
        return {u: lvl for u, lvl in levels.items() if not (self.version == "12" and u == ALICE)}

    def resolve(self, *heads: str) -> dict[tuple[str, str], str]:
        return resolve_state(self.version, [self.state_after[h] for h in heads], self.events)


def base_room(version: str, join_rule: str = "public") -> tuple[Graph, str]:
    """Alice creates the room, joins, gives Bob 50 (the kick/ban level), and Bob and Charlie
    join. Returns the graph and the last event."""
    g = Graph(version)
    g.add("IMA", "$CREATE", "m.room.member", ALICE, {"membership": "join"}, ALICE)
    g.add("IPOWER", "$IMA", "m.room.power_levels", ALICE, {"users": g.users({ALICE: 100, BOB: 50})})
    g.add("IJR", "$IPOWER", "m.room.join_rules", ALICE, {"join_rule": join_rule})
    g.add("IMB", "$IJR", "m.room.member", BOB, {"membership": "join"}, BOB)
    last = g.add("IMC", "$IMB", "m.room.member", CHARLIE, {"membership": "join"}, CHARLIE)
    return g, last


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def check_properties(g: Graph, *heads: str) -> dict[tuple[str, str], str]:
    """Resolve in every order of the heads: same answer each time, made of known events."""
    results = [g.resolve(*order) for order in itertools.permutations(heads)]
    assert all(result == results[0] for result in results)
    states = [g.state_after[h] for h in heads]
    allowed = set().union(*(s.values() for s in states))
    allowed |= auth_chain(allowed, g.events)
    assert set(results[0].values()) <= allowed
    return results[0]


# --- scenarios ---------------------------------------------------------------------------


def test_no_conflict_is_the_state_itself(version: str) -> None:
    g, last = base_room(version)
    assert g.resolve(last, last) == g.state_after[last]
    assert resolve_state(version, [], g.events) == {}


def test_ban_beats_a_concurrent_join(version: str) -> None:
    g, last = base_room(version)
    ban = g.add("BAN", last, "m.room.member", ALICE, {"membership": "ban"}, ZARA)
    join = g.add("JOIN", last, "m.room.member", ZARA, {"membership": "join"}, ZARA)
    resolved = check_properties(g, ban, join)
    assert resolved[member_key(ZARA)] == "$BAN"


def test_demotion_beats_the_demoted_moderators_concurrent_ban(version: str) -> None:
    g, last = base_room(version)
    # Alice takes Bob's moderator level away; concurrently Bob bans Charlie.
    demote = g.add("DEMOTE", last, "m.room.power_levels", ALICE, {"users": g.users({ALICE: 100})})
    ban = g.add("BOBBAN", last, "m.room.member", BOB, {"membership": "ban"}, CHARLIE)
    resolved = check_properties(g, demote, ban)
    assert resolved[PL] == "$DEMOTE"
    assert resolved[member_key(CHARLIE)] == "$IMC"


def test_ban_beats_a_topic_sent_from_before_it(version: str) -> None:
    # Server-Server API "Soft failure": B bans X while X sets the topic (C) from before the
    # ban; "latter versions [of state resolution] prioritise the ban over the topic change".
    g, last = base_room(version)
    lowered = g.add(
        "LOW",
        last,
        "m.room.power_levels",
        ALICE,
        {"users": g.users({ALICE: 100, BOB: 50}), "state_default": 0},
    )
    ban = g.add("B", lowered, "m.room.member", BOB, {"membership": "ban"}, CHARLIE, ts=10)
    topic = g.add("C", lowered, "m.room.topic", CHARLIE, {"topic": "evading"}, ts=20)
    resolved = check_properties(g, ban, topic)
    assert resolved[member_key(CHARLIE)] == "$B"
    assert TOPIC not in resolved
    # Without the ban the same topic stands.
    assert g.resolve(topic, lowered)[TOPIC] == "$C"


def test_topic_forks_are_ordered_by_the_power_levels_mainline_not_timestamps(version: str) -> None:
    g, last = base_room(version)
    g.add("T1", last, "m.room.topic", ALICE, {"topic": "first"})
    # Branch 1: Alice raises Bob to 100, then Bob sets the topic (early timestamp).
    g.add("PA2", "$T1", "m.room.power_levels", ALICE, {"users": g.users({ALICE: 100, BOB: 100})})
    t2 = g.add("T2", "$PA2", "m.room.topic", BOB, {"topic": "bob's"}, ts=100)
    # Branch 2: Alice sets the topic later by the clock, but under the older power levels.
    t3 = g.add("T3", "$T1", "m.room.topic", ALICE, {"topic": "alice's"}, ts=900)
    resolved = check_properties(g, t2, t3)
    assert resolved[PL] == "$PA2"
    assert resolved[TOPIC] == "$T2"


def test_same_mainline_position_falls_back_to_timestamp_then_id(version: str) -> None:
    g, last = base_room(version)
    early = g.add("TEARLY", last, "m.room.topic", ALICE, {"topic": "early"}, ts=100)
    late = g.add("TLATE", last, "m.room.topic", ALICE, {"topic": "late"}, ts=200)
    assert check_properties(g, early, late)[TOPIC] == "$TLATE"
    tie_a = g.add("TA", last, "m.room.topic", ALICE, {"topic": "a"}, ts=300)
    tie_b = g.add("TB", last, "m.room.topic", ALICE, {"topic": "b"}, ts=300)
    assert check_properties(g, tie_a, tie_b)[TOPIC] == "$TB"  # the larger ID is applied last


def test_more_powerful_senders_power_event_is_applied_first(version: str) -> None:
    g, last = base_room(version)
    # Both change the join rules at the same time; Bob (50) may, state_default is 50.
    by_alice = g.add("JRA", last, "m.room.join_rules", ALICE, {"join_rule": "invite"}, ts=5)
    by_bob = g.add("JRB", last, "m.room.join_rules", BOB, {"join_rule": "knock"}, ts=5)
    # Power order applies Alice's first, then Bob's over it: Bob's is the resolved one.
    assert check_properties(g, by_alice, by_bob)[JR] == "$JRB"


def test_three_way_fork(version: str) -> None:
    g, last = base_room(version)
    ban = g.add("BAN3", last, "m.room.member", ALICE, {"membership": "ban"}, BOB)
    bob_kicks = g.add("KICK3", last, "m.room.member", BOB, {"membership": "leave"}, CHARLIE)
    topic = g.add("TOPIC3", last, "m.room.topic", ALICE, {"topic": "three"})
    resolved = check_properties(g, ban, bob_kicks, topic)
    assert resolved[member_key(BOB)] == "$BAN3"
    assert resolved[TOPIC] == "$TOPIC3"
    # Alice's ban is ordered first (more power), so Bob is banned when his kick is checked.
    assert resolved[member_key(CHARLIE)] == "$IMC"


def test_key_missing_from_one_set_is_conflicted(version: str) -> None:
    g, last = base_room(version)
    topic = g.add("ONLY", last, "m.room.topic", ALICE, {"topic": "one side"})
    resolved = check_properties(g, topic, last)
    assert resolved[TOPIC] == "$ONLY"


def test_rejected_auth_events_are_not_used() -> None:
    # v2.1 checks power events against their own auth events (not the unconflicted state),
    # so whether an auth event was rejected decides. PROMOTE (which would give Charlie the
    # state level) is in both branches' auth chains, so it is not re-checked itself.
    g, last = base_room("12")
    promote = g.add("PROMOTE", last, "m.room.power_levels", ALICE, {"users": {BOB: 50, CHARLIE: 50}})
    by_charlie = g.add("JRC", promote, "m.room.join_rules", CHARLIE, {"join_rule": "invite"})
    by_bob = g.add("TB", promote, "m.room.topic", BOB, {"topic": "bob's"})
    # The states as a server that rejected PROMOTE holds them: the old power levels.
    states = [{**g.state_after[by_charlie], PL: "$IPOWER"}, {**g.state_after[by_bob], PL: "$IPOWER"}]
    assert resolve_state("12", states, g.events)[JR] == "$JRC"
    assert resolve_state("12", states, g.events, rejected={"$PROMOTE"})[JR] == "$IJR"


def test_unknown_events_are_reported(version: str) -> None:
    g, last = base_room(version)
    topic = g.add("T", last, "m.room.topic", ALICE, {"topic": "x"})
    del g.events["$IMC"]
    with pytest.raises(MissingEvent) as info:
        g.resolve(topic, last)
    assert info.value.event_id == "$IMC"


def test_lookup_may_be_a_callable(version: str) -> None:
    g, last = base_room(version)
    topic = g.add("T", last, "m.room.topic", ALICE, {"topic": "x"})
    states = [g.state_after[topic], g.state_after[last]]
    assert resolve_state(version, states, g.events.get) == g.resolve(topic, last)


# --- v2.1: the conflicted state subgraph -------------------------------------------------


def test_conflicted_subgraph_holds_the_paths_between_conflicted_events() -> None:
    g, last = base_room("12")
    a = g.add("A", last, "m.room.power_levels", ALICE, {"users": {BOB: 60}})
    b = g.add("B", a, "m.room.power_levels", BOB, {"users": {BOB: 60, CHARLIE: 10}})
    d = g.add("D", b, "m.room.power_levels", BOB, {"users": {BOB: 60, CHARLIE: 20}})
    subgraph = _conflicted_subgraph({a, d}, g.events.__getitem__)
    assert subgraph == {a, b, d}  # B is on the path D -> B -> A; older events are not


def test_v12_resolution_does_not_start_from_the_unconflicted_state() -> None:
    # The creator-only room: power events are checked against their own auth events, and
    # the result still keeps every unconflicted entry.
    g, last = base_room("12")
    demote = g.add("DEMOTE", last, "m.room.power_levels", ALICE, {"users": {}})
    ban = g.add("BOBBAN", last, "m.room.member", BOB, {"membership": "ban"}, CHARLIE)
    resolved = check_properties(g, demote, ban)
    assert resolved[CREATE] == "$CREATE" and resolved[JR] == "$IJR"
    assert resolved[member_key(CHARLIE)] == "$IMC"


def test_is_power_event() -> None:
    g, last = base_room("11")
    assert is_power_event(g.events["$IPOWER"]) and is_power_event(g.events["$IJR"])
    assert not is_power_event(g.events["$IMB"])
    g.add("LEAVE", last, "m.room.member", BOB, {"membership": "leave"}, BOB)
    g.add("KICK", last, "m.room.member", ALICE, {"membership": "leave"}, BOB)
    assert not is_power_event(g.events["$LEAVE"]) and is_power_event(g.events["$KICK"])


# --- auth chains: loops and other rooms --------------------------------------------------


def test_auth_chain_of_an_event() -> None:
    g, last = base_room("11")
    assert auth_chain(["$IMB"], g.events) == {"$CREATE", "$IMA", "$IPOWER", "$IJR"}
    assert check_auth_chain(g.events["$IMB"], g.events) == {"$CREATE", "$IMA", "$IPOWER", "$IJR"}


def test_auth_chain_loops_are_refused() -> None:
    g, last = base_room("11")
    g.events["$IMA"]["auth_events"] = ["$CREATE", "$IJR"]  # IJR's chain includes IMA
    with pytest.raises(AuthChainError, match="loops"):
        auth_chain(["$IMB"], g.events)
    with pytest.raises(AuthChainError):
        g.resolve(g.add("T", last, "m.room.topic", ALICE, {"topic": "x"}), last)
    g.events["$SELF"] = {"event_id": "$SELF", "room_id": g.room_id, "auth_events": ["$SELF"]}
    with pytest.raises(AuthChainError, match="itself"):
        check_auth_chain(g.events["$SELF"], g.events)


def test_auth_events_from_another_room_are_refused() -> None:
    g, last = base_room("11")
    g.events["$IPOWER"]["room_id"] = "!other:evil.org"
    with pytest.raises(AuthChainError, match="another room"):
        check_auth_chain(g.events["$IMB"], g.events)


def test_v12_chain_may_not_reach_another_rooms_create() -> None:
    g, last = base_room("12")
    check_auth_chain(g.events["$IMB"], g.events)
    g.events["$FOREIGN"] = {"event_id": "$FOREIGN", "type": "m.room.create", "auth_events": []}
    g.events["$IMA"]["auth_events"] = ["$FOREIGN"]
    with pytest.raises(AuthChainError, match="another room"):
        check_auth_chain(g.events["$IMB"], g.events)


def test_join_rule_change_beats_a_concurrent_join(version: str) -> None:
    # Zara joins the public room while Alice makes it invite-only: the join rules, a power
    # event, are resolved first, and Zara's join fails against them.
    g, last = base_room(version)
    close = g.add("CLOSE", last, "m.room.join_rules", ALICE, {"join_rule": "invite"}, ts=50)
    join = g.add("ZJOIN", last, "m.room.member", ZARA, {"membership": "join"}, ZARA, ts=10)
    resolved = check_properties(g, close, join)
    assert resolved[JR] == "$CLOSE"
    assert member_key(ZARA) not in resolved


def test_topic_of_a_demoted_user_is_undone(version: str) -> None:
    g, last = base_room(version)
    t1 = g.add("T1", last, "m.room.topic", ALICE, {"topic": "alice's"})
    demote = g.add("DEMOTE", t1, "m.room.power_levels", ALICE, {"users": g.users({ALICE: 100})}, ts=100)
    bobs = g.add("T2", t1, "m.room.topic", BOB, {"topic": "bob's"}, ts=900)
    resolved = check_properties(g, demote, bobs)
    assert resolved[TOPIC] == "$T1"


# --- properties over random forks ----------------------------------------------------------


MOVES = (
    ("m.room.topic", ALICE, {"topic": "a"}, ""),
    ("m.room.topic", BOB, {"topic": "b"}, ""),
    ("m.room.join_rules", ALICE, {"join_rule": "invite"}, ""),
    ("m.room.join_rules", BOB, {"join_rule": "public"}, ""),
    ("m.room.member", BOB, {"membership": "ban"}, CHARLIE),
    ("m.room.member", CHARLIE, {"membership": "leave"}, CHARLIE),
    ("m.room.member", ZARA, {"membership": "join"}, ZARA),
    ("m.room.member", ALICE, {"membership": "ban"}, BOB),
    ("m.room.power_levels", ALICE, "demote bob", ""),
    ("m.room.power_levels", ALICE, "promote charlie", ""),
    ("m.room.name", CHARLIE, {"name": "c"}, ""),
)


@settings(max_examples=40, deadline=None)
@given(
    version=st.sampled_from(VERSIONS),
    branches=st.lists(
        st.lists(st.tuples(st.integers(0, len(MOVES) - 1), st.integers(0, 5)), min_size=1, max_size=4),
        min_size=2,
        max_size=3,
    ),
)
def test_resolution_ignores_input_order_and_invents_nothing(
    version: str, branches: list[list[tuple[int, int]]]
) -> None:
    g, last = base_room(version)
    heads = []
    for b, branch in enumerate(branches):
        head = last
        for i, (move, ts) in enumerate(branch):
            event_type, sender, content, state_key = MOVES[move]
            if content == "demote bob":
                content = {"users": g.users({ALICE: 100})}
            elif content == "promote charlie":
                content = {"users": g.users({ALICE: 100, BOB: 50, CHARLIE: 50})}
            head = g.add(f"B{b}E{i}", head, event_type, sender, dict(content), state_key, ts=ts)
        heads.append(head)
    resolved = check_properties(g, *heads)
    # Keys every branch agrees on keep their value.
    for key, value in g.state_after[heads[0]].items():
        if all(g.state_after[h].get(key) == value for h in heads):
            assert resolved[key] == value
