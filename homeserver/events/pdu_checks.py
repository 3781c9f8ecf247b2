"""The checks a server performs on a PDU received from another server.

Server-Server API "Checks performed on receipt of a PDU", in order:

1. a valid event in its room version's format, else it is *dropped* (`validate_pdu`);
2. signed by every server that must sign it, else *dropped*;
3. its content hash matches, else it is *redacted* before going on;
4. allowed by the auth rules against its own `auth_events`, else *rejected*;
5. allowed against the state before it, else *rejected*;
6. allowed against the room's current state, else *soft-failed*.

`check_pdu` runs them and returns a `PduOutcome` that says which and why. It is pure: keys
come from an injected `KeyLookup`, events from an `EventLookup` (see `auth_chain`), and
the two states are computed by the caller (with `state_resolution`). An auth event the
lookup does not know raises `MissingEvent`: the caller fetches it (/event_auth) and asks
again; that is neither a rejection nor the event's fault.

Size and shape limits: Client-Server API "Size limits" (65536 bytes for the whole PDU in
Canonical JSON, 255 bytes for `event_id`, `room_id`, `sender`, `type` and `state_key`),
the PDU schema of rooms v4+ (required keys, at most 20 `prev_events` and 10 `auth_events`,
each an event ID string), and room versions 6+ "Canonical JSON" (integers only, within
[-(2**53)+1, 2**53-1]).
"""

import enum
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from signedjson.types import VerifyKey

from homeserver.events.auth_chain import (
    AuthChainError,
    Event,
    EventLookup,
    auth_event_ids,
    check_auth_chain,
    fetcher,
)
from homeserver.events.auth_rules import (
    AuthError,
    StateMap,
    auth_event_types,
    check_auth,
    servers_required_to_sign,
)
from homeserver.events.canonical import check_canonical_values, encode_canonical_event_json
from homeserver.events.hashing import check_content_hash, compute_event_id
from homeserver.events.power_levels import CREATE
from homeserver.events.redaction import redact
from homeserver.events.room_versions import check_room_version, room_id_is_create_hash
from homeserver.events.signing import InvalidSignature, signature_on, signature_verifies, signed_bytes

__all__ = [
    "MAX_AUTH_EVENTS",
    "MAX_ID_BYTES",
    "MAX_PDU_BYTES",
    "MAX_PREV_EVENTS",
    "InvalidPdu",
    "KeyLookup",
    "PduOutcome",
    "PduStatus",
    "SignatureCheck",
    "check_pdu",
    "check_pdu_signatures",
    "signature_checks",
    "validate_pdu",
]

MAX_PDU_BYTES: Final = 65536
MAX_ID_BYTES: Final = 255
MAX_PREV_EVENTS: Final = 20
MAX_AUTH_EVENTS: Final = 10

KeyLookup = Callable[[str, str, int], VerifyKey | None]
"""(server name, key ID, the event's origin_server_ts) -> that server's verify key, or None.

The lookup answers only with a key that was valid at that time (room versions 5+, "Signing
key validity period": a key whose `valid_until_ts` is before the event's timestamp must not
be used); fetching and caching keys is the transport's job."""

# rooms v4+: event IDs are `$` + URL-safe unpadded base64 of a SHA-256 (43 characters); so
# are v12 room IDs, with `!`.
_HASH_ID = re.compile(r"[A-Za-z0-9_-]{43}")
_REQUIRED: Final = {
    "auth_events": list,
    "content": dict,
    "depth": int,
    "hashes": dict,
    "origin_server_ts": int,
    "prev_events": list,
    "sender": str,
    "signatures": dict,
    "type": str,
}
_JSON_NAMES: Final[dict[type, str]] = {list: "array", dict: "object", int: "integer", str: "string"}


class InvalidPdu(ValueError):
    """The PDU does not have its room version's format; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PduStatus(enum.Enum):
    """What the receiving server does with a PDU (Server-Server API, the six checks)."""

    ACCEPTED = "accepted"
    SOFT_FAILED = "soft_failed"  # stored and part of the DAG, not shown to clients nor built on
    REJECTED = "rejected"  # stored as rejected: never in state, never a prev_event
    DROPPED = "dropped"  # invalid or badly signed: not stored at all


@dataclass(frozen=True)
class PduOutcome:
    """The verdict on one PDU.

    `event` is what to store: the PDU itself, or its redacted copy when the content hash did
    not match (`redacted`). `event_id` is derived from the PDU (None if it was dropped for
    its format). `reason` is empty when accepted.
    """

    status: PduStatus
    reason: str
    event: Mapping[str, Any]
    event_id: str | None
    redacted: bool = False

    @property
    def accepted(self) -> bool:
        return self.status is PduStatus.ACCEPTED


# --- 1. format -----------------------------------------------------------------------------


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _check_id_length(pdu: Mapping[str, Any], key: str) -> None:
    value = pdu.get(key)
    if isinstance(value, str) and _utf8_len(value) > MAX_ID_BYTES:
        raise InvalidPdu(f"{key} is longer than {MAX_ID_BYTES} bytes")


def _is_user_id(value: object) -> bool:
    return isinstance(value, str) and value.startswith("@") and ":" in value[2:] and not value.endswith(":")


def _check_event_id_list(pdu: Mapping[str, Any], key: str, limit: int) -> None:
    ids = pdu[key]
    if len(ids) > limit:
        raise InvalidPdu(f"{key} lists {len(ids)} events; at most {limit} are allowed")
    for entry in ids:
        if not isinstance(entry, str) or not entry.startswith("$") or not _HASH_ID.fullmatch(entry[1:]):
            raise InvalidPdu(f"{key} must be a list of event IDs")
    if len(set(ids)) != len(ids):
        raise InvalidPdu(f"{key} lists an event twice")


def validate_pdu(pdu: object, room_version: str) -> None:
    """Raise `InvalidPdu` unless `pdu` has the format of a PDU of `room_version` (10-12).

    Checks the total size, the required keys and their JSON types, the canonical JSON
    value rules, the 255-byte limits, `depth` (a non-negative integer), the shapes and
    count limits of `prev_events` and `auth_events`, `hashes.sha256`, the shape of
    `signatures`, the user ID in `sender`, and the room ID: on the sender's server's form
    `!opaque:server` in v10/v11; in v12 `!` + a reference hash, and absent from the create
    event (which, in every version, has no prev_events here: the auth rules say why).
    """
    check_room_version(room_version)
    if not isinstance(pdu, Mapping):
        raise InvalidPdu("A PDU must be a JSON object")
    try:
        check_canonical_values(dict(pdu), "event")
        size = len(encode_canonical_event_json(pdu))  # the same bytes, now that the values passed
    except (ValueError, TypeError) as e:
        raise InvalidPdu(str(e)) from None
    if size > MAX_PDU_BYTES:
        raise InvalidPdu(f"The PDU is {size} bytes; at most {MAX_PDU_BYTES} are allowed")
    for key, kind in _REQUIRED.items():
        value = pdu.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidPdu(f"{key} is missing or not a JSON {_JSON_NAMES[kind]}")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise InvalidPdu("state_key must be a string")
    for key in ("event_id", "room_id", "sender", "type", "state_key"):
        _check_id_length(pdu, key)
    if pdu["depth"] < 0:
        raise InvalidPdu("depth must not be negative")
    _check_event_id_list(pdu, "prev_events", MAX_PREV_EVENTS)
    _check_event_id_list(pdu, "auth_events", MAX_AUTH_EVENTS)
    if not isinstance(pdu["hashes"].get("sha256"), str):
        raise InvalidPdu("hashes.sha256 must be a string")
    for server, keys in pdu["signatures"].items():
        if not isinstance(keys, Mapping) or not all(isinstance(sig, str) for sig in keys.values()):
            raise InvalidPdu(f"signatures of {server!r} must map key IDs to strings")
    if not _is_user_id(pdu["sender"]):
        raise InvalidPdu("sender must be a user ID")
    _check_room_id(pdu, room_version)


def _check_room_id(pdu: Mapping[str, Any], room_version: str) -> None:
    is_create = pdu["type"] == CREATE[0] and pdu.get("state_key") == ""
    room_id = pdu.get("room_id")
    if room_id_is_create_hash(room_version):
        if is_create:
            if "room_id" in pdu:
                raise InvalidPdu("A room version 12 create event has no room_id")
            return
        if not isinstance(room_id, str) or not room_id.startswith("!") or not _HASH_ID.fullmatch(room_id[1:]):
            raise InvalidPdu("room_id must be a room version 12 room ID ('!' and a reference hash)")
        return
    if not isinstance(room_id, str) or not room_id.startswith("!") or ":" not in room_id[2:]:
        raise InvalidPdu("room_id must be a room ID ('!opaque:server')")


# --- 2. signatures -------------------------------------------------------------------------


# (key, the bytes signed, the signature): one ed25519 check, ready to run on any thread.
SignatureCheck = tuple[VerifyKey, bytes, bytes]


def check_pdu_signatures(pdu: Mapping[str, Any], room_version: str, keys: KeyLookup) -> None:
    """Raise `InvalidSignature` unless every server that must sign `pdu` has a valid
    signature on it from a key that `keys` vouches for.

    The servers are the sender's and, for a restricted join, the authorising user's
    (`auth_rules.servers_required_to_sign`). One valid signature per server suffices;
    signatures under unknown or non-ed25519 key IDs are ignored, as the spec asks.
    """
    for server, checks in signature_checks(pdu, room_version, keys):
        if not any(signature_verifies(*check) for check in checks):
            raise InvalidSignature(f"No valid signature from {server} with a key it published")


def signature_checks(
    pdu: Mapping[str, Any], room_version: str, keys: KeyLookup
) -> list[tuple[str, list[SignatureCheck]]]:
    """`check_pdu_signatures` in two halves: this one (Python, holds the GIL) finds, for
    each server that must sign, its signatures under keys `keys` vouches for; one check of
    each server's list must pass (`signature_verifies`, which another thread may run).
    Raises `InvalidSignature` for a server that did not sign at all."""
    signatures = pdu.get("signatures")
    signatures = signatures if isinstance(signatures, Mapping) else {}
    timestamp = pdu.get("origin_server_ts")
    timestamp = timestamp if isinstance(timestamp, int) else 0
    message: bytes | None = None
    out: list[tuple[str, list[SignatureCheck]]] = []
    for server in sorted(servers_required_to_sign(pdu)):
        server_signatures = signatures.get(server)
        if not isinstance(server_signatures, Mapping) or not server_signatures:
            raise InvalidSignature(f"The event is not signed by {server}")
        checks: list[SignatureCheck] = []
        for key_id in sorted(server_signatures):
            if not key_id.startswith("ed25519:"):
                continue
            verify_key = keys(server, key_id, timestamp)
            signature = signature_on(pdu, server, key_id)
            if verify_key is None or signature is None:
                continue
            if message is None:
                message = signed_bytes(pdu, room_version)
            checks.append((verify_key, message, signature))
        out.append((server, checks))
    return out


# --- 4. auth against the event's own auth events --------------------------------------------


def _auth_events_state(
    pdu: Mapping[str, Any], room_version: str, get: Callable[[str], Event], rejected: Collection[str]
) -> dict[tuple[str, str], Event]:
    """The state the PDU's `auth_events` describe, after v12 rule 3 (v11 rule 2) 1-5."""
    allowed = set(auth_event_types(pdu, room_version))
    state: dict[tuple[str, str], Event] = {}
    for auth_id in auth_event_ids(pdu):
        auth_event = get(auth_id)
        key = (auth_event.get("type"), auth_event.get("state_key"))
        if not isinstance(key[0], str) or not isinstance(key[1], str):
            raise AuthError(f"Auth event {auth_id} is not a state event")
        if key in state:
            raise AuthError(f"auth_events lists two {key[0]} events for {key[1]!r} (rule 2.1)")
        if key not in allowed:
            raise AuthError(
                f"auth_events lists {key[0]} {key[1]!r}, which this event's auth does not use (rule 2.2)"
            )
        if auth_id in rejected:
            raise AuthError(f"Auth event {auth_id} was rejected (rule 2.3)")
        state[key] = auth_event  # type: ignore[index]
    if room_id_is_create_hash(room_version):
        # v12 rule 2: the room ID names an accepted create event.
        room_id = pdu.get("room_id")
        create_id = "$" + room_id[1:] if isinstance(room_id, str) else ""
        if create_id in rejected:
            raise AuthError("The room's create event was rejected (v12 rule 2)")
        state[CREATE] = get(create_id)
    return state


# --- the six checks ------------------------------------------------------------------------


def check_pdu(
    pdu: Mapping[str, Any],
    room_version: str,
    *,
    keys: KeyLookup,
    events: EventLookup,
    state_before: StateMap | None,
    current_state: StateMap | None,
    rejected: Collection[str] = (),
    signatures_verified: bool = False,
) -> PduOutcome:
    """Run the receipt checks on `pdu` and say what to do with it.

    `events` must know the PDU's auth events and their auth chains (for v12, also the
    room's create event); `rejected` holds IDs of events this server rejected.
    `state_before` is the state before the event (the resolution of the states after its
    prev_events) and `current_state` the room's current state, as events by (type,
    state_key); either may be None when unknown yet (for the create event, or while
    fetching), and that check is then skipped.

    `signatures_verified` says check 2 was passed already, by `check_pdu_signatures` on
    this very object (run elsewhere, e.g. on a worker thread for many events at once).

    Raises `MissingEvent` when an auth event is unknown; `UnsupportedRoomVersion`.
    """
    check_room_version(room_version)
    try:
        validate_pdu(pdu, room_version)
    except InvalidPdu as e:
        return PduOutcome(PduStatus.DROPPED, f"Invalid event: {e.reason}", pdu, None)
    event_id = compute_event_id(pdu, room_version)

    try:
        if not signatures_verified:
            check_pdu_signatures(pdu, room_version, keys)
    except InvalidSignature as e:
        return PduOutcome(PduStatus.DROPPED, f"Bad signature: {e}", pdu, event_id)

    redacted = not check_content_hash(pdu)
    event: Mapping[str, Any] = redact(pdu, room_version) if redacted else pdu
    with_id = {**event, "event_id": event_id}

    def outcome(status: PduStatus, reason: str = "") -> PduOutcome:
        return PduOutcome(status, reason, event, event_id, redacted)

    get = fetcher(events)
    is_create = event["type"] == CREATE[0] and event.get("state_key") == ""
    try:
        if is_create:
            check_auth(with_id, {}, room_version)
            return outcome(PduStatus.ACCEPTED)
        check_auth_chain(with_id, events)
        check_auth(with_id, _auth_events_state(with_id, room_version, get, rejected), room_version)
    except (AuthError, AuthChainError) as e:
        return outcome(PduStatus.REJECTED, f"Not allowed by its auth events: {_reason(e)}")

    for state, status, which in (
        (state_before, PduStatus.REJECTED, "the state before it"),
        (current_state, PduStatus.SOFT_FAILED, "the room's current state"),
    ):
        if state is None:
            continue
        try:
            check_auth(with_id, state, room_version)
        except AuthError as e:
            return outcome(status, f"Not allowed by {which}: {e.reason}")
    return outcome(PduStatus.ACCEPTED)


def _reason(error: Exception) -> str:
    return error.reason if isinstance(error, AuthError) else str(error)
