"""Server ACLs (`m.room.server_acl`): the spec's rules and the edge cases behind
Synapse's ACL advisories (IP literals with and without ports and brackets, case, ports
in globs, deny over allow, malformed contents)."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.core.federation.server_acl import server_allowed

SPEC_EXAMPLE: dict[str, Any] = {
    "allow": ["*"],
    "allow_ip_literals": False,
    "deny": ["*.evil.com", "evil.com"],
}


def test_no_acl_event_allows_everyone() -> None:
    assert server_allowed("anything.example", None)
    assert server_allowed("127.0.0.1:8448", None)


@pytest.mark.parametrize(
    ("server", "allowed"),
    [
        ("good.example", True),
        ("good.example:8448", True),
        ("evil.com", False),
        ("sub.evil.com", False),
        ("deep.sub.evil.com:443", False),
        ("notevil.com", True),  # `*.evil.com` needs the dot; `evil.com` is exact
        ("evil.com.good.example", True),
    ],
)
def test_the_spec_example(server: str, allowed: bool) -> None:
    assert server_allowed(server, SPEC_EXAMPLE) is allowed


@pytest.mark.parametrize(
    "server",
    ["1.2.3.4", "1.2.3.4:8448", "[::1]", "[::1]:8448", "[2001:db8::1]:443", "127.0.0.1"],
)
def test_ip_literals_are_refused_with_or_without_a_port(server: str) -> None:
    assert not server_allowed(server, SPEC_EXAMPLE)
    # ... and allowed by default.
    assert server_allowed(server, {"allow": ["*"]})


def test_an_ip_literal_cannot_pass_as_a_name() -> None:
    # Names that only look like addresses are names: refusing literals does not refuse them.
    acl = {"allow": ["*"], "allow_ip_literals": False}
    assert server_allowed("1.2.3.4.example", acl)
    assert server_allowed("1-2-3-4.example", acl)


@pytest.mark.parametrize("server", ["EVIL.COM", "Evil.Com:8448", "SUB.EVIL.com"])
def test_case_does_not_slip_past_a_deny(server: str) -> None:
    assert not server_allowed(server, SPEC_EXAMPLE)


def test_globs_in_the_acl_are_case_insensitive_too() -> None:
    assert not server_allowed("evil.com", {"allow": ["*"], "deny": ["EVIL.*"]})
    assert server_allowed("Good.Example", {"allow": ["good.EXAMPLE"]})


def test_the_port_is_ignored_on_both_sides() -> None:
    # A port in the name never matters; an ACL entry with a port can never match.
    assert not server_allowed("evil.com:1234", {"allow": ["*"], "deny": ["evil.com"]})
    assert not server_allowed("good.example:8448", {"allow": ["good.example:8448"]})


def test_deny_wins_over_allow() -> None:
    assert not server_allowed("both.example", {"allow": ["both.example"], "deny": ["both.example"]})


def test_without_allow_nobody_is_allowed() -> None:
    assert not server_allowed("good.example", {})
    assert not server_allowed("good.example", {"deny": []})
    assert not server_allowed("good.example", {"allow": []})


def test_question_mark_matches_one_character() -> None:
    acl = {"allow": ["server?.example"]}
    assert server_allowed("server1.example", acl)
    assert not server_allowed("server.example", acl)
    assert not server_allowed("server12.example", acl)


def test_other_regex_characters_are_literal() -> None:
    acl = {"allow": ["a.example"]}
    assert not server_allowed("aXexample", acl)
    assert not server_allowed("a.example.evil", acl)
    assert server_allowed("a+b.example", {"allow": ["a+b.example"]})
    assert not server_allowed("aab.example", {"allow": ["a+b.example"]})


def test_malformed_contents_fail_closed_where_they_can() -> None:
    # allow not a list: nobody; entries that are not strings are skipped.
    assert not server_allowed("good.example", {"allow": "*"})
    assert server_allowed("good.example", {"allow": [1, None, "good.example"]})
    assert not server_allowed("evil.com", {"allow": ["*"], "deny": [7, "evil.com"]})
    # A deny that is not a list denies nobody, but allow still has to match.
    assert not server_allowed("x.example", {"allow": ["y.example"], "deny": "x.example"})
    # allow_ip_literals that is not a boolean: the default (true), as Synapse reads it.
    assert server_allowed("1.2.3.4", {"allow": ["*"], "allow_ip_literals": "no"})


def test_a_bracket_without_its_end_is_not_an_ip_literal() -> None:
    acl = {"allow": ["*"], "allow_ip_literals": False}
    assert server_allowed("[::1", acl)  # not a valid server name; not an IP literal either


def test_the_room_state_helper_reads_the_acl_event() -> None:
    from dataclasses import dataclass

    from homeserver.core.federation.server_acl import check_server_allowed, room_acl
    from homeserver.core.room_heads import RoomHead
    from homeserver.errors import Forbidden

    @dataclass
    class Event:
        content: dict[str, Any]

    plain = RoomHead("!r:here", "10")
    assert room_acl(plain) is None
    check_server_allowed("anyone.example", plain)  # no ACL event: everyone
    guarded = RoomHead("!r:here", "10", state={("m.room.server_acl", ""): Event(SPEC_EXAMPLE)})  # type: ignore[dict-item]
    check_server_allowed("good.example:8448", guarded)
    with pytest.raises(Forbidden):
        check_server_allowed("EVIL.com", guarded)
    emptied = RoomHead("!r:here", "10", state={("m.room.server_acl", ""): Event({})})  # type: ignore[dict-item]
    with pytest.raises(Forbidden):
        check_server_allowed("good.example", emptied)
