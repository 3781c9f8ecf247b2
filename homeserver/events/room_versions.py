"""The room versions this package implements, and what each one changes.

Rules differ between room versions in small, named ways; code asks one of the predicates
below ("does this version take the creator from the create event's sender?") instead of
comparing version strings, so adding a version means adding it here and to the tests.

- 10: the baseline (integer power levels, knocking, restricted joins).
- 11: the creator is the create event's `sender`; `redacts` moves into `content`; the
  redaction algorithm keeps all of `m.room.create`'s content (rooms/v11).
- 12: room IDs are the create event's reference hash (no server part) and the create event
  is never listed in `auth_events`; the create event's sender and `additional_creators` are
  the room's *creators*, with a power level above every other (MSC4289, MSC4291); state
  resolution v2.1 (MSC4297). The redaction algorithm is v11's (rooms/v12, "Unchanged from
  v11").
"""

from typing import Final

KNOWN_ROOM_VERSIONS: Final[frozenset[str]] = frozenset({"10", "11", "12"})
"""Room versions whose redaction, hashing, signing and authorization rules are implemented."""


class UnsupportedRoomVersion(ValueError):
    """Raised when asked to apply the rules of a room version not in `KNOWN_ROOM_VERSIONS`."""

    def __init__(self, room_version: str) -> None:
        super().__init__(f"Unsupported room version: {room_version!r}")
        self.room_version = room_version


def check_room_version(room_version: str) -> None:
    """Raise `UnsupportedRoomVersion` unless `room_version` is one of `KNOWN_ROOM_VERSIONS`."""
    if room_version not in KNOWN_ROOM_VERSIONS:
        raise UnsupportedRoomVersion(room_version)


def creator_is_sender(room_version: str) -> bool:
    """v11+: the create event's `sender` is the creator (`content.creator` is not used)."""
    return room_version in ("11", "12")


def redacts_in_content(room_version: str) -> bool:
    """v11+: an `m.room.redaction` names its target in `content.redacts`."""
    return room_version in ("11", "12")


def room_id_is_create_hash(room_version: str) -> bool:
    """v12: the room ID is `!` + the create event's reference hash; the create event has no
    `room_id` and is never selected for `auth_events`."""
    return room_version == "12"


def creators_are_privileged(room_version: str) -> bool:
    """v12: the creators (create sender + `additional_creators`) outrank every power level."""
    return room_version == "12"


def uses_state_res_v2_1(room_version: str) -> bool:
    """v12: state resolution starts from an empty state and adds the conflicted subgraph."""
    return room_version == "12"
