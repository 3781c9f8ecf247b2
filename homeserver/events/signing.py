"""Signing and verifying PDUs (Server-Server API, "Signing Events").

A server signs the *redacted* form of an event (after adding the content hash), so that
the signature still verifies after the event is redacted by anyone. The signature is then
copied back into the full event.
"""

import hashlib
from collections.abc import Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from signedjson.types import SigningKey, VerifyKey

from homeserver.events.canonical import (
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    encode_canonical_event_json,
)
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.redaction import redacted_view


class InvalidSignature(Exception):
    """The event has no valid signature from the expected server with the given key."""


def sign_event(
    pdu: Mapping[str, Any], server_name: str, signing_key: SigningKey, room_version: str
) -> dict[str, Any]:
    """Return a copy of `pdu` with its content hash set and a signature from `server_name`.

    Follows "Adding hashes and signatures to outgoing events": the content hash is
    (re)computed into `hashes.sha256`, the event is redacted under `room_version`'s rules,
    the redacted form is signed with `signing_key` (as `signedjson.sign.sign_json` would),
    and the signature is added to a copy of the event's `signatures`. Signatures already on
    `pdu` (other servers', or other keys of ours) are preserved; `pdu` is not modified.

    `room_version` is required because the redacted form, and so the signed bytes, differ
    between room versions 10 and 11. Raises `UnsupportedRoomVersion` for other versions.
    """
    return _sign(pdu, server_name, signing_key, room_version)[0]


def sign_event_with_id(
    pdu: Mapping[str, Any], server_name: str, signing_key: SigningKey, room_version: str
) -> tuple[dict[str, Any], str]:
    """`sign_event`, and the signed event's ID (`hashing.compute_event_id`).

    The reference hash covers the bytes just signed (the redacted form without `signatures`;
    redaction drops `unsigned` and `age_ts`) unless the event carries an `event_id`, which is
    signed but not hashed: so an event being built costs one encoding instead of two.
    """
    signed, message = _sign(pdu, server_name, signing_key, room_version)
    if "event_id" in signed:
        return signed, compute_event_id(signed, room_version)
    return signed, "$" + encode_base64_urlsafe(hashlib.sha256(message).digest())


def _sign(
    pdu: Mapping[str, Any], server_name: str, signing_key: SigningKey, room_version: str
) -> tuple[dict[str, Any], bytes]:
    """The signed copy of `pdu` and the bytes its new signature covers."""
    hashed = add_content_hash(pdu)
    # What signedjson.sign_json does, over the redacted form without copying it: sign the
    # canonical bytes without `signatures` (and `unsigned`, never kept by redaction).
    redacted = redacted_view(hashed, room_version)
    redacted.pop("signatures", None)
    message = encode_canonical_event_json(redacted)
    signature = signing_key.sign(message).signature
    signatures = {
        name: dict(keys) if isinstance(keys, dict) else keys
        for name, keys in (hashed.get("signatures") or {}).items()
    }
    signatures.setdefault(server_name, {})[f"{signing_key.alg}:{signing_key.version}"] = encode_base64(
        signature
    )
    hashed["signatures"] = signatures
    return hashed, message


def signed_bytes(pdu: Mapping[str, Any], room_version: str) -> bytes:
    """The bytes every server's signature on `pdu` covers: its redacted form without
    `signatures` (redaction drops `unsigned`), in Canonical JSON.

    Encoded by orjson (`encode_canonical_event_json`), as `sign_event` does: the same bytes
    as signedjson's encoder for the integer-only values room versions 6+ allow, and a view
    instead of signedjson's deep copies (the check is on the hot path of every received
    PDU and of each event of a send_join answer).
    """
    redacted = redacted_view(pdu, room_version)
    redacted.pop("signatures", None)
    return encode_canonical_event_json(redacted)


def signature_on(pdu: Mapping[str, Any], server_name: str, key_id: str) -> bytes | None:
    """The signature `server_name` put on `pdu` with `key_id`, decoded; None if it has none
    or it is not base64."""
    signatures = pdu.get("signatures")
    of_server = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    encoded = of_server.get(key_id) if isinstance(of_server, Mapping) else None
    if not isinstance(encoded, str):
        return None
    try:
        return decode_base64(encoded)
    except ValueError:
        return None


def signature_verifies(verify_key: VerifyKey, message: bytes, signature: bytes) -> bool:
    """One ed25519 check. libsodium runs without the GIL, so threads can share this work."""
    try:
        verify_key.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def verify_event_signature(
    pdu: Mapping[str, Any], server_name: str, verify_key: VerifyKey, room_version: str
) -> None:
    """Check that `pdu` carries a valid signature from `server_name` made with `verify_key`.

    Follows "Validating hashes and signatures on received events": the event is redacted
    and the redacted form is checked ("Checking for a signature" in the appendices), so this
    succeeds for the full event and for a redacted copy alike. The key ID checked is
    `<verify_key.alg>:<verify_key.version>`. It does not check the content hash (see
    `hashing.check_content_hash`), nor which servers ought to have signed.

    Raises `InvalidSignature` if the signature is missing, malformed or wrong, and
    `UnsupportedRoomVersion` for unknown room versions.
    """
    key_id = f"{verify_key.alg}:{verify_key.version}"
    message = signed_bytes(pdu, room_version)  # first: an unknown room version raises
    signature = signature_on(pdu, server_name, key_id)
    if signature is None:
        raise InvalidSignature(f"No valid signature for {server_name}, {key_id}")
    if not signature_verifies(verify_key, message, signature):
        raise InvalidSignature(f"Unable to verify signature for {server_name}, {key_id}")
