"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

When the event graph forks, each branch has its own room state; the state where the
branches meet is the *resolution* of those states. Every server must reach the same answer
from the same events, so this module follows rooms/v2 "State resolution" and rooms/v12
(MSC4297, "State Resolution v2.1") step by step; the names below are the spec's.

v2.1 changes two things: the iterative auth checks of the power events start from an
*empty* state instead of the unconflicted state map, and the *full conflicted set* also
holds the *conflicted state subgraph* (every event on an `auth_events` path between two
conflicted events), so the events needed to re-authorise the conflicted ones are re-checked
too. Both make "state resets" (an old, overridden event coming back) much rarer.

Input: state sets as maps from (type, state_key) to event ID, and an `EventLookup` for the
events and their auth chains. Output: the resolved map, holding only IDs from the input
sets or their auth chains. Events that failed auth against their own auth chain should not
be in any state set; `rejected` names the IDs of other rejected events, which the iterative
auth checks never use as auth events (rooms/v2 "Rejected events").

One reading of the spec to note: the *full auth chain* of a state set is taken to contain
the set's own events as well as their auth chains (as Synapse computes it), so an event in
every state set is never part of the auth difference.
"""

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from homeserver.events.auth_chain import Event, EventLookup, auth_chain, auth_event_ids, fetcher
from homeserver.events.auth_rules import AuthError, auth_types_for_event, check_auth
from homeserver.events.power_levels import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, user_power_level
from homeserver.events.room_versions import check_room_version, room_id_is_create_hash, uses_state_res_v2_1

__all__ = ["StateIds", "is_power_event", "resolve_state"]

StateKey = tuple[str, str]
StateIds = Mapping[StateKey, str]
"""Room state by ID: (event type, state key) -> event ID."""


def is_power_event(event: Event) -> bool:
    """rooms/v2 "Power events": power levels, join rules, and kicks and bans (a leave or ban
    whose sender is not its target): the events that can take an ability away."""
    if event.get("state_key") is None:
        return False
    event_type = event.get("type")
    if (event_type, event.get("state_key")) in (POWER_LEVELS, JOIN_RULES):
        return True
    if event_type != MEMBER:
        return False
    content = event.get("content")
    membership = content.get("membership") if isinstance(content, Mapping) else None
    return membership in ("leave", "ban") and event.get("sender") != event.get("state_key")


def resolve_state(
    room_version: str,
    state_sets: Sequence[StateIds],
    events: EventLookup,
    *,
    rejected: Collection[str] = (),
) -> dict[StateKey, str]:
    """The resolution of `state_sets` under `room_version`'s algorithm.

    Promises: the result does not depend on the order of `state_sets`; every ID in it is in
    an input set or in the auth chain of one; keys on which all sets agree keep their
    value. Raises `MissingEvent` if an event of a conflicted set's auth chains is unknown,
    `AuthChainError` if an auth chain loops, `UnsupportedRoomVersion` for other versions.
    """
    check_room_version(room_version)
    if not state_sets:
        return {}
    get = fetcher(events)
    unconflicted, conflicted = _split(state_sets)
    if not conflicted:
        return dict(unconflicted)

    full_conflicted = set(conflicted) | _auth_difference(state_sets, events)
    if uses_state_res_v2_1(room_version):
        full_conflicted |= _conflicted_subgraph(conflicted, get)
    resolver = _Resolver(room_version, get, set(rejected))

    # Step 1: the power events of the full conflicted set, with the parts of their auth
    # chains that are in it too, in reverse topological power ordering.
    power = {event_id for event_id in full_conflicted if is_power_event(get(event_id))}
    for event_id in list(power):
        power |= auth_chain([event_id], events) & full_conflicted
    ordered_power = resolver.reverse_topological_power_order(power)

    # Step 2: iterative auth checks from the unconflicted state (v2) or nothing (v2.1).
    start: dict[StateKey, str] = {} if uses_state_res_v2_1(room_version) else dict(unconflicted)
    partial = resolver.iterative_auth_checks(start, ordered_power)

    # Steps 3 and 4: everything else, in mainline order of the resolved power levels.
    leftover = full_conflicted - power
    ordered_rest = resolver.mainline_order(leftover, partial.get(POWER_LEVELS))
    resolved = resolver.iterative_auth_checks(partial, ordered_rest)

    # Step 5: the unconflicted state map wins.
    resolved.update(unconflicted)
    return resolved


def _split(state_sets: Sequence[StateIds]) -> tuple[dict[StateKey, str], set[str]]:
    # rooms/v2 "Unconflicted state map and conflicted state set".
    unconflicted: dict[StateKey, str] = {}
    conflicted: set[str] = set()
    keys = set().union(*(state.keys() for state in state_sets))
    for key in keys:
        values = {state.get(key) for state in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = next(iter(values))  # type: ignore[assignment]
        else:
            conflicted.update(value for value in values if value is not None)
    return unconflicted, conflicted


def _auth_difference(state_sets: Sequence[StateIds], events: EventLookup) -> set[str]:
    # rooms/v2 "Auth difference": the union of the sets' full auth chains minus their
    # intersection (each full chain includes the set's own events, see the module doc).
    chains = [auth_chain(state.values(), events) | set(state.values()) for state in state_sets]
    return set().union(*chains) - chains[0].intersection(*chains[1:])


def _conflicted_subgraph(conflicted: set[str], get: Callable[[str], Event]) -> set[str]:
    # rooms/v12 "Conflicted state subgraph": the events on some auth_events path from one
    # conflicted event to another, i.e. those reachable from a conflicted event that can
    # themselves reach a conflicted event (endpoints included).
    reachable: set[str] = set()
    frontier = list(conflicted)
    while frontier:
        for parent in auth_event_ids(get(frontier.pop())):
            if parent not in reachable:
                reachable.add(parent)
                frontier.append(parent)
    reaches: dict[str, bool] = {}

    def leads_to_conflict(event_id: str) -> bool:
        # Iterative post-order walk (chains can be thousands deep).
        stack = [event_id]
        while stack:
            current = stack[-1]
            if current in reaches:
                stack.pop()
                continue
            parents = [p for p in auth_event_ids(get(current)) if p in reachable]
            unknown = [p for p in parents if p not in reaches]
            if unknown:
                stack.extend(unknown)
                continue
            reaches[current] = current in conflicted or any(reaches[p] for p in parents)
            stack.pop()
        return reaches[event_id]

    return {event_id for event_id in reachable | conflicted if leads_to_conflict(event_id)}


class _Resolver:
    """The orderings and the iterative auth checks, sharing one event lookup."""

    def __init__(self, room_version: str, get: Callable[[str], Event], rejected: set[str]) -> None:
        self.room_version = room_version
        self.get = get
        self.rejected = rejected

    def _create_for(self, event: Event) -> Event | None:
        # v12: the create event is named by the room ID, never listed in auth_events.
        room_id = event.get("room_id")
        if not room_id_is_create_hash(self.room_version) or not isinstance(room_id, str):
            return None
        return self.get("$" + room_id[1:])

    def _auth_events_state(self, event: Event) -> dict[StateKey, Event]:
        state: dict[StateKey, Event] = {}
        for auth_id in auth_event_ids(event):
            if auth_id in self.rejected:
                continue
            auth_event = self.get(auth_id)
            state_key = auth_event.get("state_key")
            if isinstance(state_key, str) and isinstance(auth_event.get("type"), str):
                state[(auth_event["type"], state_key)] = auth_event
        create = self._create_for(event)
        if create is not None and CREATE not in state:
            state[CREATE] = create
        return state

    def _sender_power(self, event: Event) -> int:
        # "x's sender has greater power level than y's sender, when looking at their
        # respective auth_events".
        sender = event.get("sender")
        if not isinstance(sender, str):
            return 0
        return user_power_level(sender, self._auth_events_state(event), self.room_version)

    def reverse_topological_power_order(self, event_ids: set[str]) -> list[str]:
        # Kahn's algorithm over the auth DAG restricted to `event_ids`, earliest first,
        # taking at each step the smallest candidate by (greater power, then smaller
        # origin_server_ts, then smaller event ID).
        def sort_key(event_id: str) -> tuple[int, Any, str]:
            event = self.get(event_id)
            return (-self._sender_power(event), _timestamp(event), event_id)

        parents = {
            event_id: {p for p in auth_event_ids(self.get(event_id)) if p in event_ids}
            for event_id in event_ids
        }
        children: dict[str, list[str]] = {event_id: [] for event_id in event_ids}
        for event_id, event_parents in parents.items():
            for parent in event_parents:
                children[parent].append(event_id)
        waiting = {event_id: len(event_parents) for event_id, event_parents in parents.items()}
        ready = [(sort_key(event_id), event_id) for event_id, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        ordered: list[str] = []
        while ready:
            _, event_id = heapq.heappop(ready)
            ordered.append(event_id)
            for child in children[event_id]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, (sort_key(child), child))
        return ordered  # a loop would leave events out; auth_chain refuses loops first

    def _power_levels_parent(self, event: Event) -> str | None:
        for auth_id in auth_event_ids(event):
            auth_event = self.get(auth_id)
            if (auth_event.get("type"), auth_event.get("state_key")) == POWER_LEVELS:
                return auth_id
        return None

    def mainline_order(self, event_ids: Iterable[str], power_levels_id: str | None) -> list[str]:
        # rooms/v2 "Mainline ordering": the mainline of the resolved power levels event,
        # then each event's position by the first power levels event in its chain of
        # power levels auth events that is on the mainline (infinity, i.e. first, if none).
        mainline: dict[str, int] = {}
        current = power_levels_id
        while current is not None and current not in mainline:
            mainline[current] = len(mainline)
            current = self._power_levels_parent(self.get(current))

        def position(event_id: str) -> float:
            seen: set[str] = set()
            step = self._power_levels_parent(self.get(event_id))
            while step is not None and step not in seen:
                if step in mainline:
                    return mainline[step]
                seen.add(step)
                step = self._power_levels_parent(self.get(step))
            return math.inf

        def sort_key(event_id: str) -> tuple[float, Any, str]:
            event = self.get(event_id)
            return (-position(event_id), _timestamp(event), event_id)

        return sorted(event_ids, key=sort_key)

    def iterative_auth_checks(
        self, state: Mapping[StateKey, str], event_ids: Sequence[str]
    ) -> dict[StateKey, str]:
        # rooms/v2 "Iterative auth checks": apply each event that passes the auth rules
        # against the state so far, taking what that state lacks from the event's own
        # (non-rejected) auth events.
        resolved = dict(state)
        for event_id in event_ids:
            event = self.get(event_id)
            state_key = event.get("state_key")
            event_type = event.get("type")
            if not isinstance(state_key, str) or not isinstance(event_type, str):
                continue
            auth_state = self._auth_events_state(event)
            for key in auth_types_for_event(event):
                if key in resolved:
                    auth_state[key] = self.get(resolved[key])
            try:
                check_auth(event, auth_state, self.room_version)
            except AuthError:
                continue
            resolved[(event_type, state_key)] = event_id
        return resolved


def _timestamp(event: Event) -> int:
    value = event.get("origin_server_ts")
    return value if type(value) is int else 0
