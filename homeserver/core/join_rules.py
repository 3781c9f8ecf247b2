"""Reading a room's join rule (spec: m.room.join_rules), shared by joins, knocks and previews."""

from __future__ import annotations

from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.events.power_levels import can_do

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


async def join_authoriser(heads: RoomHeads, server_name: str, head: RoomHead, user_id: str) -> str | None:
    """For a restricted room the user may join through membership of an allowed room: a
    local member who may invite, to name in `join_authorised_via_users_server` (auth rule
    4.3.5; this server vouches for the join by signing it). None otherwise: the auth rules
    then decide (an invited or joined user needs no vouching). Shared by local joins and
    the make_join we answer for another server."""
    if join_rule(head) not in RESTRICTED_JOIN_RULES or head.membership(user_id) in ("join", "invite"):
        return None
    for allowed in allowed_room_ids(head):
        other = await heads.get(allowed)
        if other is not None and other.membership(user_id) == "join":
            break
    else:
        return None
    suffix = ":" + server_name
    state = {key: ev.pdu for key, ev in head.state.items()}
    for member in sorted(head.members("join")):
        if member.endswith(suffix) and can_do(member, "invite", state, room_version=head.room_version):
            return member
    return None
