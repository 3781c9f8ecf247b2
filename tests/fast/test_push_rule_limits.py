"""What one account's push rules may cost everyone else: a rule's patterns are matched
against every message of its owner's rooms, on the send path, and its owner also chooses
the messages (in a room of their own). Patterns and the stored ruleset are bounded, the
matcher's work does not grow in Python with the text, and what one user's rules may read
of one event is bounded too (core/push_eval.py PLAN_BUDGET)."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, make_server

from homeserver.core import globs
from homeserver.core.push_eval import PLAN_BUDGET, EventFacts, compile_rules
from homeserver.core.push_rules import MAX_RULESET_BYTES, default_push_rules

ME = "@alice:example.org"
WORD = "[0-9A-Za-z_]"


def _python_lines(call: Any) -> int:
    """How many lines of core/globs.py run during `call()`."""
    lines = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if frame.f_code.co_filename != globs.__file__:
            return None
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return lines


def test_the_matchers_python_work_does_not_grow_with_the_text() -> None:
    # `?` between literals, and plain stars, against 60 KB of text that almost matches
    # everywhere: a Python loop over the text's places took seconds for one rule.
    hostile = ["*" + "w?" * 100 + "q*", "?" * 200 + "q", "w*x" * 5, "*w?w"]
    for glob in hostile:
        for match in (globs.glob_search_words, globs.glob_fullmatch):
            match(glob, "w " * 1000)  # compiled once, then kept
            short = _python_lines(lambda: match(glob, "w " * 1000))  # noqa: B023
            long = _python_lines(lambda: match(glob, "w " * 30_000))  # noqa: B023
            assert long == short < 100, (glob, match.__name__, short, long)


def _message(body: str) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "sender": "@bob:example.org",
        "room_id": "!r:example.org",
        "content": {"msgtype": "m.text", "body": body},
    }


def _keywords(count: int) -> dict[str, Any]:
    ruleset = default_push_rules(ME)["global"]
    ruleset["content"] = [
        {
            "rule_id": f"k{i}",
            "pattern": f"alpha beta{i}",
            "default": False,
            "enabled": True,
            "actions": ["notify", {"set_tweak": "highlight"}],
        }
        for i in range(count)
    ] + ruleset["content"]
    return ruleset


def test_one_users_rules_read_a_bounded_amount_of_one_event() -> None:
    # 500 keyword rules against a 64 KB body: every one scans the whole body. The last
    # keyword is in it, past what one user's rules may read of one event.
    program = compile_rules(_keywords(500), ME)
    long_body = "x " * 32_000 + "alpha beta499"
    assert 500 * len(long_body) > PLAN_BUDGET
    outcome = program.evaluate(EventFacts(_message(long_body), {}, "11", 3), ME)
    assert not outcome.highlight
    assert outcome.notify  # the server-default rules still ran: .m.rule.message
    # What the budget has left still pays for a cheap condition of the user's own rules.
    cheap = _keywords(500)
    cheap["underride"].insert(
        0,
        {
            "rule_id": "all-messages",
            "default": False,
            "enabled": True,
            "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
            "actions": ["notify", {"set_tweak": "sound", "value": "ding"}],
        },
    )
    outcome = compile_rules(cheap, ME).evaluate(EventFacts(_message(long_body), {}, "11", 3), ME)
    assert outcome.tweaks["sound"] == "ding" and not outcome.highlight
    # The same keyword in an ordinary message is found, as is an early one in the long body.
    assert program.evaluate(EventFacts(_message("so alpha beta499 it is"), {}, "11", 3), ME).highlight
    early = "alpha beta3 " + "x " * 32_000
    assert program.evaluate(EventFacts(_message(early), {}, "11", 3), ME).highlight


def test_the_budget_is_each_users_own() -> None:
    # One user's rules spend their budget on an event; another user's rule on the same
    # event (the same facts, as the send path shares them) is still tested.
    hog = compile_rules(_keywords(500), ME)
    other = compile_rules(
        _keywords(0)
        | {
            "content": [
                {
                    "rule_id": "k",
                    "pattern": "gamma",
                    "default": False,
                    "enabled": True,
                    "actions": ["notify", {"set_tweak": "highlight"}],
                }
            ]
        },
        "@carol:example.org",
    )
    facts = EventFacts(_message("x " * 32_000 + "gamma"), {}, "11", 3)
    assert not hog.evaluate(facts, ME).highlight
    assert other.evaluate(facts, "@carol:example.org").highlight


@pytest_twisted.ensureDeferred
async def test_long_patterns_and_huge_rulesets_are_refused(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        token = (await client.register(hs, "alice"))["access_token"]

        async def put(kind: str, rule_id: str, body: Any) -> tuple[int, dict[str, Any]]:
            return await client.start("PUT", f"{CS}/pushrules/global/{kind}/{quote(rule_id)}", token, body)

        # A keyword, a room's id: far below the bound. 1,001 characters: refused.
        assert (await put("content", "ok", {"pattern": "a" * 1000, "actions": ["notify"]}))[0] == 200
        status, body = await put("content", "long", {"pattern": "a" * 1001, "actions": ["notify"]})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        condition = {"kind": "event_match", "key": "content.body", "pattern": "*a" * 501}
        status, body = await put("override", "long", {"conditions": [condition], "actions": []})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        condition = {"kind": "event_match", "key": "content." + "k" * 1000, "pattern": "a"}
        status, body = await put("override", "long", {"conditions": [condition], "actions": []})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

        # set_tweak values are free-form: the stored ruleset as a whole is bounded.
        tweak = {"set_tweak": "x", "value": "v" * 200_000}
        status = 200
        stored = 0
        while status == 200:
            status, body = await put("override", f"r{stored}", {"actions": ["notify", tweak]})
            stored += status == 200
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        assert stored == MAX_RULESET_BYTES // 200_000
        rules = (await client.call("GET", "/pushrules/", token))["global"]["override"]
        assert f"r{stored - 1}" in {r["rule_id"] for r in rules}
        assert f"r{stored}" not in {r["rule_id"] for r in rules}
        # Shrinking a rule is always allowed.
        status, _ = await client.start(
            "PUT", f"{CS}/pushrules/global/override/r0/actions", token, {"actions": ["notify"]}
        )
        assert status == 200
    finally:
        await hs.stop(None)


class _Member:
    """A member event as a RoomHead holds it."""

    def __init__(self, user_id: str, name: str) -> None:
        self.pdu = {"type": "m.room.member", "state_key": user_id}
        self.content = {"membership": "join", "displayname": name}


def _searches(call: Any) -> int:
    """How many regex searches `call()` runs (each one a scan of the text it is given)."""
    count = 0

    def profiler(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        if event == "c_call" and getattr(arg, "__name__", "") == "search":
            count += 1

    sys.setprofile(profiler)
    try:
        call()
    finally:
        sys.setprofile(None)
    return count


def test_display_names_are_found_without_scanning_the_body_for_each_member() -> None:
    # The default rules look for each recipient's display name in the body. One message
    # naming every member of a big room (two-word names) was one scan of the whole body a
    # member: 2.5 s for 5,000 members and 64 KB, on the send path.
    members = [f"@m{i}:example.org" for i in range(2000)]
    state: dict[tuple[str, str], Any] = {
        ("m.room.member", user): _Member(user, f"First{i} Last{i}") for i, user in enumerate(members)
    }
    named = [i for i in range(2000) if i % 3]  # every third is left out
    body = " ".join(f"first{i} last{i}," for i in named) + " first0 lastx0 first3-last3"
    program = compile_rules(default_push_rules(ME)["global"], ME)
    facts = EventFacts(_message(body), state, "11", len(members))
    plan = program.plan(facts)
    highlighted: list[int] = []
    searches = _searches(
        lambda: highlighted.extend(i for i, user in enumerate(members) if plan.outcome(facts, user).highlight)
    )
    assert highlighted == named
    assert searches < 10


def test_names_in_the_body_read_as_the_spec_says() -> None:
    # The word lookup answers as the regex reading of the boundary rule, on small inputs.
    rng = random.Random(7)
    program = compile_rules(default_push_rules(ME)["global"], ME)
    for _ in range(5000):
        name = "".join(rng.choice("ab _-.") for _ in range(rng.randint(1, 5)))
        body = "".join(rng.choice("abAB _-.\n") for _ in range(rng.randint(0, 14)))
        needle = re.escape(name.lower())
        expected = bool(body) and re.search(f"(?<!{WORD}){needle}(?!{WORD})", body.lower()) is not None
        state = {("m.room.member", ME): _Member(ME, name)}
        outcome = program.evaluate(EventFacts(_message(body), state, "11", 3), ME)
        assert outcome.highlight is expected, (name, body)
