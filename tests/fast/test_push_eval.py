"""The push-rule evaluator (core/push_eval.py) and ruleset edits (core/push_rules.py),
against the spec's condition kinds, kind order and predefined rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from homeserver.core.push_eval import EventFacts, compile_rules, split_path
from homeserver.core.push_rules import default_push_rules, effective_rules, put_rule
from homeserver.errors import MatrixError

ME = "@alice:example.org"
OTHER = "@bob:example.org"
ROOM = "!room:example.org"


@dataclass
class Ev:
    """A state event as a RoomHead holds it."""

    pdu: dict[str, Any]
    content: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.content = self.pdu.get("content", {})


def room_state(
    members: int = 3, names: dict[str, str] | None = None, pl: dict[str, Any] | None = None
) -> Any:
    state: dict[tuple[str, str], Ev] = {
        ("m.room.create", ""): Ev(
            {"type": "m.room.create", "sender": OTHER, "content": {"room_version": "11"}}
        )
    }
    users = [ME, OTHER] + [f"@u{i}:example.org" for i in range(members - 2)]
    for user in users:
        content: dict[str, Any] = {"membership": "join"}
        if names and user in names:
            content["displayname"] = names[user]
        state[("m.room.member", user)] = Ev({"type": "m.room.member", "state_key": user, "content": content})
    if pl is not None:
        state[("m.room.power_levels", "")] = Ev({"type": "m.room.power_levels", "content": pl})
    return state


def message(body: Any = "hello", sender: str = OTHER, **content: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"msgtype": "m.text", **content}
    if body is not None:
        c["body"] = body
    return {"type": "m.room.message", "sender": sender, "room_id": ROOM, "content": c}


def evaluate(pdu: dict[str, Any], ruleset: dict[str, Any] | None = None, user: str = ME, **room: Any) -> Any:
    rules = (ruleset or default_push_rules(user))["global"]
    program = compile_rules(rules, user)
    state = room_state(**room)
    facts = EventFacts(pdu, state, "11")
    return program.plan(facts).match(facts, user)


def with_rule(kind: str, rule_id: str, body: dict[str, Any], user: str = ME) -> dict[str, Any]:
    ruleset = effective_rules(None, user)
    put_rule(ruleset, kind, rule_id, body, None, None)
    return ruleset


# The defaults ------------------------------------------------------------------------------


def test_a_plain_message_in_a_group_notifies_without_highlight() -> None:
    rule, outcome = evaluate(message("lunch?"))
    assert rule == ".m.rule.message" and outcome.notify and not outcome.highlight


def test_one_to_one_rooms_notify_with_sound() -> None:
    rule, outcome = evaluate(message("hi"), members=2)
    assert rule == ".m.rule.room_one_to_one" and outcome.tweaks == {"sound": "default"}


def test_notices_edits_reactions_and_joins_do_not_notify() -> None:
    assert evaluate(message("bot", msgtype="m.notice"))[0] == ".m.rule.suppress_notices"
    edit = message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert evaluate(edit)[0] == ".m.rule.suppress_edits"
    reaction = {"type": "m.reaction", "sender": OTHER, "content": {"m.relates_to": {"key": "x"}}}
    assert not evaluate(reaction)[1].notify
    join = {"type": "m.room.member", "sender": OTHER, "state_key": OTHER, "content": {"membership": "join"}}
    assert evaluate(join)[0] == ".m.rule.member_event"


def test_an_invite_for_me_notifies_but_not_one_for_someone_else() -> None:
    invite = {"type": "m.room.member", "sender": OTHER, "state_key": ME, "content": {"membership": "invite"}}
    rule, outcome = evaluate(invite)
    assert rule == ".m.rule.invite_for_me" and outcome.notify and not outcome.highlight
    invite["state_key"] = "@carol:example.org"
    assert not evaluate(invite)[1].notify


def test_intentional_mentions_highlight_and_silence_the_legacy_rules() -> None:
    rule, outcome = evaluate(message("hey", **{"m.mentions": {"user_ids": [ME]}}))
    assert rule == ".m.rule.is_user_mention" and outcome.highlight
    # The body names me, but m.mentions is present and does not: no highlight.
    rule, outcome = evaluate(message("alice, look", **{"m.mentions": {}}), names={ME: "Alice"})
    assert rule == ".m.rule.message" and not outcome.highlight
    # Without m.mentions the legacy rules apply: the localpart, then the display name.
    assert evaluate(message("ALICE look"))[0] == ".m.rule.contains_user_name"  # any case
    rule, outcome = evaluate(message("ping Alice."))
    assert rule == ".m.rule.contains_user_name" and outcome.highlight
    rule, _ = evaluate(message("ask Queen Bee"), names={ME: "Queen Bee"})
    assert rule == ".m.rule.contains_display_name"


def test_room_mentions_need_the_senders_notification_power() -> None:
    pdu = message("everyone", **{"m.mentions": {"room": True}})
    pl = {"users": {OTHER: 50}, "notifications": {"room": 50}}
    assert evaluate(pdu, pl=pl)[0] == ".m.rule.is_room_mention"
    pl = {"users": {OTHER: 10}, "notifications": {"room": 50}}
    assert evaluate(pdu, pl=pl)[0] == ".m.rule.message"
    # No power levels: the creator (OTHER sent the create event) has 100.
    assert evaluate(pdu)[0] == ".m.rule.is_room_mention"
    # Legacy @room, only without m.mentions; `room` defaults to 50.
    assert evaluate(message("@room now"), pl={"users": {OTHER: 50}})[0] == ".m.rule.roomnotif"
    assert evaluate(message("@room now"), pl={"users_default": 0})[0] == ".m.rule.message"


def test_word_boundaries_in_the_body() -> None:
    # "alice" inside a longer word is not a mention; punctuation and non-ASCII letters are boundaries.
    assert evaluate(message("malice aforethought"))[0] == ".m.rule.message"
    assert evaluate(message("alice_x"))[0] == ".m.rule.message"
    assert evaluate(message("(alice)"))[0] == ".m.rule.contains_user_name"
    assert evaluate(message("éalice"))[0] == ".m.rule.contains_user_name"
    assert evaluate(message(None))[0] == ".m.rule.message"  # no body: nothing to match


def test_master_rule_silences_everything_even_user_overrides() -> None:
    ruleset = with_rule("override", "all", {"conditions": [], "actions": ["notify"]})
    ruleset["global"]["override"][0]["enabled"] = True  # .m.rule.master
    rule, outcome = evaluate(message("hi"), ruleset)
    assert rule == ".m.rule.master" and not outcome.notify


# Each condition kind --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "pattern", "value", "matches"),
    [
        ("content.topic", "lunc?*", "Lunch plans", True),
        ("content.topic", "lunc?*", "LUNCH", True),
        ("content.topic", "lunc?*", " lunch", False),  # the whole value must match
        ("content.topic", "lunc?*", "lunc", False),  # ? needs a character
        ("content.topic", "lunc?*", None, False),  # not a string
        ("content.topic", "*", 5, False),  # not a string, even for *
        ("content.missing", "*", "absent", False),
        ("content.topic", "a.b", "axb", False),  # regex characters are literal
        ("content.topic", "a.b", "A.B", True),
        ("content.topic", "(x)[y]+", "(x)[y]+", True),
        ("content.topic", "line*end", "line\nend", True),  # * spans newlines
    ],
)
def test_event_match(key: str, pattern: str, value: Any, matches: bool) -> None:
    ruleset = with_rule(
        "override",
        "r",
        {
            "conditions": [{"kind": "event_match", "key": key, "pattern": pattern}],
            "actions": ["notify", {"set_tweak": "highlight"}],
        },
    )
    pdu = {"type": "m.room.topic", "sender": OTHER, "state_key": "", "content": {}}
    if value != "absent":
        pdu["content"]["topic"] = value
    assert (evaluate(pdu, ruleset)[0] == "r") is matches


def test_event_match_on_the_body_matches_words_and_globs() -> None:
    ruleset = with_rule(
        "content", "cake", {"pattern": "ex*ple", "actions": ["notify", {"set_tweak": "highlight"}]}
    )
    for body, hit in [
        ("An example event.", True),
        ("exple", True),
        ("An exciting triple-whammy", True),
        ("examples", False),
        ("complex example", True),
    ]:
        rule, outcome = evaluate(message(body), ruleset)
        assert (rule == "cake") is hit, body
        assert outcome.highlight is hit


@pytest.mark.parametrize(
    ("key", "value", "content", "matches"),
    [
        ("content.m\\.federate", True, {"m.federate": True}, True),
        ("content.m\\.federate", True, {"m.federate": "true"}, False),
        ("content.m\\.federate", True, {"m.federate": 1}, False),  # true is not 1
        ("content.n", 1, {"n": True}, False),
        ("content.n", None, {"n": None}, True),
        ("content.n", None, {}, False),  # missing is not null
        ("content.a.b", "x", {"a": {"b": "x"}}, True),
        ("content.a.b", "x", {"a": [{"b": "x"}]}, False),  # arrays are not walked into
        ("content.back\\\\slash", "y", {"back\\slash": "y"}, True),
    ],
)
def test_event_property_is(key: str, value: Any, content: dict[str, Any], matches: bool) -> None:
    cond = {"kind": "event_property_is", "key": key, "value": value}
    ruleset = with_rule("override", "r", {"conditions": [cond], "actions": ["notify"]})
    pdu = {"type": "m.custom", "sender": OTHER, "content": content}
    assert (evaluate(pdu, ruleset)[0] == "r") is matches


@pytest.mark.parametrize(
    ("value", "array", "matches"),
    [
        ("#myroom:example.com", ["#somewhere:example.org", "#myroom:example.com"], True),
        (":example.com", ["#myroom:example.com"], False),
        (1, [True, "1"], False),
        (1, [{"x": 1}, 1], True),
        ("x", "x", False),  # not an array
    ],
)
def test_event_property_contains(value: Any, array: Any, matches: bool) -> None:
    cond = {"kind": "event_property_contains", "key": "content.alt_aliases", "value": value}
    ruleset = with_rule("override", "r", {"conditions": [cond], "actions": ["notify"]})
    pdu = {
        "type": "m.room.canonical_alias",
        "sender": OTHER,
        "state_key": "",
        "content": {"alt_aliases": array},
    }
    assert (evaluate(pdu, ruleset)[0] == "r") is matches


@pytest.mark.parametrize(
    ("is_", "count", "matches"),
    [
        ("2", 2, True),
        ("==3", 2, False),
        ("<3", 2, True),
        (">2", 3, True),
        (">=3", 3, True),
        ("<=2", 3, False),
    ],
)
def test_room_member_count(is_: str, count: int, matches: bool) -> None:
    ruleset = with_rule(
        "override", "r", {"conditions": [{"kind": "room_member_count", "is": is_}], "actions": ["notify"]}
    )
    assert (evaluate(message("x"), ruleset, members=count)[0] == "r") is matches


def test_unknown_condition_kinds_never_match() -> None:
    ruleset = with_rule(
        "override", "r", {"conditions": [{"kind": "org.example.future"}], "actions": ["notify"]}
    )
    assert evaluate(message("x"), ruleset)[0] == ".m.rule.message"


# Kind order, actions ----------------------------------------------------------------------------


def test_kinds_are_evaluated_override_content_room_sender_underride() -> None:
    ruleset = effective_rules(None, ME)
    put_rule(
        ruleset,
        "underride",
        "u",
        {"conditions": [], "actions": ["notify", {"set_tweak": "sound", "value": "u"}]},
        None,
        None,
    )
    put_rule(
        ruleset, "sender", OTHER, {"actions": ["notify", {"set_tweak": "sound", "value": "s"}]}, None, None
    )
    assert evaluate(message("x"), ruleset)[0] == OTHER  # sender beats underride
    put_rule(ruleset, "room", ROOM, {"actions": []}, None, None)
    rule, outcome = evaluate(message("x"), ruleset)
    assert rule == ROOM and not outcome.notify  # a muted room: room beats sender
    put_rule(
        ruleset,
        "content",
        "kw",
        {"pattern": "deploy", "actions": ["notify", {"set_tweak": "highlight"}]},
        None,
        None,
    )
    rule, outcome = evaluate(message("deploy now"), ruleset)
    assert rule == "kw" and outcome.highlight  # content beats room: the keyword still highlights
    put_rule(ruleset, "override", "o", {"conditions": [], "actions": []}, None, None)
    assert evaluate(message("deploy now"), ruleset)[0] == "o"


def test_historical_actions_are_ignored_and_tweaks_collected() -> None:
    ruleset = with_rule("override", "r", {"conditions": [], "actions": ["dont_notify", "coalesce"]})
    rule, outcome = evaluate(message("x"), ruleset)
    assert rule == "r" and not outcome.notify and outcome.actions == ()
    ruleset = with_rule(
        "override",
        "r",
        {
            "conditions": [],
            "actions": [
                "notify",
                {"set_tweak": "sound", "value": "bell"},
                {"set_tweak": "highlight", "value": False},
            ],
        },
    )
    _, outcome = evaluate(message("x"), ruleset)
    assert outcome.tweaks == {"sound": "bell", "highlight": False} and not outcome.highlight


def test_disabled_rules_are_skipped() -> None:
    ruleset = effective_rules(None, ME)
    for rule in ruleset["global"]["underride"]:
        if rule["rule_id"] == ".m.rule.message":
            rule["enabled"] = False
    assert not evaluate(message("x"), ruleset)[1].notify


def test_every_default_user_shares_one_plan_per_event() -> None:
    from homeserver.core.push_rules import PushRuleService

    program = PushRuleService.__new__(PushRuleService)
    PushRuleService.__init__(program, SimpleNamespace(on_put=[]))  # type: ignore[arg-type]
    shared = program.default_program
    state = room_state(members=5, names={OTHER: "Bob"})
    facts = EventFacts(message("hey bob and u0"), state, "11")
    assert shared.plan(facts) is shared.plan(facts)
    outcomes = {u: shared.evaluate(facts, u) for u in (ME, OTHER, "@u0:example.org", "@u1:example.org")}
    assert outcomes[OTHER].highlight and outcomes["@u0:example.org"].highlight
    assert not outcomes[ME].highlight and not outcomes["@u1:example.org"].highlight


def test_rules_naming_another_type_are_not_evaluated_and_types_match_as_before() -> None:
    # A rule requiring one exact event type is only tried on events of that type (the inline
    # unread pass plans every message): the outcomes stay what the spec's walk gives.
    ruleset = with_rule("override", "glob", {"conditions": [type_is("org.example.*")], "actions": ["notify"]})
    put_rule(
        ruleset, "override", "exact", {"conditions": [type_is("ORG.Example.Ping")], "actions": []}, None, None
    )
    program = compile_rules(ruleset["global"], ME)
    state = room_state(members=2)
    counted: dict[str, int] = {}

    def plan(pdu: dict[str, Any]) -> tuple[str | None, Any]:
        facts = EventFacts(pdu, state, "11")
        found = program.plan(facts).match(facts, ME)
        counted[str(pdu.get("type"))] = len(facts._conds)
        return found

    assert plan(message("hi"))[0] == ".m.rule.room_one_to_one"
    assert counted["m.room.message"] == 8  # conditions tried; the walk over every rule: 15
    assert plan({**message("hi"), "type": "M.Room.Message"})[0] == ".m.rule.room_one_to_one"
    assert (
        plan({"type": "org.example.ping", "sender": OTHER, "content": {}})[0] == "exact"
    )  # case-insensitive
    assert plan({"type": "org.example.other", "sender": OTHER, "content": {}})[0] == "glob"
    assert plan({"type": "m.room.member", "sender": OTHER, "state_key": OTHER, "content": {}})[0] == (
        ".m.rule.member_event"
    )
    assert (
        plan({"type": 7, "sender": OTHER, "content": {"msgtype": "m.notice"}})[0]
        == ".m.rule.suppress_notices"
    )
    assert plan({"type": 7, "sender": OTHER, "content": {}}) == (
        None,
        plan({"sender": OTHER, "content": {}})[1],
    )


def type_is(pattern: str) -> dict[str, str]:
    return {"kind": "event_match", "key": "type", "pattern": pattern}


# Edits and their ordering ------------------------------------------------------------------------


def ids(ruleset: dict[str, Any], kind: str) -> list[str]:
    return [r["rule_id"] for r in ruleset["global"][kind]]


def test_new_rules_go_first_and_before_after_place_them() -> None:
    rs = effective_rules(None, ME)
    put_rule(rs, "override", "a", {"actions": []}, None, None)
    put_rule(rs, "override", "b", {"actions": []}, None, None)
    assert ids(rs, "override")[:3] == [".m.rule.master", "b", "a"]
    put_rule(rs, "override", "c", {"actions": []}, None, "a")
    put_rule(rs, "override", "d", {"actions": []}, "b", None)
    assert ids(rs, "override")[:5] == [".m.rule.master", "d", "b", "a", "c"]
    put_rule(rs, "override", "d", {"actions": ["notify"]}, None, None)  # an update stays put
    assert ids(rs, "override")[1] == "d"
    with pytest.raises(MatrixError) as e:
        put_rule(rs, "override", "e", {"actions": []}, "nope", None)
    assert (e.value.status, e.value.errcode) == (400, "M_UNKNOWN")
    with pytest.raises(MatrixError) as e:
        put_rule(rs, "override", "e", {"actions": []}, ".m.rule.master", None)
    assert e.value.errcode == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    ("kind", "rule_id", "body", "errcode"),
    [
        ("override", ".mine", {"actions": []}, "M_INVALID_PARAM"),
        ("override", "a/b", {"actions": []}, "M_INVALID_PARAM"),
        ("override", "a", {}, "M_MISSING_PARAM"),
        ("override", "a", {"actions": "notify"}, "M_BAD_JSON"),
        ("override", "a", {"actions": ["shout"]}, "M_INVALID_PARAM"),
        ("override", "a", {"actions": [{"set_tweak": "highlight", "value": "yes"}]}, "M_INVALID_PARAM"),
        ("override", "a", {"actions": [], "conditions": {}}, "M_BAD_JSON"),
        (
            "override",
            "a",
            {"actions": [], "conditions": [{"kind": "event_match", "key": "type"}]},
            "M_MISSING_PARAM",
        ),
        (
            "override",
            "a",
            {"actions": [], "conditions": [{"kind": "room_member_count", "is": "~2"}]},
            "M_INVALID_PARAM",
        ),
        (
            "override",
            "a",
            {"actions": [], "conditions": [{"kind": "event_property_is", "key": "k", "value": [1]}]},
            "M_INVALID_PARAM",
        ),
        (
            "override",
            "a",
            {"actions": [], "conditions": [{"kind": "event_property_is", "key": "k", "value": 2**60}]},
            "M_INVALID_PARAM",
        ),
        ("content", "a", {"actions": []}, "M_MISSING_PARAM"),
        ("room", "not-a-room", {"actions": []}, "M_INVALID_PARAM"),
        ("sender", "bob", {"actions": []}, "M_INVALID_PARAM"),
    ],
)
def test_bad_rules_are_refused(kind: str, rule_id: str, body: dict[str, Any], errcode: str) -> None:
    with pytest.raises(MatrixError) as e:
        put_rule(effective_rules(None, ME), kind, rule_id, body, None, None)
    assert (e.value.status, e.value.errcode) == (400, errcode)


def test_stored_rules_are_laid_over_the_current_defaults() -> None:
    # An old stored ruleset: a missing default rule appears, a changed one keeps its state.
    stored = {
        "global": {
            "override": [
                {"rule_id": "mine", "default": False, "enabled": True, "conditions": [], "actions": []},
                {
                    "rule_id": ".m.rule.suppress_notices",
                    "default": True,
                    "enabled": False,
                    "conditions": [],
                    "actions": [],
                },
            ],
            "content": [],
            "room": "junk",
        }
    }
    rs = effective_rules(stored, ME)
    assert ids(rs, "override")[:3] == [".m.rule.master", "mine", ".m.rule.suppress_notices"]
    assert ".m.rule.room.server_acl" in ids(rs, "override")
    assert rs["global"]["override"][2]["enabled"] is False
    assert ids(rs, "content") == [".m.rule.contains_user_name"]
    assert rs["global"]["room"] == []


def test_split_path_escapes() -> None:
    assert split_path("content.m\\.relates_to.rel_type") == ("content", "m.relates_to", "rel_type")
    assert split_path("a\\\\.b") == ("a\\", "b")
    assert split_path("a\\x") == ("a\\x",)
