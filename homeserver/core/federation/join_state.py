"""Checking the room state a resident server answers send_join with (Server-Server API,
"Joining rooms": the joining server must validate the state and the auth chain before it
trusts them). Pure: keys come through the injected lookup, as in events/pdu_checks.py.

Each event of `state` and `auth_chain` is checked against its own auth events, in an order
where those come first: format, signature of the sender's server, content hash (a copy
whose hash does not match is kept redacted, as on any receipt), the auth rules. Events that
fail, that name auth events the answer does not hold, or that belong to another room are
left out. The state that remains must hold the room's create event, of the room and its
version, and must allow our join.

The ed25519 checks are most of that work for a big room. `verified_signatures` runs the
signature check (step 2) of every event beforehand on worker threads: libsodium lets go of
the GIL while it verifies, so the second core does some of it while the reactor thread stays
free. `checked_state` then skips step 2 for those events only, in the same order as before;
an event whose signatures did not verify there is checked again in line, and dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from homeserver.events.auth_chain import MissingEvent
from homeserver.events.auth_rules import AuthError, check_auth
from homeserver.events.hashing import compute_event_id
from homeserver.events.pdu_checks import KeyLookup, PduStatus, SignatureCheck, check_pdu, signature_checks
from homeserver.events.room_versions import room_id_is_create_hash
from homeserver.events.signing import signature_verifies

StateMap = dict[tuple[str, str], dict[str, Any]]
# Fields a PDU carries over federation that are not part of it (never stored from another server).
NOT_PDU = ("event_id", "unsigned")


class BadJoinState(ValueError):
    """The answer cannot be used: no valid create event, another room, or the join refused."""


def pdu_only(pdu: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pdu.items() if k not in NOT_PDU}


def checked_state(
    room_id: str,
    room_version: str,
    join: Mapping[str, Any],
    state_pdus: object,
    chain_pdus: object,
    keys: KeyLookup,
    verified: Collection[int] = (),
) -> StateMap:
    """The room's state before our `join`, from a send_join answer: (type, state_key) ->
    the checked PDU with its `event_id`. Raises BadJoinState.

    `verified`: positions in `[*chain_pdus, *state_pdus]` whose signatures
    `verified_signatures` found good (their check is not repeated)."""
    if not isinstance(state_pdus, list) or not isinstance(chain_pdus, list):
        raise BadJoinState("the answer has no state and auth_chain lists")
    by_id: dict[str, dict[str, Any]] = {}
    signed: set[str] = set()  # event IDs whose kept copy is one `verified` names
    state_ids: list[str] = []
    for i, raw in enumerate([*chain_pdus, *state_pdus]):
        if not isinstance(raw, dict):
            raise BadJoinState("an event of the answer is not an object")
        pdu = pdu_only(raw)
        try:
            event_id = compute_event_id(pdu, room_version)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # malformed beyond hashing: left out like any event that fails its checks
        if _room_of(pdu, event_id) != room_id:
            continue
        by_id[event_id] = pdu
        # The same event twice: the copy kept is the last, so its own verification counts.
        (signed.add if i in verified else signed.discard)(event_id)
        if i >= len(chain_pdus):
            state_ids.append(event_id)
    checked: dict[str, dict[str, Any]] = {}
    for event_id in auth_order(by_id):
        try:
            outcome = check_pdu(
                by_id[event_id],
                room_version,
                keys=keys,
                events=checked,
                state_before=None,
                current_state=None,
                signatures_verified=event_id in signed,
            )
        except MissingEvent:
            continue  # its auth events are not in the answer (or failed): not usable
        if outcome.status is PduStatus.ACCEPTED and outcome.event_id == event_id:
            checked[event_id] = dict(outcome.event)
    state: StateMap = {}
    for event_id in state_ids:
        good = checked.get(event_id)
        if good is not None and isinstance(good.get("state_key"), str):
            state[(good["type"], good["state_key"])] = {**good, "event_id": event_id}
    create = state.get(("m.room.create", ""))
    if create is None:
        raise BadJoinState("the state has no valid create event")
    if create.get("content", {}).get("room_version", "1") != room_version:
        raise BadJoinState("the create event is of another room version")
    try:
        check_auth(join, state, room_version)
    except AuthError as e:
        raise BadJoinState(f"the room's state does not allow this join: {e}") from None
    return state


async def verified_signatures(
    room_version: str,
    pdus: Sequence[object],
    keys: KeyLookup,
    run: Callable[..., Deferred[list[int]]],
    parts: int,
) -> set[int]:
    """Positions in `pdus` (send_join's `[*auth_chain, *state]`) whose required signatures
    verify. The bytes and keys of each check are found here (Python work); the ed25519
    checks themselves run in `parts` slices through `run` (a worker pool's `run(fn, *args)`)."""
    prepared: list[tuple[int, list[list[SignatureCheck]]]] = []
    for i, raw in enumerate(pdus):
        if not isinstance(raw, dict):
            continue
        try:
            needed = signature_checks(pdu_only(raw), room_version, keys)
        except Exception:  # noqa: BLE001, S112 - unsigned or malformed: check_pdu says why, in line
            continue
        prepared.append((i, [checks for _server, checks in needed]))
    size = -(-len(prepared) // max(1, parts)) or 1
    found: list[list[int]] = await gatherResults(
        [run(_verified_slice, prepared[start : start + size]) for start in range(0, len(prepared), size)]
    )
    return {i for part in found for i in part}


def _verified_slice(prepared: list[tuple[int, list[list[SignatureCheck]]]]) -> list[int]:
    """On a worker thread: the positions whose every server has one signature that verifies."""
    return [
        i
        for i, servers in prepared
        if all(any(signature_verifies(*check) for check in checks) for checks in servers)
    ]


def _room_of(pdu: Mapping[str, Any], event_id: str) -> object:
    """The room an event belongs to; a v12 create event names none: its ID makes the room's."""
    if pdu.get("type") == "m.room.create" and "room_id" not in pdu:
        return "!" + event_id[1:]
    return pdu.get("room_id")


def auth_order(events: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Event IDs ordered so each comes after the auth events it names that are present
    (in v12 also after the create event its room ID names). A loop is walked once; the
    checks then refuse its events."""
    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()
    for start in sorted(events, key=lambda e: (_depth(events[e]), e)):
        stack = [(start, False)]
        while stack:
            event_id, expanded = stack.pop()
            if event_id in done or event_id not in events or (not expanded and event_id in visiting):
                continue
            if expanded:
                done.add(event_id)
                order.append(event_id)
                continue
            visiting.add(event_id)
            stack.append((event_id, True))
            pdu = events[event_id]
            for auth_id in pdu.get("auth_events") or []:
                if isinstance(auth_id, str) and auth_id not in done:
                    stack.append((auth_id, False))
            room_id = pdu.get("room_id")
            if isinstance(room_id, str) and room_id_is_create_hash_id(room_id):
                stack.append(("$" + room_id[1:], False))
    return order


def room_id_is_create_hash_id(room_id: str) -> bool:
    """A v12 room ID: `!` and a hash, no server part."""
    return room_id.startswith("!") and ":" not in room_id


def _depth(pdu: Mapping[str, Any]) -> int:
    depth = pdu.get("depth")
    return depth if isinstance(depth, int) else 0


__all__ = [
    "BadJoinState",
    "auth_order",
    "checked_state",
    "pdu_only",
    "room_id_is_create_hash",
    "verified_signatures",
]
