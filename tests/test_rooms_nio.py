"""Rooms with a real client: matrix-nio's AsyncClient against a real server process.

Direct chats, a named group with an admin, receipts and typing, edits and
redactions, and paginating 500 messages both ways. As in test_nio_client.py,
nio runs on its own asyncio loop in a worker thread, whatever reactor the test
process uses. Every test registers its own users on the module's server.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from conftest import ServerProcess
from nio import (
    AsyncClient,
    FullyReadEvent,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    ReceiptEvent,
    RedactedEvent,
    RedactionEvent,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomReadMarkersResponse,
    RoomRedactResponse,
    RoomSendResponse,
    RoomTypingResponse,
    SyncResponse,
    TypingNoticeEvent,
    UpdateReceiptMarkerResponse,
)

T = TypeVar("T")
PASSWORD = "nio-rooms-" + secrets.token_urlsafe(8)
TEXT = "m.room.message"


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """asyncio.run(coro) on a fresh thread and loop; its exceptions are raised here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


def new_users(server: ServerProcess, *names: str) -> list[str]:
    """Register fresh users (unique per call) from Python; returns their localparts."""
    suffix = secrets.token_hex(3)
    out = []
    for name in names:
        local = f"{name}{suffix}"
        server.register(local, PASSWORD)
        out.append(local)
    return out


async def logged_in(server: ServerProcess, local: str) -> AsyncClient:
    client = AsyncClient(server.base_url, user=local)
    login = await client.login(PASSWORD, device_name=f"nio {local}")
    assert isinstance(login, LoginResponse), login
    # The first sync: nio keeps its next_batch, so later syncs are incremental.
    first = await client.sync(timeout=0)
    assert isinstance(first, SyncResponse), first
    return client


async def close_all(*clients: AsyncClient) -> None:
    for client in clients:
        await client.close()


async def sync_until(
    client: AsyncClient, check: Callable[[SyncResponse], Any], what: str, timeout: float = 10
) -> Any:
    """Long-poll /sync until `check(response)` returns something truthy (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.sync(timeout=500)
        assert isinstance(response, SyncResponse), response
        result = check(response)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.user_id}: timed out waiting for {what}")


def timeline(response: SyncResponse, room_id: str) -> list[Any]:
    room = response.rooms.join.get(room_id)
    return list(room.timeline.events) if room is not None else []


def ephemeral(response: SyncResponse, room_id: str) -> list[Any]:
    room = response.rooms.join.get(room_id)
    return list(room.ephemeral) if room is not None else []


def collect_texts(room_id: str, seen: dict[str, RoomMessageText]) -> Callable[[SyncResponse], None]:
    """A check that only accumulates: text messages by event id."""

    def check(response: SyncResponse) -> None:
        for ev in timeline(response, room_id):
            if isinstance(ev, RoomMessageText):
                seen[ev.event_id] = ev

    return check


async def send_text(client: AsyncClient, room_id: str, body: str, **extra: Any) -> str:
    response = await client.room_send(room_id, TEXT, {"msgtype": "m.text", "body": body, **extra})
    assert isinstance(response, RoomSendResponse), response
    return str(response.event_id)


async def accept_invite(client: AsyncClient, room_id: str) -> None:
    """Wait for the invite in /sync, then join through it."""
    invite = await sync_until(client, lambda r: r.rooms.invite.get(room_id), f"the invite to {room_id}")
    members = [e for e in invite.invite_state if isinstance(e, InviteMemberEvent)]
    assert any(m.state_key == client.user_id and m.membership == "invite" for m in members), members
    joined = await client.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    await sync_until(client, lambda r: room_id in r.rooms.join, f"{room_id} among joined rooms")


async def dm_pair(server: ServerProcess) -> tuple[AsyncClient, AsyncClient, str]:
    alice_name, bob_name = new_users(server, "alice", "bob")
    alice = await logged_in(server, alice_name)
    bob = await logged_in(server, bob_name)
    try:
        created = await alice.room_create(is_direct=True, invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        await accept_invite(bob, created.room_id)
    except BaseException:
        await close_all(alice, bob)
        raise
    return alice, bob, created.room_id


# (a) A direct chat -------------------------------------------------------------------


async def direct_chat(server: ServerProcess) -> None:
    alice_name, bob_name = new_users(server, "alice", "bob")
    alice = await logged_in(server, alice_name)
    bob = await logged_in(server, bob_name)
    try:
        created = await alice.room_create(is_direct=True, invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id

        # Bob's invite carries the DM flag on his member event.
        invite = await sync_until(bob, lambda r: r.rooms.invite.get(room_id), "the DM invite")
        mine = [e for e in invite.invite_state if isinstance(e, InviteMemberEvent)]
        assert any(
            m.state_key == bob.user_id and m.content.get("is_direct") is True and m.sender == alice.user_id
            for m in mine
        ), [m.source for m in mine]
        assert isinstance(await bob.join(room_id), JoinResponse)

        a1 = await send_text(alice, room_id, "hi bob")
        b1 = await send_text(bob, room_id, "hi alice")
        a2 = await send_text(alice, room_id, "how are you?")

        for client in (alice, bob):
            seen: dict[str, RoomMessageText] = {}
            collect = collect_texts(room_id, seen)
            await sync_until(
                client, lambda r, c=collect, s=seen: c(r) or {a1, b1, a2} <= s.keys(), "all three messages"
            )
            assert [seen[e].body for e in (a1, b1, a2)] == ["hi bob", "hi alice", "how are you?"]
            assert [seen[e].sender for e in (a1, b1, a2)] == [alice.user_id, bob.user_id, alice.user_id]
            room = client.rooms[room_id]
            assert set(room.users) == {alice.user_id, bob.user_id}
            assert room.member_count == 2
            # An unnamed DM is named after the other member (sync summary heroes).
            other = bob if client is alice else alice
            assert room.summary is not None and room.summary.heroes == [other.user_id]
            assert room.display_name == other.user  # the localpart: the default display name
    finally:
        await close_all(alice, bob)


def test_direct_chat(any_server: ServerProcess) -> None:
    run(direct_chat(any_server))


# (b) A named group with an admin ----------------------------------------------------------


async def group_chat(server: ServerProcess) -> None:
    names = new_users(server, "owner", "member", "guest")
    clients = [await logged_in(server, n) for n in names]
    owner, member, guest = clients
    try:
        created = await owner.room_create(name="Project Chat ✓", invite=[member.user_id, guest.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        await accept_invite(member, room_id)
        await accept_invite(guest, room_id)

        sent = {}
        for client in clients:
            sent[await send_text(client, room_id, f"hello from {client.user_id}")] = client.user_id

        for client in clients:
            seen: dict[str, RoomMessageText] = {}
            collect = collect_texts(room_id, seen)
            await sync_until(
                client, lambda r, c=collect, s=seen: c(r) or sent.keys() <= s.keys(), "the group's messages"
            )
            assert {e: seen[e].sender for e in sent} == sent
            room = client.rooms[room_id]
            assert room.name == "Project Chat ✓"
            assert room.display_name == "Project Chat ✓"
            assert set(room.users) == {c.user_id for c in clients}
            levels = room.power_levels
            assert levels.get_user_level(owner.user_id) == 100
            assert levels.get_user_level(member.user_id) == 0
            assert levels.get_user_level(guest.user_id) == 0
            assert levels.can_user_send_state(owner.user_id, "m.room.name")
            assert not levels.can_user_send_state(guest.user_id, "m.room.name")

        # The admin's power is real: a member may not rename the room, the owner may.
        refused = await guest.room_put_state(room_id, "m.room.name", {"name": "mine now"})
        assert getattr(refused, "status_code", None) == "M_FORBIDDEN", refused
        renamed = await owner.room_put_state(room_id, "m.room.name", {"name": "Renamed"})
        assert not getattr(renamed, "status_code", None), renamed
        await sync_until(member, lambda r: member.rooms[room_id].name == "Renamed", "the new name")

        # A rename the guest missed in a gap comes in the `state` of a limited timeline.
        again = await owner.room_put_state(room_id, "m.room.name", {"name": "Renamed again"})
        assert not getattr(again, "status_code", None), again
        for i in range(15):
            await send_text(owner, room_id, f"filler {i}")
        gap = await guest.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 5}}})
        assert isinstance(gap, SyncResponse), gap
        joined = gap.rooms.join[room_id]
        assert joined.timeline.limited is True
        assert [e.source["type"] for e in joined.timeline.events] == [TEXT] * 5
        names = [e.source["content"] for e in joined.state if e.source["type"] == "m.room.name"]
        assert names == [{"name": "Renamed again"}], [e.source for e in joined.state]
        assert guest.rooms[room_id].name == "Renamed again"
    finally:
        await close_all(*clients)


def test_group_with_name_and_admin(any_server: ServerProcess) -> None:
    run(group_chat(any_server))


# (c) Receipts and typing ---------------------------------------------------------------------


def receipts_of(response: SyncResponse, room_id: str) -> list[Any]:
    return [r for ev in ephemeral(response, room_id) if isinstance(ev, ReceiptEvent) for r in ev.receipts]


def unread(response: SyncResponse, room_id: str) -> int | None:
    room = response.rooms.join.get(room_id)
    if room is None or room.unread_notifications is None:
        return None
    count: int | None = room.unread_notifications.notification_count
    return count


def typing_of(response: SyncResponse, room_id: str) -> list[str] | None:
    events = [ev for ev in ephemeral(response, room_id) if isinstance(ev, TypingNoticeEvent)]
    return list(events[-1].users) if events else None


async def receipts_and_typing(server: ServerProcess) -> None:
    alice, bob, room_id = await dm_pair(server)

    def fully_read(r: SyncResponse) -> bool:
        room = r.rooms.join.get(room_id)
        return room is not None and any(
            isinstance(e, FullyReadEvent) and e.event_id == from_bob for e in room.account_data
        )

    try:
        from_bob = await send_text(bob, room_id, "please read this")
        from_alice = await send_text(alice, room_id, "read it")

        # Bob's message is unread for Alice (the one-to-one rule notifies); her own is not.
        await sync_until(alice, lambda r: unread(r, room_id) == 1, "one unread notification")

        # Alice marks Bob's message read with /read_markers (m.read + m.fully_read).
        marked = await alice.room_read_markers(room_id, fully_read_event=from_bob, read_event=from_bob)
        assert isinstance(marked, RoomReadMarkersResponse), marked
        # The sync that brings back her own receipt clears the count (so that her other
        # devices clear their badges), and m.fully_read arrives as room account data.
        marker_seen = []

        def own_receipt(r: SyncResponse) -> tuple[int | None] | None:
            if fully_read(r):
                marker_seen.append(True)
            mine = [x for x in receipts_of(r, room_id) if x.user_id == alice.user_id]
            return (unread(r, room_id),) if mine else None

        assert await sync_until(alice, own_receipt, "Alice's own receipt") == (0,)
        if not marker_seen:
            await sync_until(alice, fully_read, "Alice's m.fully_read marker")

        # m.fully_read is Alice's own room account data, not a receipt anyone else sees.
        fresh = AsyncClient(server.base_url)
        try:
            fresh.restore_login(alice.user_id, alice.device_id, alice.access_token)
            initial = await fresh.sync(timeout=0)
            assert isinstance(initial, SyncResponse), initial
            assert fully_read(initial), initial.rooms.join[room_id].account_data
        finally:
            await fresh.close()
        got = await sync_until(
            bob,
            lambda r: [x for x in receipts_of(r, room_id) if x.user_id == alice.user_id],
            "Alice's read receipt",
        )
        assert [(x.event_id, x.receipt_type) for x in got] == [(from_bob, "m.read")], got
        assert got[0].timestamp > 0

        # Bob answers with /receipt (nio sends thread_id "main").
        receipt = await bob.update_receipt_marker(room_id, from_alice)
        assert isinstance(receipt, UpdateReceiptMarkerResponse), receipt
        got = await sync_until(
            alice,
            lambda r: [x for x in receipts_of(r, room_id) if x.user_id == bob.user_id],
            "Bob's read receipt",
        )
        assert [(x.event_id, x.receipt_type) for x in got] == [(from_alice, "m.read")], got

        # A lagging device of Bob's marks an older event read: receipts never move back.
        stale = await bob.update_receipt_marker(room_id, from_bob)
        assert isinstance(stale, UpdateReceiptMarkerResponse), stale
        fresh = AsyncClient(server.base_url)
        try:
            fresh.restore_login(alice.user_id, alice.device_id, alice.access_token)
            initial = await fresh.sync(timeout=0)
            assert isinstance(initial, SyncResponse), initial
            bobs = [
                (x.event_id, x.thread_id) for x in receipts_of(initial, room_id) if x.user_id == bob.user_id
            ]
            assert bobs == [(from_alice, "main")], bobs
        finally:
            await fresh.close()

        # Typing starts and stops.
        started = await alice.room_typing(room_id, True, timeout=20_000)
        assert isinstance(started, RoomTypingResponse), started
        await sync_until(bob, lambda r: typing_of(r, room_id) == [alice.user_id], "Alice typing")
        assert bob.rooms[room_id].typing_users == [alice.user_id]
        stopped = await alice.room_typing(room_id, False)
        assert isinstance(stopped, RoomTypingResponse), stopped
        await sync_until(bob, lambda r: typing_of(r, room_id) == [], "Alice no longer typing")

        # A short typing timeout expires by itself.
        assert isinstance(await bob.room_typing(room_id, True, timeout=300), RoomTypingResponse)
        await sync_until(alice, lambda r: typing_of(r, room_id) == [bob.user_id], "Bob typing")
        await sync_until(alice, lambda r: typing_of(r, room_id) == [], "Bob's typing timing out", timeout=5)
    finally:
        await close_all(alice, bob)


def test_receipts_and_typing(any_server: ServerProcess) -> None:
    run(receipts_and_typing(any_server))


# (d) An edit and a redaction --------------------------------------------------------------------


async def edit_and_redact(server: ServerProcess) -> None:
    alice, bob, room_id = await dm_pair(server)
    try:
        original = await send_text(alice, room_id, "teh original")
        edit = await send_text(
            alice,
            room_id,
            "* the original",
            **{
                "m.new_content": {"msgtype": "m.text", "body": "the original"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            },
        )
        seen: dict[str, RoomMessageText] = {}
        collect = collect_texts(room_id, seen)
        await sync_until(bob, lambda r: collect(r) or {original, edit} <= seen.keys(), "the edit")
        relation = seen[edit].source["content"]["m.relates_to"]
        assert relation == {"rel_type": "m.replace", "event_id": original}
        assert seen[edit].source["content"]["m.new_content"]["body"] == "the original"

        # Someone else's "edit" of Alice's message is no replacement (spec: same sender only).
        await send_text(
            bob,
            room_id,
            "* hijacked",
            **{
                "m.new_content": {"msgtype": "m.text", "body": "hijacked"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            },
        )

        # The server aggregates Alice's edit onto the original.
        fetched = await bob.room_get_event(room_id, original)
        assert isinstance(fetched, RoomGetEventResponse), fetched
        replace = fetched.event.source.get("unsigned", {}).get("m.relations", {}).get("m.replace", {})
        assert replace.get("event_id") == edit, fetched.event.source

        redacted = await alice.room_redact(room_id, original, reason="typo")
        assert isinstance(redacted, RoomRedactResponse), redacted

        def redaction_seen(r: SyncResponse) -> RedactionEvent | None:
            found = [e for e in timeline(r, room_id) if isinstance(e, RedactionEvent)]
            return found[0] if found else None

        redaction = await sync_until(bob, redaction_seen, "the redaction")
        assert redaction.redacts == original
        assert redaction.event_id == redacted.event_id
        assert redaction.sender == alice.user_id
        assert redaction.reason == "typo"

        # Fetched afterwards, the original is empty and says who redacted it.
        fetched = await bob.room_get_event(room_id, original)
        assert isinstance(fetched, RoomGetEventResponse), fetched
        assert isinstance(fetched.event, RedactedEvent), fetched.event
        assert fetched.event.source["content"] == {}
        assert fetched.event.redacter == alice.user_id
        assert fetched.event.source["unsigned"]["redacted_because"]["event_id"] == redacted.event_id
        assert "m.relations" not in fetched.event.source["unsigned"]

        history = await bob.room_messages(room_id, limit=20)
        assert isinstance(history, RoomMessagesResponse), history
        by_id = {e.event_id: e for e in history.chunk}
        assert by_id[original].source["content"] == {}
        assert isinstance(by_id[original], RedactedEvent)
        assert isinstance(by_id[redacted.event_id], RedactionEvent)
        assert by_id[edit].source["content"]["body"] == "* the original"

        # A fresh sync of the room shows the redacted original too.
        fresh = AsyncClient(server.base_url, user=bob.user)
        try:
            fresh.restore_login(bob.user_id, bob.device_id, bob.access_token)
            initial = await fresh.sync(timeout=0)
            assert isinstance(initial, SyncResponse), initial
            events = {e.event_id: e for e in timeline(initial, room_id)}
            assert events[original].source["content"] == {}
        finally:
            await fresh.close()
    finally:
        await close_all(alice, bob)


def test_edit_and_redaction(any_server: ServerProcess) -> None:
    run(edit_and_redact(any_server))


# (e) Paginating 500 messages both ways -------------------------------------------------------------

COUNT = 500
BATCH = 50
PAGE = 37  # not a divisor of 500: the last page is short


async def paginate_500(server: ServerProcess) -> None:
    alice, bob, room_id = await dm_pair(server)
    try:
        sent: list[str] = []
        for start in range(0, COUNT, BATCH):
            batch = await asyncio.gather(
                *(send_text(alice, room_id, f"message {i:03d}") for i in range(start, start + BATCH))
            )
            sent.extend(batch)
        assert len(set(sent)) == COUNT
        batch_of = {event_id: i // BATCH for i, event_id in enumerate(sent)}

        # Bob's next sync has a gap: the newest few events, `limited`, and a prev_batch.
        tail = await bob.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 10}}})
        assert isinstance(tail, SyncResponse), tail
        room = tail.rooms.join[room_id]
        assert room.timeline.limited is True
        newest = [e.event_id for e in room.timeline.events]
        assert len(newest) == 10 and set(newest) <= set(sent)

        # Backwards from prev_batch to the room's start.
        backwards: list[Any] = []
        token = room.timeline.prev_batch
        pages = 0
        while True:
            page = await bob.room_messages(room_id, start=token, limit=PAGE, direction=MessageDirection.back)
            assert isinstance(page, RoomMessagesResponse), page
            assert page.start == token
            backwards.extend(page.chunk)
            pages += 1
            if not page.end or not page.chunk:
                break
            token = page.end
            assert pages < 100
        older = [e.event_id for e in reversed(backwards)]
        assert backwards[-1].source["type"] == "m.room.create"
        messages = [e for e in older if e in batch_of] + newest
        assert messages == [e for e in older + newest if e in batch_of]
        assert len(messages) == COUNT and set(messages) == set(sent)
        # Concurrent sends land in any order within their batch, never across batches.
        assert [batch_of[e] for e in messages] == sorted(batch_of[e] for e in messages)

        # Forwards from the start of the room to the end.
        forwards: list[Any] = []
        token = None
        pages = 0
        while True:
            page = await bob.room_messages(room_id, start=token, limit=PAGE, direction=MessageDirection.front)
            assert isinstance(page, RoomMessagesResponse), page
            forwards.extend(page.chunk)
            pages += 1
            if not page.end or not page.chunk:
                break
            token = page.end
            assert pages < 100
        assert [e.event_id for e in forwards] == older + newest
        timestamps = [e.server_timestamp for e in forwards]
        assert timestamps == sorted(timestamps)

        # Forwards again, from the first backwards page's `end` token: no overlap with that page.
        first = await bob.room_messages(room_id, start=room.timeline.prev_batch, limit=PAGE)
        assert isinstance(first, RoomMessagesResponse), first
        rest = await bob.room_messages(room_id, start=first.end, limit=PAGE, direction=MessageDirection.front)
        assert isinstance(rest, RoomMessagesResponse), rest
        assert [e.event_id for e in rest.chunk] == older[-PAGE:]
    finally:
        await close_all(alice, bob)


def test_paginate_500_messages(any_server: ServerProcess) -> None:
    run(paginate_500(any_server))


def test_server_log_is_clean(any_server: ServerProcess) -> None:
    """Whatever the clients did above, the server logged no traceback."""
    assert "Traceback" not in any_server.log_text()
