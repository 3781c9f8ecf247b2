"""Globs from other people (server ACL entries, push rule patterns) are matched without a
backtracking regex: the same answers as the regex reading of the spec, and the patterns
that once took minutes (Synapse's CVE-2021-29471, CVE-2023-45129) answer at once."""

from __future__ import annotations

import random
import re

from homeserver.core.federation.server_acl import server_allowed
from homeserver.core.globs import glob_fullmatch, glob_search_words
from homeserver.core.push_eval import EventFacts, compile_condition

WORD = "[0-9A-Za-z_]"


def _reference(glob: str, words: bool) -> re.Pattern[str]:
    # The regex reading of a glob: right, and exponential on the inputs below.
    body = "".join(".*?" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"(?<!{WORD}){body}(?!{WORD})" if words else body, re.DOTALL)


def test_the_same_answers_as_the_regex_reading_on_small_inputs() -> None:
    rng = random.Random(18)
    alphabet = "ab .*?"
    for _ in range(20_000):
        glob = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice("ab .") for _ in range(rng.randint(0, 9)))
        full = _reference(glob, False).fullmatch(text) is not None
        assert glob_fullmatch(glob, text) is full, (glob, text)
        found = _reference(glob, True).search(text) is not None
        assert glob_search_words(glob, text) is found, (glob, text)


def test_a_hostile_server_acl_entry_is_answered_at_once() -> None:
    # `*a*a*...*b` against a long name of a's: the regex reading backtracks for minutes
    # (twelve stars on a 250-character name: longer than the universe), stalling every
    # federation request of the room.
    hostile = "*a" * 12 + "*b"
    name = "a" * 250 + ".example"
    assert not server_allowed(name, {"allow": [hostile]})
    assert server_allowed(name, {"allow": [hostile, "*"]})
    assert not server_allowed(name, {"allow": ["*"], "deny": ["*a*a*a*a*a*a*a*a*a*a*a*a*.example"]})
    # A few thousand entries, every one hostile: each is one forward pass.
    assert not server_allowed(name, {"allow": [hostile + str(i) for i in range(3000)]})


def test_a_hostile_push_pattern_is_answered_at_once() -> None:
    hostile = "*a" * 12 + "*b"
    condition = compile_condition({"kind": "event_match", "key": "content.body", "pattern": hostile})
    on_msgtype = compile_condition({"kind": "event_match", "key": "content.msgtype", "pattern": hostile})
    assert not condition.test(EventFacts({"content": {"body": "A " * 30_000}}, {}, "10"))
    assert condition.test(EventFacts({"content": {"body": "A" * 3000 + "b"}}, {}, "10"))
    assert not on_msgtype.test(EventFacts({"content": {"msgtype": "a" * 60_000}}, {}, "10"))
    assert glob_search_words(hostile, "a " * 30_000) is False
    assert glob_search_words(hostile, "a" * 30 + "bc") is False  # the b must end a word
    assert glob_search_words(hostile, "a" * 30 + "b") is True
    assert glob_fullmatch(hostile, "a" * 60_000) is False


def test_long_globs_are_matched_but_not_kept() -> None:
    # Globs come from others: thousands of distinct 60 KB patterns must not stay in memory.
    from homeserver.core import globs

    before = globs._plain_cached.cache_info().currsize
    for i in range(50):
        long_glob = f"{i}*" + "x" * 60_000
        assert glob_fullmatch(long_glob, f"{i}yy" + "x" * 60_000)
    assert glob_fullmatch("short*glob", "short and glob")
    assert globs._plain_cached.cache_info().currsize <= before + 1
