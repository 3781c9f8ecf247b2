"""Event signing (homeserver.events.signing) and the signing key file (homeserver.signing_key)."""

import os
import pathlib
import stat
from typing import Any

import pytest
from signedjson.key import decode_signing_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from homeserver.events.canonical import decode_base64, encode_base64, encode_canonical_json
from homeserver.events.hashing import check_content_hash, compute_event_id
from homeserver.events.redaction import UnsupportedRoomVersion, redact
from homeserver.events.signing import InvalidSignature, sign_event, sign_event_with_id, verify_event_signature
from homeserver.signing_key import key_id, load_or_create_signing_key, verify_key_base64

# Spec appendices, "Cryptographic Test Vectors": seed, server name and key ID.
SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SERVER = "domain"
# Public key for SEED, as also used by other implementations' tests of the same vectors.
SEED_PUBLIC_KEY = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"


@pytest.fixture
def spec_key() -> SigningKey:
    return decode_signing_key_base64("ed25519", "1", SEED)


def minimal_event() -> dict[str, Any]:
    return {
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


def message_event() -> dict[str, Any]:
    return {
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


# --- spec vectors ----------------------------------------------------------------------


def test_spec_json_signing_vectors(spec_key: SigningKey) -> None:
    # Appendices "JSON Signing": signing {} and {"one": 1, "two": "Two"}.
    assert sign_json({}, SERVER, spec_key) == {
        "signatures": {
            "domain": {
                "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
            }
        }
    }
    assert sign_json({"one": 1, "two": "Two"}, SERVER, spec_key) == {
        "one": 1,
        "signatures": {
            "domain": {
                "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
            }
        },
        "two": "Two",
    }


def test_spec_minimal_event_vector(spec_key: SigningKey) -> None:
    # Appendices "Event Signing". The vector predates room v11 and keeps `origin`, so it is
    # reproduced under room version 10's redaction rules.
    signed = sign_event(minimal_event(), SERVER, spec_key, "10")
    assert signed == {
        "auth_events": [],
        "content": {},
        "depth": 3,
        "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
        "origin": "domain",
        "origin_server_ts": 1000000,
        "prev_events": [],
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "signatures": {
            "domain": {
                "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
            }
        },
        "type": "X",
        "unsigned": {"age_ts": 1000000},
    }


def test_spec_redactable_event_vector(spec_key: SigningKey) -> None:
    signed = sign_event(message_event(), SERVER, spec_key, "10")
    assert signed == {
        **message_event(),
        "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
        "signatures": {
            "domain": {
                "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
            }
        },
    }


def test_v11_signs_redacted_form_without_origin(spec_key: SigningKey) -> None:
    # No spec vector for v11: check the signature is over the hand-written v11 redacted form.
    signed = sign_event(minimal_event(), SERVER, spec_key, "11")
    expected_bytes = (
        b'{"auth_events":[],"content":{},"depth":3,'
        b'"hashes":{"sha256":"5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},'
        b'"origin_server_ts":1000000,"prev_events":[],"room_id":"!x:domain",'
        b'"sender":"@a:domain","type":"X"}'
    )
    redacted = redact(signed, "11")
    del redacted["signatures"]
    assert encode_canonical_json(redacted) == expected_bytes
    raw_signature = spec_key.sign(expected_bytes).signature
    assert signed["signatures"] == {SERVER: {"ed25519:1": encode_base64(raw_signature)}}


# --- round trips -----------------------------------------------------------------------


@pytest.fixture
def key() -> SigningKey:
    return generate_signing_key("a_test")


def room_event() -> dict[str, Any]:
    return {
        "auth_events": ["$create", "$power", "$member"],
        "content": {"body": "hello", "msgtype": "m.text"},
        "depth": 12,
        "origin_server_ts": 1700000000000,
        "prev_events": ["$prev"],
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "type": "m.room.message",
        "unsigned": {"age": 5},
    }


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_sign_then_verify(key: SigningKey, room_version: str) -> None:
    event = room_event()
    signed = sign_event(event, "example.org", key, room_version)
    assert event == room_event()  # input untouched
    assert check_content_hash(signed)
    assert set(signed["signatures"]["example.org"]) == {"ed25519:a_test"}
    verify_event_signature(signed, "example.org", get_verify_key(key), room_version)


@pytest.mark.parametrize("room_version", ["10", "11"])
def test_signature_survives_redaction_and_unsigned_changes(key: SigningKey, room_version: str) -> None:
    signed = sign_event(room_event(), "example.org", key, room_version)
    verify_key = get_verify_key(key)
    verify_event_signature(redact(signed, room_version), "example.org", verify_key, room_version)
    verify_event_signature({**signed, "unsigned": {"age": 1000}}, "example.org", verify_key, room_version)
    # Content tampering is not a signature failure but a content hash failure (spec: the
    # receiver then uses the redacted copy).
    tampered = {**signed, "content": {"body": "evil", "msgtype": "m.text"}}
    verify_event_signature(tampered, "example.org", verify_key, room_version)
    assert not check_content_hash(tampered)


@pytest.mark.parametrize("room_version", ["10", "11"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender", "@mallory:example.org"),
        ("depth", 13),
        ("prev_events", ["$other"]),
        ("hashes", {"sha256": "AAAA"}),
        ("type", "m.room.name"),
    ],
)
def test_tampered_protected_field_fails(key: SigningKey, room_version: str, field: str, value: Any) -> None:
    signed = sign_event(room_event(), "example.org", key, room_version)
    with pytest.raises(InvalidSignature):
        verify_event_signature({**signed, field: value}, "example.org", get_verify_key(key), room_version)


def test_verify_fails_for_wrong_server_key_or_missing_signature(key: SigningKey) -> None:
    signed = sign_event(room_event(), "example.org", key, "11")
    verify_key = get_verify_key(key)
    with pytest.raises(InvalidSignature):
        verify_event_signature(signed, "other.org", verify_key, "11")
    with pytest.raises(InvalidSignature):
        verify_event_signature(signed, "example.org", get_verify_key(generate_signing_key("a_test")), "11")
    with pytest.raises(InvalidSignature):
        verify_event_signature({**signed, "signatures": {}}, "example.org", verify_key, "11")
    bad = {**signed, "signatures": {"example.org": {"ed25519:a_test": "!!!"}}}
    with pytest.raises(InvalidSignature):
        verify_event_signature(bad, "example.org", verify_key, "11")


def test_origin_is_protected_in_v10_only(key: SigningKey) -> None:
    event = {**room_event(), "origin": "example.org"}
    for room_version, protected in (("10", True), ("11", False)):
        signed = sign_event(event, "example.org", key, room_version)
        moved = {**signed, "origin": "elsewhere.org"}
        if protected:
            with pytest.raises(InvalidSignature):
                verify_event_signature(moved, "example.org", get_verify_key(key), room_version)
        else:
            verify_event_signature(moved, "example.org", get_verify_key(key), room_version)


def test_signing_is_per_room_version(key: SigningKey) -> None:
    signed_v10 = sign_event({**room_event(), "origin": "example.org"}, "example.org", key, "10")
    with pytest.raises(InvalidSignature):
        verify_event_signature(signed_v10, "example.org", get_verify_key(key), "11")


def test_cosigning_keeps_existing_signatures(key: SigningKey) -> None:
    other = generate_signing_key("b_other")
    signed = sign_event(room_event(), "example.org", key, "11")
    cosigned = sign_event(signed, "resident.org", other, "11")
    verify_event_signature(cosigned, "example.org", get_verify_key(key), "11")
    verify_event_signature(cosigned, "resident.org", get_verify_key(other), "11")
    assert signed["signatures"].keys() == {"example.org"}  # first copy untouched


def test_event_id_unaffected_by_signing(key: SigningKey) -> None:
    signed = sign_event(room_event(), "example.org", key, "11")
    cosigned = sign_event(signed, "resident.org", generate_signing_key("b"), "11")
    assert compute_event_id(signed, "11") == compute_event_id(cosigned, "11")


@pytest.mark.parametrize("room_version", ["10", "11", "12"])
@pytest.mark.parametrize(
    "extra",
    [{}, {"unsigned": {"age_ts": 5}, "age_ts": 5}, {"event_id": "$given"}, {"origin": "example.org"}],
)
def test_sign_event_with_id_is_sign_event_then_compute_event_id(
    key: SigningKey, room_version: str, extra: dict[str, Any]
) -> None:
    # The ID comes from the bytes just signed: it must still be the reference hash, also
    # when a key redaction keeps (event_id) or drops (unsigned, age_ts) is on the event.
    event = {**room_event(), **extra}
    signed, event_id = sign_event_with_id(event, "example.org", key, room_version)
    assert signed == sign_event(event, "example.org", key, room_version)
    assert event_id == compute_event_id(signed, room_version)


def test_unknown_room_version(key: SigningKey) -> None:
    with pytest.raises(UnsupportedRoomVersion):
        sign_event(room_event(), "example.org", key, "9")
    with pytest.raises(UnsupportedRoomVersion):
        verify_event_signature(room_event(), "example.org", get_verify_key(key), "13")


# --- signing key file ------------------------------------------------------------------


def test_signing_key_created_once_with_mode_0600(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys" / "nested" / "signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["signing.key"]  # no temporary files left behind

    algorithm, version, seed = path.read_text().split()
    assert algorithm == "ed25519"
    assert len(decode_base64(seed)) == 32 and "=" not in seed
    assert version.startswith("a_") and len(version) == 6 and version[2:].isalnum()
    assert key_id(key) == f"ed25519:{version}"

    before = path.read_bytes()
    again = load_or_create_signing_key(path)
    assert path.read_bytes() == before  # not rewritten
    assert key_id(again) == key_id(key)
    assert bytes(again) == bytes(key)
    assert verify_key_base64(again) == verify_key_base64(key)


def test_signing_key_reads_synapse_format(tmp_path: pathlib.Path, spec_key: SigningKey) -> None:
    path = tmp_path / "homeserver.signing.key"
    path.write_text(f"ed25519 1 {SEED}\n")
    key = load_or_create_signing_key(path)
    assert key_id(key) == "ed25519:1"
    assert verify_key_base64(key) == SEED_PUBLIC_KEY
    assert sign_event(minimal_event(), SERVER, key, "10") == sign_event(
        minimal_event(), SERVER, spec_key, "10"
    )


def test_signing_key_random_versions_differ(tmp_path: pathlib.Path) -> None:
    ids = {key_id(load_or_create_signing_key(tmp_path / f"{i}.key")) for i in range(5)}
    assert len(ids) > 1


@pytest.mark.parametrize("text", ["", "\n", "ed25519 only-two\n", "rsa 1 AAAA\n", "ed25519 1 !!!\n"])
def test_signing_key_malformed_file_is_not_replaced(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "signing.key"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_or_create_signing_key(path)
    assert path.read_text() == text
