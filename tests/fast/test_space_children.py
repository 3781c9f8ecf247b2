"""The children of a space as the hierarchy walks them (core/spaces.py): which `m.space.child`
events count (a non-empty `via` of server names) and the spec's order (valid `order` first,
then the child event's timestamp, then room ID)."""

from __future__ import annotations

from typing import Any

from homeserver.core.room_heads import RoomHead
from homeserver.core.spaces import space_children
from homeserver.storage.events import StoredEvent


def space(children: dict[str, tuple[dict[str, Any], int]]) -> RoomHead:
    head = RoomHead("!space:hs", "10")
    for i, (room_id, (content, ts)) in enumerate(children.items()):
        pdu = {
            "type": "m.space.child",
            "state_key": room_id,
            "sender": "@a:hs",
            "content": content,
            "origin_server_ts": ts,
        }
        head.state[("m.space.child", room_id)] = StoredEvent(f"$e{i}", "!space:hs", i, pdu)
    return head


def test_only_children_with_a_valid_via_count() -> None:
    head = space(
        {
            "!ok:hs": ({"via": ["hs"]}, 1),
            "!empty:hs": ({"via": []}, 1),
            "!missing:hs": ({}, 1),
            "!notlist:hs": ({"via": "hs"}, 1),
            "!badentry:hs": ({"via": ["hs", 5]}, 1),
            "!blank:hs": ({"via": [""]}, 1),
        }
    )
    assert [c.room_id for c in space_children(head)] == ["!ok:hs"]


def test_order_then_timestamp_then_room_id() -> None:
    via = ["hs"]
    head = space(
        {
            "!late:hs": ({"via": via}, 30),
            "!b:hs": ({"via": via}, 10),
            "!a:hs": ({"via": via}, 10),
            "!second:hs": ({"via": via, "order": "b"}, 99),
            "!first:hs": ({"via": via, "order": "a"}, 99),
            # Invalid orders (not a string, too long, outside 0x20-0x7E) count as none.
            "!num:hs": ({"via": via, "order": 1}, 20),
            "!long:hs": ({"via": via, "order": "x" * 51}, 21),
            "!ctrl:hs": ({"via": via, "order": "\n"}, 22),
        }
    )
    assert [c.room_id for c in space_children(head)] == [
        "!first:hs",
        "!second:hs",
        "!a:hs",
        "!b:hs",
        "!num:hs",
        "!long:hs",
        "!ctrl:hs",
        "!late:hs",
    ]


def test_suggested_is_read_strictly() -> None:
    head = space(
        {
            "!yes:hs": ({"via": ["hs"], "suggested": True}, 1),
            "!str:hs": ({"via": ["hs"], "suggested": "true"}, 2),
        }
    )
    assert [(c.room_id, c.suggested) for c in space_children(head)] == [("!yes:hs", True), ("!str:hs", False)]
