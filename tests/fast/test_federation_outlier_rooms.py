"""A room of another server we only hold an invite for (one event, kept with its stripped
state) is not a room we are in: its PDUs are not taken, and the admin room list leaves it
out (docs/federation.md, "Invites and knocks we only hold")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import TestClock, make_server
from remote_server import THEM, settle, signed_pdu, trust_them
from twisted.internet.defer import Deferred

ROOM = f"!elsewhere:{THEM}"
CREATOR = f"@x:{THEM}"


def _pdu(
    kind: str, content: dict[str, Any], prev: list[str], auth: list[str], depth: int, **extra: Any
) -> tuple[str, dict[str, Any]]:
    return signed_pdu(ROOM, CREATOR, kind, content, prev, auth, depth, **extra)


@pytest_twisted.ensureDeferred
async def test_a_room_we_are_only_invited_to_takes_no_pdus_and_is_not_listed(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    await trust_them(hs, clock)
    bob = await hs.accounts.register("bob", "correct horse battery")
    ours = await hs.rooms.create_room(bob, {"preset": "private_chat", "room_version": "10"})

    create_id, _ = _pdu("m.room.create", {"room_version": "10", "creator": CREATOR}, [], [], 1, state_key="")
    join_id, _ = _pdu("m.room.member", {"membership": "join"}, [create_id], [create_id], 2, state_key=CREATOR)
    invite_id, invite = _pdu(
        "m.room.member", {"membership": "invite"}, [join_id], [create_id, join_id], 3, state_key=bob
    )
    body = {"event": invite, "room_version": "10", "invite_room_state": []}
    receive = hs.federation.membership.receive_invite(THEM, ROOM, invite_id, body)
    await settle(clock, Deferred.fromCoroutine(receive))
    head = await hs.room_heads.get(ROOM)
    assert head is not None and head.membership(bob) == "invite"  # kept: Bob's sync shows it

    # A message of the room arrives: we are not in it, so it is refused without any fetching.
    msg_id, msg = _pdu(
        "m.room.message", {"msgtype": "m.text", "body": "hi"}, [invite_id], [create_id, join_id], 4
    )
    txn = {"origin": THEM, "origin_server_ts": 0, "pdus": [msg], "edus": []}
    answer = await settle(clock, Deferred.fromCoroutine(hs.federation_transactions.receive(THEM, "t1", txn)))
    assert answer["pdus"] == {msg_id: {"error": "This server is not in the room"}}
    assert not await hs.storage.events.event_stored(msg_id)

    # The admin room list names our room, not the one we only hold an invite for.
    page = await hs.admin.list_rooms(None, "name", True, 0, 100)
    assert [r.room_id for r in page.items] == [ours] and page.total == 1
    await hs.stop(None)
