"""Content hashes and event IDs (homeserver.events.hashing, homeserver.events.canonical)."""

import base64
import hashlib
from typing import Any

import pytest

from homeserver.events.canonical import (
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    encode_canonical_json,
)
from homeserver.events.hashing import (
    add_content_hash,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
)
from homeserver.events.redaction import UnsupportedRoomVersion

# Spec appendices, "Cryptographic Test Vectors" / "Event Signing": the minimal event and the
# event with redactable content, with their expected `hashes.sha256`.
MINIMAL_EVENT: dict[str, Any] = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}
MINIMAL_EVENT_HASH = "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"

MESSAGE_EVENT: dict[str, Any] = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {"age_ts": 1000000},
}
MESSAGE_EVENT_HASH = "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"

PDU_V11: dict[str, Any] = {
    "auth_events": ["$create", "$power", "$member"],
    "content": {"body": "hello", "msgtype": "m.text"},
    "depth": 12,
    "hashes": {"sha256": "placeholder"},
    "origin_server_ts": 1700000000000,
    "prev_events": ["$prev"],
    "room_id": "!room:example.org",
    "sender": "@alice:example.org",
    "signatures": {"example.org": {"ed25519:a_abcd": "sig"}},
    "type": "m.room.message",
    "unsigned": {"age": 5},
}


# --- canonical JSON and base64 ---------------------------------------------------------


def test_canonical_json_sorts_keys_and_is_compact() -> None:
    assert encode_canonical_json({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}'
    assert encode_canonical_json({"one": 1, "two": "Two"}) == b'{"one":1,"two":"Two"}'


def test_canonical_json_keeps_unicode_as_utf8() -> None:
    # Spec "Canonical JSON": no \u escapes for non-ASCII characters.
    assert encode_canonical_json({"a": "日本語"}) == '{"a":"日本語"}'.encode()


def test_base64_is_unpadded_and_round_trips() -> None:
    data = bytes(range(250, 256))  # contains bytes that differ between the two alphabets
    assert encode_base64(b"\x00") == "AA"
    assert "=" not in encode_base64(data)
    assert encode_base64(data) == base64.b64encode(data).decode().rstrip("=")
    assert encode_base64_urlsafe(data) == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert decode_base64(encode_base64(data)) == data
    assert decode_base64(encode_base64_urlsafe(data)) == data


# --- content hash ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"), [(MINIMAL_EVENT, MINIMAL_EVENT_HASH), (MESSAGE_EVENT, MESSAGE_EVENT_HASH)]
)
def test_content_hash_matches_spec_vectors(event: dict[str, Any], expected: str) -> None:
    assert compute_content_hash(event) == expected


def test_content_hash_ignores_unsigned_signatures_and_hashes() -> None:
    changed = {
        **MINIMAL_EVENT,
        "unsigned": {"age": 1},
        "signatures": {"x": {"ed25519:1": "y"}},
        "hashes": {"sha256": "z"},
    }
    assert compute_content_hash(changed) == MINIMAL_EVENT_HASH


def test_content_hash_covers_unredacted_content() -> None:
    changed = {**MESSAGE_EVENT, "content": {"body": "Something else"}}
    assert compute_content_hash(changed) != MESSAGE_EVENT_HASH


def test_add_content_hash_returns_copy_and_keeps_other_algorithms() -> None:
    event = {**MINIMAL_EVENT, "hashes": {"sha512": "other"}}
    hashed = add_content_hash(event)
    assert hashed["hashes"] == {"sha256": MINIMAL_EVENT_HASH, "sha512": "other"}
    assert event["hashes"] == {"sha512": "other"}  # input untouched
    assert check_content_hash(hashed)


def test_check_content_hash_detects_mismatch() -> None:
    hashed = add_content_hash(MESSAGE_EVENT)
    assert check_content_hash(hashed)
    tampered = {**hashed, "content": {"body": "Here is the tampered content"}}
    assert not check_content_hash(tampered)
    # A redacted copy no longer matches: the spec says to keep using the redacted form.
    assert not check_content_hash({**hashed, "content": {}})


@pytest.mark.parametrize(
    "hashes",
    [None, {}, {"sha256": 42}, {"sha256": "not base64!"}, {"sha256": "é"}, "sha256"],
)
def test_check_content_hash_rejects_missing_or_malformed_hash(hashes: Any) -> None:
    event = {**MINIMAL_EVENT, "hashes": hashes}
    assert not check_content_hash(event)


def test_check_content_hash_accepts_padded_spelling() -> None:
    # The spec compares decoded bytes, so a padded encoding of the right digest is fine.
    event = {**MINIMAL_EVENT, "hashes": {"sha256": MINIMAL_EVENT_HASH + "="}}
    assert check_content_hash(event)


# --- reference hash and event ID -------------------------------------------------------


def _independent_event_id(canonical: bytes) -> str:
    digest = hashlib.sha256(canonical).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_event_id_v10_hashes_redacted_event_without_signatures() -> None:
    event = add_content_hash(MESSAGE_EVENT)
    del event["event_id"]
    # Hand-written canonical form of the redacted event: body, unsigned and signatures gone,
    # `origin` kept (v10), `hashes` kept.
    expected = (
        b'{"content":{},"hashes":{"sha256":"onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},'
        b'"origin":"domain","origin_server_ts":1000000,"room_id":"!r:domain",'
        b'"sender":"@u:domain","type":"m.room.message"}'
    )
    assert compute_event_id(event, "10") == _independent_event_id(expected)


def test_event_id_v11_drops_origin() -> None:
    event = add_content_hash(MESSAGE_EVENT)
    del event["event_id"]
    expected = (
        b'{"content":{},"hashes":{"sha256":"onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},'
        b'"origin_server_ts":1000000,"room_id":"!r:domain",'
        b'"sender":"@u:domain","type":"m.room.message"}'
    )
    assert compute_event_id(event, "11") == _independent_event_id(expected)
    assert compute_event_id(event, "11") != compute_event_id(event, "10")


def test_event_id_format() -> None:
    event_id = compute_event_id(PDU_V11, "11")
    assert event_id.startswith("$")
    assert len(event_id) == 1 + 43  # 32-byte digest, unpadded
    assert "+" not in event_id and "/" not in event_id and "=" not in event_id
    assert decode_base64(event_id[1:]) == compute_reference_hash(PDU_V11, "11")


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_event_id_stable_under_unsigned_and_signatures(room_version: str) -> None:
    original = compute_event_id(PDU_V11, room_version)
    variants = [
        {**PDU_V11, "unsigned": {"age": 99999, "transaction_id": "t"}},
        {k: v for k, v in PDU_V11.items() if k != "unsigned"},
        {**PDU_V11, "signatures": {"other.org": {"ed25519:x": "zzz"}}},
        {k: v for k, v in PDU_V11.items() if k != "signatures"},
        {**PDU_V11, "event_id": original},  # a stored copy annotated with its own ID
    ]
    for variant in variants:
        assert compute_event_id(variant, room_version) == original


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_event_id_changes_with_protected_fields(room_version: str) -> None:
    original = compute_event_id(PDU_V11, room_version)
    for key, value in [
        ("hashes", {"sha256": "other"}),
        ("depth", 13),
        ("prev_events", ["$other"]),
        ("sender", "@mallory:example.org"),
    ]:
        assert compute_event_id({**PDU_V11, key: value}, room_version) != original


def test_event_id_does_not_modify_input() -> None:
    snapshot = repr(PDU_V11)
    compute_event_id(PDU_V11, "10")
    assert repr(PDU_V11) == snapshot


@pytest.mark.parametrize("room_version", ["1", "9", "13", ""])
def test_event_id_rejects_unknown_room_versions(room_version: str) -> None:
    with pytest.raises(UnsupportedRoomVersion):
        compute_event_id(PDU_V11, room_version)
