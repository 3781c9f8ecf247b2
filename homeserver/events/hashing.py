"""Content hashes and event IDs (reference hashes) for room versions 10 and 11.

Two different hashes protect an event (Server-Server API, "Signing Events"):

- the *content hash* covers the whole, unredacted event and is stored inside it, under
  `hashes.sha256`; it tells a receiver whether non-essential fields were altered or removed;
- the *reference hash* covers only the redacted event (which still includes `hashes`, so it
  transitively commits to the full content); in room versions 4+ it *is* the event ID.

Both encode with `encode_canonical_event_json`: an event must have passed
`check_canonical_values` (no floats) first, as room versions 6+ require of every event.
"""

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from homeserver.events.canonical import (
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    encode_canonical_event_json,
)
from homeserver.events.redaction import redacted_view

# Spec "Calculating the content hash for an event": these can change in transit (unsigned),
# depend on the hash (signatures) or hold the hash itself (hashes), so they are excluded.
_CONTENT_HASH_EXCLUDED = ("unsigned", "signatures", "hashes")


def _content_hash_bytes(pdu: Mapping[str, Any]) -> bytes:
    stripped = {k: v for k, v in pdu.items() if k not in _CONTENT_HASH_EXCLUDED}
    return hashlib.sha256(encode_canonical_event_json(stripped)).digest()


def compute_content_hash(pdu: Mapping[str, Any]) -> str:
    """Return the SHA-256 content hash of `pdu`, as unpadded standard base64.

    The hash is over the Canonical JSON of the event without `unsigned`, `signatures` and
    `hashes`; it does not depend on the room version. `pdu` is not modified.
    """
    return encode_base64(_content_hash_bytes(pdu))


def add_content_hash(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """Return a shallow copy of `pdu` whose `hashes.sha256` is its content hash.

    Any other algorithms already under `hashes` are kept (spec: `hashes` may carry several
    algorithms); `pdu` itself is not modified.
    """
    hashes = dict(pdu.get("hashes") or {})
    hashes["sha256"] = compute_content_hash(pdu)
    return {**pdu, "hashes": hashes}


def check_content_hash(pdu: Mapping[str, Any]) -> bool:
    """Return True iff `pdu` carries a `hashes.sha256` matching its computed content hash.

    Per spec ("Validating hashes and signatures on received events") the stored hash is
    base64-decoded and compared with the computed digest, so padded or URL-safe spellings of
    the right digest are accepted. A missing, non-string or undecodable hash gives False.
    A False result does not make the event invalid by itself: the spec says to keep using
    the redacted copy of an event whose signature checks out but whose hash does not.
    """
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if not isinstance(claimed, str):
        return False
    try:
        claimed_bytes = decode_base64(claimed)
    except ValueError:
        return False
    return hmac.compare_digest(claimed_bytes, _content_hash_bytes(pdu))


def compute_reference_hash(pdu: Mapping[str, Any], room_version: str) -> bytes:
    """Return the raw SHA-256 reference hash of `pdu` under `room_version`'s redaction rules.

    Spec "Calculating the reference hash for an event": redact, drop `signatures` and
    `unsigned` (and `age_ts`, which older spec text lists and redaction drops anyway), then
    hash the Canonical JSON. `hashes` is kept. A top-level `event_id` is ignored: in room
    versions 4+ the event ID is derived from this hash, so it is never part of the hashed PDU
    (see `compute_event_id`). Raises `UnsupportedRoomVersion` for unknown versions.
    """
    redacted = redacted_view(pdu, room_version)  # a fresh top level: the pops below stay local
    for key in ("signatures", "unsigned", "age_ts", "event_id"):
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical_event_json(redacted)).digest()


def compute_event_id(pdu: Mapping[str, Any], room_version: str) -> str:
    """Return the event ID of `pdu`: `$` + URL-safe unpadded base64 of its reference hash.

    Spec: room versions 4+ "Event IDs". The ID is stable under any change to `unsigned`,
    `signatures`, or keys that redaction strips (content of e.g. `m.room.message` is still
    covered, indirectly, through `hashes`). A stored copy that already carries an `event_id`
    key yields the same ID as the bare PDU. Raises `UnsupportedRoomVersion`.
    """
    return "$" + encode_base64_urlsafe(compute_reference_hash(pdu, room_version))
