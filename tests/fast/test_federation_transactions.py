"""Inbound transactions in process: a retried transaction, at once or after a restart, is
answered the same and processed once (Server-Server API, "Transactions")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import TestClock, make_server
from remote_server import THEM, settle, signed_pdu, trust_them
from twisted.internet.defer import Deferred

from homeserver.server import HomeServer


async def _messages(hs: HomeServer, room_id: str) -> list[str]:
    head = await hs.room_heads.get(room_id)
    assert head is not None
    events = await hs.storage.events.room_events_between(room_id, 0, hs.persister.persisted_upto, 100, False)
    return [e.content.get("body", "") for e in events if e.type == "m.room.message"]


async def _public_room_and_their_join(hs: HomeServer) -> tuple[str, str, str, dict[str, Any], list[str], int]:
    """A public room of ours, and @x of THEM's join to it: (room, user, join id, join PDU,
    the auth events of a message of theirs after it, the join's depth)."""
    room_id = await hs.rooms.create_room("@alice:fast.test", {"preset": "public_chat", "room_version": "10"})
    head = await hs.room_heads.get(room_id)
    assert head is not None
    ids = {k: ev.event_id for k, ev in head.state.items()}
    user = f"@x:{THEM}"
    join_id, join = signed_pdu(
        room_id,
        user,
        "m.room.member",
        {"membership": "join"},
        list(head.extremities),
        [ids[("m.room.create", "")], ids[("m.room.join_rules", "")], ids[("m.room.power_levels", "")]],
        head.depth + 1,
        state_key=user,
    )
    auth = [ids[("m.room.create", "")], ids[("m.room.power_levels", "")], join_id]
    return room_id, user, join_id, join, auth, head.depth + 1


@pytest_twisted.ensureDeferred
async def test_a_retried_transaction_is_processed_once(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    await trust_them(hs, clock)
    room_id, user, join_id, join, auth, depth = await _public_room_and_their_join(hs)
    pdus, prev = [join], join_id
    for i in range(5):
        prev, pdu = signed_pdu(
            room_id,
            user,
            "m.room.message",
            {"msgtype": "m.text", "body": str(i)},
            [prev],
            auth,
            depth + 1 + i,
        )
        pdus.append(pdu)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def on_typing(origin: str, content: dict[str, Any]) -> None:
        seen.append((origin, content))

    async def broken(origin: str, content: dict[str, Any]) -> None:
        raise ValueError("a bad EDU")

    hs.federation_edus.register("m.typing", on_typing)
    hs.federation_edus.register("m.receipt", broken)
    edus = [
        {"edu_type": "m.receipt", "content": {}},  # fails alone
        {"edu_type": "org.example.unknown", "content": {}},  # ignored
        {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user, "typing": True}},
    ]
    body = {"origin": THEM, "origin_server_ts": 0, "pdus": pdus, "edus": edus}
    receiver = hs.federation_transactions
    # The same transaction twice at once: the copy waits for the first's answer.
    first = Deferred.fromCoroutine(receiver.receive(THEM, "txn1", body))
    copy = Deferred.fromCoroutine(receiver.receive(THEM, "txn1", body))
    answer = await settle(clock, first)
    assert await settle(clock, copy) == answer
    assert len(answer["pdus"]) == 6 and all(v == {} for v in answer["pdus"].values())
    assert await _messages(hs, room_id) == ["0", "1", "2", "3", "4"]
    # The EDUs were handed on once, after the PDUs; a failing handler did not stop the rest.
    assert seen == [(THEM, edus[2]["content"])]
    await hs.stop(None)

    # After a restart the stored answer is given again, nothing processed: a PDU changed
    # under the same transaction id would otherwise be refused or stored.
    hs = await make_server(tmp_path, clock)
    forged = dict(body, pdus=[{"not": "a pdu"}])
    again = await settle(
        clock, Deferred.fromCoroutine(hs.federation_transactions.receive(THEM, "txn1", forged))
    )
    assert again == answer
    assert await _messages(hs, room_id) == ["0", "1", "2", "3", "4"]
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_answers_are_kept_a_day_then_pruned(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    receiver, store = hs.federation_transactions, hs.federation_transactions.fed_store
    empty = {"origin": THEM, "origin_server_ts": 0, "pdus": [], "edus": []}
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "old", empty)))
    clock.advance(23 * 3600)
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "recent", empty)))
    assert await store.txn_response(THEM, "old") is not None  # a retry within the day
    clock.advance(2 * 3600)
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "new", empty)))
    assert await store.txn_response(THEM, "old") is None
    assert await store.txn_response(THEM, "recent") is not None
    assert await store.txn_response(THEM, "new") is not None
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_rejected_events_are_forgotten_after_a_week_and_the_dag_is_kept(tmp_path: Path) -> None:
    # A server may send rejected events without end; they would fill the disk if kept for
    # ever. Outliers and soft-failed events are in the room's DAG and stay.
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    receiver, store = hs.federation_transactions, hs.federation_transactions.fed_store
    room = f"!r:{THEM}"
    for status in ("rejected", "soft_failed", "outlier"):
        await store.store_outcome(f"$old_{status}", room, status, "test", {"x": 1}, clock.time_ms())
    clock.advance(6 * 86400)
    await store.store_outcome("$recent_rejected", room, "rejected", "test", {"x": 2}, clock.time_ms())
    empty = {"origin": THEM, "origin_server_ts": 0, "pdus": [], "edus": []}
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "a", empty)))
    assert await store.known_status("$old_rejected") == ("rejected", "test")  # within the week
    clock.advance(2 * 86400)
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "b", empty)))
    assert await store.known_status("$old_rejected") is None
    assert await store.known_status("$recent_rejected") == ("rejected", "test")
    assert await store.known_status("$old_soft_failed") == ("soft_failed", "test")
    assert await store.known_status("$old_outlier") == ("outlier", "test")
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_prune_that_fails_does_not_fail_the_transaction(tmp_path: Path) -> None:
    # The prune runs on a transaction's path after its answer is stored: its failure (a
    # database error, a lock held too long) is the prune's, logged; the sender gets its answer.
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    receiver, store = hs.federation_transactions, hs.federation_transactions.fed_store
    calls: list[int] = []

    async def failing(before_ms: int) -> None:
        calls.append(before_ms)
        raise RuntimeError("the database said no")

    store.prune_rejected = failing  # type: ignore[method-assign]
    empty = {"origin": THEM, "origin_server_ts": 0, "pdus": [], "edus": []}
    answer = await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "a", empty)))
    assert answer == {"pdus": {}} and len(calls) == 1
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_servers_typing_edus_are_held_to_the_users_typing_rate(tmp_path: Path) -> None:
    """Each typing change wakes every member's sync: a server sending 100 a transaction for
    its user gets no more through than the user's own client would (2/s, burst 30)."""
    clock = TestClock()
    hs = await make_server(tmp_path, clock, rate_limits={"enabled": True})
    await trust_them(hs, clock)
    room_id, user, _, join, _, _ = await _public_room_and_their_join(hs)
    receiver = hs.federation_transactions

    def typing_edus(n: int) -> list[dict[str, Any]]:
        return [
            {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user, "typing": i % 2 == 0}}
            for i in range(n)
        ]

    body = {"origin": THEM, "origin_server_ts": 0, "pdus": [join], "edus": typing_edus(100)}
    before = hs.typing.position
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "t1", body)))
    assert hs.typing.position - before == 30  # the burst; the other 70 dropped
    # A second later, two more.
    clock.advance(1.0)
    body = {"origin": THEM, "origin_server_ts": 0, "pdus": [], "edus": typing_edus(10)}
    before = hs.typing.position
    await settle(clock, Deferred.fromCoroutine(receiver.receive(THEM, "t2", body)))
    assert hs.typing.position - before == 2
    await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_servers_read_receipts_are_held_to_the_users_receipt_rate(tmp_path: Path) -> None:
    """Each read receipt is a write that wakes every member: a server's are held to the rate
    of the user's own client (here 3, then 1 a second), past it dropped."""
    clock = TestClock()
    limits = {"enabled": True, "receipt_per_user": {"per_second": 1, "burst": 3}}
    hs = await make_server(tmp_path, clock, rate_limits=limits)
    await trust_them(hs, clock)
    room_id, user, join_id, join, _, _ = await _public_room_and_their_join(hs)
    stored: list[str] = []
    hs.receipts.read_listeners.append(lambda user_id, room, _: stored.append(user_id))

    def receipts(n: int) -> list[dict[str, Any]]:
        read = {"event_ids": [join_id], "data": {"ts": 1}}
        return [{"edu_type": "m.receipt", "content": {room_id: {"m.read": {user: read}}}} for _ in range(n)]

    body = {"origin": THEM, "origin_server_ts": 0, "pdus": [join], "edus": receipts(10)}
    await settle(clock, Deferred.fromCoroutine(hs.federation_transactions.receive(THEM, "r1", body)))
    assert stored == [user] * 3
    clock.advance(1.0)
    body = {"origin": THEM, "origin_server_ts": 0, "pdus": [], "edus": receipts(10)}
    await settle(clock, Deferred.fromCoroutine(hs.federation_transactions.receive(THEM, "r2", body)))
    assert stored == [user] * 4
    await hs.stop(None)
