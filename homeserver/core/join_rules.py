"""Reading a room's join rule (spec: m.room.join_rules), shared by joins, knocks and previews."""

from __future__ import annotations

from homeserver.core.room_heads import RoomHead

OPEN_JOIN_RULES = ("public", "knock", "knock_restricted")
RESTRICTED_JOIN_RULES = ("restricted", "knock_restricted")
KNOCK_JOIN_RULES = ("knock", "knock_restricted")


def join_rule(head: RoomHead) -> str:
    """The room's join rule; `invite` when none is set, as the auth rules read it."""
    rule = head.content("m.room.join_rules").get("join_rule")
    return rule if isinstance(rule, str) else "invite"


def allowed_room_ids(head: RoomHead) -> list[str]:
    """The rooms whose members may join a restricted room (its `allow` list's m.room_membership entries)."""
    if join_rule(head) not in RESTRICTED_JOIN_RULES:
        return []
    allow = head.content("m.room.join_rules").get("allow")
    if not isinstance(allow, list):
        return []
    return [
        entry["room_id"]
        for entry in allow
        if isinstance(entry, dict)
        and entry.get("type") == "m.room_membership"
        and isinstance(entry.get("room_id"), str)
    ]
