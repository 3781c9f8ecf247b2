"""History visibility (core/visibility.py) against a small reference model of the spec's
rules, on both engines: random rooms whose history_visibility and one user's membership
change over time, every event judged as the model judges it.

The model replays the room event by event and applies the rules to the state before and
after each event; the code under test looks changes up by position, takes shortcuts from
the room's head, and reads its inputs from real storage.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from homeserver.core.room_heads import RoomHeads
from homeserver.core.visibility import VisibilityFilter
from homeserver.storage import Storage
from homeserver.storage.events import PersistItem, StoredEvent

ALICE = "@alice:example.org"
USER = "@u:example.org"
VISIBILITIES = ["world_readable", "shared", "invited", "joined", "no-such-value"]
MEMBERSHIPS = ["join", "invite", "leave", "ban", "knock"]

step = st.one_of(
    st.just(("message", None)),
    st.just(("state", None)),  # a state event of another key (a topic)
    st.tuples(st.just("visibility"), st.sampled_from(VISIBILITIES)),
    st.tuples(st.just("member"), st.sampled_from(MEMBERSHIPS)),
)


def allowed(visibility: str, membership: str | None, joins_later: bool) -> bool:
    return (
        visibility == "world_readable"
        or membership == "join"
        or (visibility == "shared" and joins_later)
        or (visibility == "invited" and membership == "invite")
    )


def reference(steps: list[tuple[str, str | None]]) -> list[bool]:
    """Whether USER may see each step's event, replaying the room from its start."""
    visibility, membership = "shared", None
    seen: list[tuple[str, str, str | None, str | None]] = []  # visibility and membership, before/after
    for kind, value in steps:
        v_before, m_before = visibility, membership
        if kind == "visibility":
            visibility = value if value in VISIBILITIES[:4] else "shared"
        elif kind == "member":
            membership = value
        seen.append((v_before, visibility, m_before, membership))
    out = []
    for i, (kind, _value) in enumerate(steps):
        v_before, v_after, m_before, m_after = seen[i]
        joins_later = any(k == "member" and v == "join" for k, v in steps[i + 1 :])
        if kind == "member" and m_after == "leave" and m_before in ("join", "invite", "knock"):
            out.append(True)  # one's own leave from join, invite or knock
            continue
        out.append(
            any(
                allowed(v, m, joins_later)
                for v in {v_before, v_after}  # differ only for a visibility change
                for m in {m_before, m_after}  # differ only for the user's own membership change
            )
        )
    return out


class Room:
    def __init__(self, room_id: str, first_position: int) -> None:
        self.room_id = room_id
        self.position = first_position
        self.events: list[StoredEvent] = []

    def add(
        self, sender: str, event_type: str, content: dict[str, Any], state_key: str | None
    ) -> StoredEvent:
        pdu: dict[str, Any] = {
            "room_id": self.room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": 1_700_000_000_000 + self.position,
            "depth": len(self.events) + 1,
            "prev_events": [self.events[-1].event_id] if self.events else [],
            "auth_events": [],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        ev = StoredEvent(f"$e{self.position}_{self.room_id[1:9]}", self.room_id, self.position, pdu)
        self.position += 1
        self.events.append(ev)
        return ev


async def judge_room(storage: Storage, steps: list[tuple[str, str | None]]) -> None:
    start = await storage.events.max_stream_ordering() + 1
    room = Room(f"!r{start}:example.org", start)
    room.add(ALICE, "m.room.create", {"room_version": "10", "creator": ALICE}, "")
    room.add(ALICE, "m.room.member", {"membership": "join"}, ALICE)
    first = len(room.events)
    for kind, value in steps:
        if kind == "message":
            room.add(ALICE, "m.room.message", {"msgtype": "m.text", "body": "hi"}, None)
        elif kind == "state":
            room.add(ALICE, "m.room.topic", {"topic": "t"}, "")
        elif kind == "visibility":
            room.add(ALICE, "m.room.history_visibility", {"history_visibility": value}, "")
        else:
            room.add(ALICE if value != "join" else USER, "m.room.member", {"membership": value}, USER)
    items = [PersistItem(ev, "10", is_create=ev.type == "m.room.create") for ev in room.events]
    await storage.events.persist_events(items)
    upto = room.position - 1
    judged = room.events[first:]
    expected = [ev.event_id for ev, ok in zip(judged, reference(steps), strict=True) if ok]

    # A new head per check: the visibility changes are read from storage, then kept on it.
    visibility = VisibilityFilter(storage, RoomHeads(storage.events), lambda: upto)
    head = await visibility.heads.get(room.room_id)
    assert head is not None
    assert [ev.event_id for ev in await visibility.filter_for_user(USER, head, judged)] == expected
    # Again from the kept changes, one event at a time (other load paths).
    one_by_one = [ev.event_id for ev in judged if await visibility.can_see_event(USER, head, ev)]
    assert one_by_one == expected
    # Messages judged by position alone (as reactions and edits are).
    messages = {ev.stream_ordering: ev.event_id for ev in judged if ev.type == "m.room.message"}
    judge = visibility.judge(USER, room.room_id)
    by_position = await judge.visible_positions(messages)
    assert sorted(messages[p] for p in by_position) == sorted(set(messages.values()) & set(expected))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=14))
def test_every_event_is_judged_as_the_reference_model_judges_it(
    storage: Storage, steps: list[tuple[str, str | None]]
) -> None:
    pytest_twisted.blockon(Deferred.fromCoroutine(judge_room(storage, steps)))


def test_the_reference_model_itself() -> None:
    """Spot checks of the model against the spec's own examples."""
    # The case: sent while `joined`, the setting then `shared`, the user joins later.
    assert reference([("message", None), ("visibility", "shared"), ("member", "join")]) == [True, True, True]
    assert reference(
        [("visibility", "joined"), ("message", None), ("visibility", "shared"), ("member", "join")]
    ) == [True, False, True, True]
    # A change from world_readable to joined, and back, is visible to anyone.
    assert reference([("visibility", "world_readable"), ("visibility", "joined")]) == [True, True]
    # invited: from the invite on; a leave ends it.
    assert reference(
        [
            ("visibility", "invited"),
            ("message", None),
            ("member", "invite"),
            ("message", None),
            ("member", "leave"),
            ("message", None),
        ]
    ) == [False, False, True, True, True, False]
