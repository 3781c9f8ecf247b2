"""Auth chains: the events reachable from an event through `auth_events` links.

rooms/v2 "Auth chain": "the set containing all of E's auth events, all of *their* auth
events, and so on recursively, stretching back to the start of the room". State resolution
walks these chains, and a received PDU's chain must be sound before anything trusts it:
a chain that loops back on itself (a forged event can name its own descendant) or that
reaches into another room is refused, as Synapse's advisories on both taught.

Events are looked up through an `EventLookup`: a mapping from event ID to event, or a
callable that returns the event or None. Pure functions; no I/O beyond the lookup.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

Event = Mapping[str, Any]
EventLookup = Mapping[str, Event] | Callable[[str], Event | None]

__all__ = [
    "AuthChainError",
    "Event",
    "EventLookup",
    "MissingEvent",
    "auth_chain",
    "auth_event_ids",
    "check_auth_chain",
    "fetcher",
]


class MissingEvent(KeyError):
    """An event the algorithm needs is not known to the lookup (the caller must fetch it,
    e.g. with /event_auth, and try again)."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id

    def __str__(self) -> str:
        return f"Unknown event {self.event_id!r}"


class AuthChainError(ValueError):
    """The auth chain is unsound: it loops, or it reaches into another room."""


def fetcher(events: EventLookup) -> Callable[[str], Event]:
    """A function that returns the event with a given ID or raises `MissingEvent`."""
    if isinstance(events, Mapping):
        mapping = events

        def get(event_id: str) -> Event:
            try:
                return mapping[event_id]
            except KeyError:
                raise MissingEvent(event_id) from None

        return get
    lookup = events

    def call(event_id: str) -> Event:
        event = lookup(event_id)
        if event is None:
            raise MissingEvent(event_id)
        return event

    return call


def auth_event_ids(event: Event) -> list[str]:
    """The IDs an event lists in `auth_events` (room versions 3+: a list of strings);
    entries of any other shape are skipped (format validation is `pdu_checks`' job)."""
    value = event.get("auth_events")
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, str)]


def auth_chain(event_ids: Iterable[str], events: EventLookup) -> set[str]:
    """The union of the auth chains of `event_ids` (the events themselves not included,
    unless one is in another's chain).

    Raises `MissingEvent` for an event that cannot be looked up, and `AuthChainError` if
    the chain loops (an event reachable from itself): a loop can only come from a forged or
    corrupt event, and walking it would never end for code that assumes a DAG.
    """
    get = fetcher(events)
    chain: set[str] = set()
    # Iterative depth-first search with three colours, so loops are found and deep chains
    # never hit the recursion limit: `done` are finished, `on_path` are being explored.
    done: set[str] = set()
    on_path: set[str] = set()
    for root in event_ids:
        if root in done:
            continue
        stack: list[tuple[str, list[str]]] = [(root, auth_event_ids(get(root)))]
        on_path.add(root)
        while stack:
            current, pending = stack[-1]
            if not pending:
                stack.pop()
                on_path.discard(current)
                done.add(current)
                continue
            child = pending.pop()
            if child in on_path:
                raise AuthChainError(f"The auth chain of {root} loops through {child}")
            chain.add(child)
            if child not in done:
                on_path.add(child)
                stack.append((child, auth_event_ids(get(child))))
    return chain


def check_auth_chain(event: Event, events: EventLookup) -> set[str]:
    """Check that `event`'s auth chain is sound and return it.

    Raises `AuthChainError` if the chain loops (including an event that lists itself) or if
    any event in it belongs to a room other than `event["room_id"]`; `MissingEvent` if part
    of the chain is unknown.
    """
    get = fetcher(events)
    event_id = event.get("event_id")
    own = auth_event_ids(event)
    if isinstance(event_id, str) and event_id in own:
        raise AuthChainError(f"{event_id} lists itself in its auth_events")
    chain = set(own) | auth_chain(own, events)
    if isinstance(event_id, str) and event_id in chain:
        raise AuthChainError(f"The auth chain of {event_id} leads back to it")
    room_id = event.get("room_id")
    for auth_id in sorted(chain):
        if get(auth_id).get("room_id") != room_id and not _is_v12_create_of(auth_id, room_id):
            raise AuthChainError(f"Auth event {auth_id} belongs to another room than {room_id}")
    return chain


def _is_v12_create_of(event_id: str, room_id: object) -> bool:
    # A v12 create event has no room_id of its own: the room ID is derived from its ID.
    return isinstance(room_id, str) and room_id[1:] == event_id[1:] and room_id.startswith("!")
