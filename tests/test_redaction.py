"""The redaction algorithm for room versions 10 and 11 (homeserver.events.redaction)."""

from typing import Any

import pytest

from homeserver.events.redaction import KNOWN_ROOM_VERSIONS, UnsupportedRoomVersion, redact

COMMON_TOP_LEVEL = {
    "event_id": "$ev",
    "type": "m.room.message",
    "room_id": "!r:example.org",
    "sender": "@u:example.org",
    "state_key": "",
    "hashes": {"sha256": "abc"},
    "signatures": {"example.org": {"ed25519:1": "sig"}},
    "depth": 4,
    "prev_events": ["$p"],
    "auth_events": ["$a"],
    "origin_server_ts": 1234,
}
V10_ONLY_TOP_LEVEL = {"origin": "example.org", "membership": "join", "prev_state": []}
UNPROTECTED_TOP_LEVEL = {"unsigned": {"age": 1}, "redacts": "$target", "age_ts": 5, "custom": True}


def make_event(event_type: str, content: Any) -> dict[str, Any]:
    return {
        **COMMON_TOP_LEVEL,
        **V10_ONLY_TOP_LEVEL,
        **UNPROTECTED_TOP_LEVEL,
        "type": event_type,
        "content": content,
    }


def test_known_room_versions() -> None:
    assert KNOWN_ROOM_VERSIONS == {"10", "11", "12"}


@pytest.mark.parametrize("room_version", ["1", "9", "13", "org.example.custom", ""])
def test_unknown_room_version_raises(room_version: str) -> None:
    with pytest.raises(UnsupportedRoomVersion) as info:
        redact(make_event("m.room.message", {}), room_version)
    assert isinstance(info.value, ValueError)
    assert info.value.room_version == room_version


# --- top-level keys --------------------------------------------------------------------


def test_v10_top_level_keys() -> None:
    redacted = redact(make_event("m.room.message", {"body": "x"}), "10")
    assert redacted == {**COMMON_TOP_LEVEL, **V10_ONLY_TOP_LEVEL, "content": {}}


def test_v11_top_level_keys_drop_origin_membership_prev_state() -> None:
    redacted = redact(make_event("m.room.message", {"body": "x"}), "11")
    assert redacted == {**COMMON_TOP_LEVEL, "content": {}}


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_content_always_present(room_version: str) -> None:
    event = {k: v for k, v in make_event("m.room.message", {}).items() if k != "content"}
    assert redact(event, room_version)["content"] == {}
    assert redact(make_event("m.room.member", "not an object"), room_version)["content"] == {}


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_redact_returns_deep_copy(room_version: str) -> None:
    event = make_event("m.room.power_levels", {"users": {"@u:example.org": 100}})
    redacted = redact(event, room_version)
    redacted["signatures"]["other"] = {}
    redacted["content"]["users"]["@m:example.org"] = 50
    assert event["signatures"] == {"example.org": {"ed25519:1": "sig"}}
    assert event["content"]["users"] == {"@u:example.org": 100}


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_redaction_is_idempotent(room_version: str) -> None:
    for event_type, content in CONTENT_CASES:
        once = redact(make_event(event_type, content), room_version)
        assert redact(once, room_version) == once


# --- content keys ----------------------------------------------------------------------

MEMBER_CONTENT = {
    "membership": "invite",
    "join_authorised_via_users_server": "@admin:example.org",
    "displayname": "Alice",
    "avatar_url": "mxc://example.org/a",
    "third_party_invite": {"display_name": "a...@example.com", "signed": {"mxid": "@a:b", "token": "t"}},
}
CREATE_CONTENT = {"creator": "@u:example.org", "room_version": "10", "m.federate": False, "type": "m.space"}
JOIN_RULES_CONTENT = {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "extra": 1}
POWER_LEVELS_CONTENT = {
    "ban": 50,
    "events": {"m.room.name": 50},
    "events_default": 0,
    "invite": 0,
    "kick": 50,
    "redact": 50,
    "state_default": 50,
    "users": {"@u:example.org": 100},
    "users_default": 0,
    "notifications": {"room": 50},
}
HISTORY_CONTENT = {"history_visibility": "shared", "extra": 1}
REDACTION_CONTENT = {"redacts": "$target", "reason": "spam"}
MESSAGE_CONTENT = {"body": "hi", "msgtype": "m.text", "m.relates_to": {"rel_type": "m.thread"}}

CONTENT_CASES = [
    ("m.room.member", MEMBER_CONTENT),
    ("m.room.create", CREATE_CONTENT),
    ("m.room.join_rules", JOIN_RULES_CONTENT),
    ("m.room.power_levels", POWER_LEVELS_CONTENT),
    ("m.room.history_visibility", HISTORY_CONTENT),
    ("m.room.redaction", REDACTION_CONTENT),
    ("m.room.message", MESSAGE_CONTENT),
    ("m.room.name", {"name": "Room"}),
    ("m.room.aliases", {"aliases": ["#a:example.org"]}),  # kept only in room v1-v5
]

V10_EXPECTED = {
    "m.room.member": {"membership": "invite", "join_authorised_via_users_server": "@admin:example.org"},
    "m.room.create": {"creator": "@u:example.org"},
    "m.room.join_rules": {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
    "m.room.power_levels": {
        k: v for k, v in POWER_LEVELS_CONTENT.items() if k not in {"invite", "notifications"}
    },
    "m.room.history_visibility": {"history_visibility": "shared"},
    "m.room.redaction": {},
    "m.room.message": {},
    "m.room.name": {},
    "m.room.aliases": {},
}

V11_EXPECTED = {
    **V10_EXPECTED,
    "m.room.member": {
        "membership": "invite",
        "join_authorised_via_users_server": "@admin:example.org",
        "third_party_invite": {"signed": {"mxid": "@a:b", "token": "t"}},
    },
    "m.room.create": CREATE_CONTENT,
    "m.room.power_levels": {k: v for k, v in POWER_LEVELS_CONTENT.items() if k != "notifications"},
    "m.room.redaction": {"redacts": "$target"},
}


@pytest.mark.parametrize(("event_type", "content"), CONTENT_CASES)
def test_v10_content(event_type: str, content: dict[str, Any]) -> None:
    assert redact(make_event(event_type, content), "10")["content"] == V10_EXPECTED[event_type]


@pytest.mark.parametrize(("event_type", "content"), CONTENT_CASES)
def test_v11_content(event_type: str, content: dict[str, Any]) -> None:
    assert redact(make_event(event_type, content), "11")["content"] == V11_EXPECTED[event_type]


def test_v11_third_party_invite_without_signed_kept_empty() -> None:
    # Spec is silent; mirrors Synapse so signatures/event IDs agree across implementations.
    content = {"membership": "invite", "third_party_invite": {"display_name": "x"}}
    assert redact(make_event("m.room.member", content), "11")["content"] == {
        "membership": "invite",
        "third_party_invite": {},
    }


def test_v11_third_party_invite_non_object_dropped() -> None:
    content = {"membership": "invite", "third_party_invite": "junk"}
    assert redact(make_event("m.room.member", content), "11")["content"] == {"membership": "invite"}


def test_v11_redaction_drops_top_level_redacts() -> None:
    # v11 moved `redacts` into content; the old top-level key is not protected in either version.
    for room_version in ("10", "11"):
        assert "redacts" not in redact(make_event("m.room.redaction", REDACTION_CONTENT), room_version)


def test_content_keys_missing_are_not_invented() -> None:
    for room_version in ("10", "11"):
        assert redact(make_event("m.room.power_levels", {"ban": 50}), room_version)["content"] == {"ban": 50}
