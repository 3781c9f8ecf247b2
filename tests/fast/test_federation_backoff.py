"""The federation sender in-process (core/federation/sender.py), time on the test clock.

The destination is a stand-in for the remote's `PUT /send/{txnId}` (it records each
transaction, and answers, fails or holds it as the test says); tests/test_federation_sender.py
sends to a real TLS endpoint. The remote member of the room is put there the simplest honest
way before joins over federation exist: their join event built and persisted by our own event
path (`EventService.send` with the remote user as sender), so the room's state lists them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, real_reactor, room_path, turn, until
from remote_server import Origin, profile_uri, signed
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.internet.defer import Deferred

from homeserver.config import parse_config
from homeserver.core.event_stream import StreamBatch
from homeserver.core.federation.client import RemoteError
from homeserver.core.federation.sender import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    MAX_PDUS,
    PROBE_INTERVAL_S,
    PROBE_WINDOW_S,
    take_transaction,
    version_probe,
)
from homeserver.server import HomeServer
from homeserver.storage.federation_queue import QueuedItem

REMOTE = "remote.test"
BOB = f"@bob:{REMOTE}"


class Remote:
    """Records every transaction; `mode` is "ok", "down" (connection refused), "hold",
    "error" (up, and answers 503) or "broken" (up, but the transaction fails unanswered).
    `probe` stands in for the sender's probe: whether it answers (counted in `probes`).
    With a `clock`, the time of each try and each probe is kept in `tried_at`, `probed_at`."""

    def __init__(self, clock: TestClock | None = None) -> None:
        self.clock = clock
        self.tried_at: list[float] = []
        self.probed_at: list[float] = []
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.answered: list[tuple[str, dict[str, Any]]] = []
        self.mode = "ok"
        self.held: list[Deferred[None]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.probes = 0
        # With `hold_probes`, a probe waits in `probes_held` (a slow network's answer).
        self.hold_probes = False
        self.probes_held: list[Deferred[None]] = []
        self.probes_in_flight = 0
        self.most_probes_in_flight = 0

    async def probe(self, destination: str) -> bool:
        self.probes += 1
        if self.clock is not None:
            self.probed_at.append(self.clock.seconds())
        self.probes_in_flight += 1
        self.most_probes_in_flight = max(self.most_probes_in_flight, self.probes_in_flight)
        try:
            if self.hold_probes:
                waiter: Deferred[None] = Deferred()
                self.probes_held.append(waiter)
                await waiter
            return self.mode != "down"
        finally:
            self.probes_in_flight -= 1

    async def __call__(self, destination: str, txn_id: str, body: dict[str, Any]) -> Any:
        self.calls.append((destination, txn_id, body))
        if self.clock is not None:
            self.tried_at.append(self.clock.seconds())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.mode == "down":
                raise ConnectionRefusedError(f"{destination} is down")
            if self.mode == "error":
                raise RemoteError(destination, 503, "M_UNKNOWN", "overloaded")
            if self.mode == "broken":
                raise ConnectionResetError(f"{destination} dropped the transaction")
            if self.mode == "hold":
                waiter: Deferred[None] = Deferred()
                self.held.append(waiter)
                await waiter
        finally:
            self.in_flight -= 1
        self.answered.append((txn_id, body))
        return {"pdus": {}}

    def texts(self) -> list[str]:
        """Message bodies of the answered transactions, in the order sent."""
        return [
            pdu["content"]["body"]
            for _, body in self.answered
            for pdu in body["pdus"]
            if pdu["type"] == "m.room.message"
        ]

    def edus(self, edu_type: str) -> list[dict[str, Any]]:
        return [
            e["content"]
            for _, body in self.answered
            for e in body.get("edus", [])
            if e["edu_type"] == edu_type
        ]


async def start_server(tmp_path: Path, clock: TestClock, remote: Remote) -> HomeServer:
    """harness.make_server with `remote` as the destination from the start (a restarted
    sender resumes its queues as it starts)."""
    raw: dict[str, Any] = {
        "server_name": "fast.test",
        "data_dir": str(tmp_path / "data"),
        "database": {"url": f"sqlite:///{tmp_path / 'hs.db'}"},
        "auth": {"password_hashing": "fast"},
        "rate_limits": {"enabled": False},
        "plugins": [],
    }
    hs = HomeServer(parse_config(raw, "fast-test.yaml", env={}), real_reactor(), clock=clock)
    hs.federation_sender.transport = remote
    hs.federation_sender.probe = remote.probe
    await hs.start()
    hs.site()
    return hs


async def shared_room(hs: HomeServer, client: Client, remote: Remote) -> dict[str, Any]:
    alice = await client.register(hs, "alice")
    room = (await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"}))[
        "room_id"
    ]
    await hs.events.send(BOB, room, "m.room.member", {"membership": "join"}, state_key=BOB)
    return {"alice": alice, "room": room}


async def say(hs: HomeServer, ctx: dict[str, Any], *texts: str) -> None:
    for text in texts:
        await hs.events.send(
            ctx["alice"]["user_id"], ctx["room"], "m.room.message", {"msgtype": "m.text", "body": text}
        )


@asynccontextmanager
async def running(
    tmp_path: Path,
) -> AsyncIterator[tuple[HomeServer, TestClock, Remote, Client, dict[str, Any]]]:
    """The set-up of most tests here: a started server sending to a fresh `Remote`, and
    alice's room that bob of REMOTE has joined; the server is stopped on the way out."""
    clock = TestClock()
    remote = Remote(clock)
    hs = await start_server(tmp_path, clock, remote)
    try:
        client = Client(hs)
        yield hs, clock, remote, client, await shared_room(hs, client, remote)
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_transactions_keep_order_hold_at_most_fifty_pdus_and_one_in_flight(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "hold"
        texts = [f"m{i}" for i in range(130)]
        await say(hs, ctx, *texts)
        while len(remote.texts()) < len(texts):
            await until(lambda: remote.held, "a transaction in flight")
            remote.held.pop(0).callback(None)
            await until(lambda: remote.held or len(remote.texts()) == len(texts), "the next one")
        assert remote.texts() == texts
        assert remote.most_in_flight == 1
        sizes = [len(body["pdus"]) for _, body in remote.answered]
        assert max(sizes) == MAX_PDUS and all(size <= MAX_PDUS for size in sizes), sizes
        assert all(body["origin"] == hs.config.server_name for _, body in remote.answered)
        assert len({txn for txn, _ in remote.answered}) == len(remote.answered)
        # Bob's own join came from "his" server: it is not sent back there; the room's
        # events from before he joined are not sent either.
        types = {pdu["type"] for _, body in remote.answered for pdu in body["pdus"]}
        assert types == {"m.room.message"}, types


@pytest_twisted.ensureDeferred
async def test_a_destination_that_is_down_backs_off_to_an_hour_then_gets_everything_in_order(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "down"
        await say(hs, ctx, "first")
        await until(lambda: len(remote.calls) == 1, "the first try")
        first_txn = remote.calls[0][1]
        pauses = []
        pause = BACKOFF_MIN_S
        while len(pauses) < 14:
            clock.advance(pause - 0.5)
            await turn(0.02)  # room for an early try to show
            assert len(remote.calls) == len(pauses) + 1, "tried again too early"
            clock.advance(0.5)
            await until(lambda: len(remote.calls) == len(pauses) + 2, f"the try after {pause}s")
            pauses.append(pause)
            pause = min(pause * 2, BACKOFF_MAX_S)
            if len(pauses) == 3:
                await say(hs, ctx, *[f"later {i}" for i in range(60)])
        assert pauses[:4] == [5, 10, 20, 40] and pauses[-3:] == [BACKOFF_MAX_S] * 3
        # Each try at the very moment its pause ended, on the clock.
        assert [b - a for a, b in pairwise(remote.tried_at)] == pauses
        # Every retry is the same transaction: same id, the one event it first carried.
        assert {txn for _, txn, _ in remote.calls} == {first_txn}
        assert all(len(body["pdus"]) == 1 for _, _, body in remote.calls)
        labels = {"destination": REMOTE}
        # The stream consumer queues the events on its own coroutine, after their commit.
        lag = hs.metrics.get_sample_value
        await until(lambda: lag("homeserver_federation_destination_lag", labels) == 61, "all 61 queued")
        assert (
            hs.metrics.get_sample_value("homeserver_federation_destination_backoff_seconds", labels) == 3600
        )
        remote.mode = "ok"
        clock.advance(BACKOFF_MAX_S)
        await until(lambda: len(remote.texts()) == 61, "everything once it is back")
        # The lag falls once each answer is recorded, just after the remote has answered.
        await until(lambda: lag("homeserver_federation_destination_lag", labels) == 0, "the lag back to 0")
        assert hs.metrics.get_sample_value("homeserver_federation_destination_backoff_seconds", labels) == 0
        assert remote.texts() == ["first"] + [f"later {i}" for i in range(60)]
        assert remote.answered[0][0] == first_txn
        # Answered: the backoff starts again from its shortest pause.
        remote.mode = "down"
        tries = len(remote.calls)
        await say(hs, ctx, "again")
        await until(lambda: len(remote.calls) == tries + 1, "tried at once")
        clock.advance(BACKOFF_MIN_S)
        await until(lambda: len(remote.calls) == tries + 2, "retried after the shortest pause")


@pytest_twisted.ensureDeferred
async def test_a_kicked_server_hears_of_the_kick_but_not_what_follows_it(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "hold"  # the sender runs behind: it reads the state after the kick
        await say(hs, ctx, "before")
        await until(lambda: remote.held, "a transaction in flight")
        alice = ctx["alice"]["user_id"]
        await hs.events.send(alice, ctx["room"], "m.room.member", {"membership": "leave"}, state_key=BOB)
        await say(hs, ctx, "after")
        remote.mode = "ok"
        remote.held.pop().callback(None)
        await until(
            lambda: any(p["type"] == "m.room.member" for _, b in remote.answered for p in b["pdus"]),
            "the kick",
        )
        clock.advance(1)
        await until(lambda: not hs.federation_sender._destinations[REMOTE].pending, "all sent")
        assert remote.texts() == ["before"]


def test_a_transaction_stops_before_the_51st_pdu_or_the_101st_edu() -> None:
    pdu = [QueuedItem(i, f"$e{i}", None) for i in range(60)]
    edu = [QueuedItem(100 + i, None, {"edu_type": "m.typing", "content": {}}) for i in range(120)]
    assert len(take_transaction(pdu)) == 50
    assert len(take_transaction(edu)) == 100
    mixed = take_transaction(edu[:99] + pdu[:50] + edu[99:])
    assert len(mixed) == 99 + 50 + 1  # up to the 100th EDU, queue order kept
    assert mixed == (edu[:99] + pdu[:50] + edu[99:])[:150]


@pytest_twisted.ensureDeferred
async def test_a_stuck_destination_holds_back_no_other(tmp_path: Path) -> None:
    stuck: list[Deferred[None]] = []
    async with running(tmp_path) as (hs, clock, remote, client, ctx):

        async def two_remotes(destination: str, txn_id: str, body: dict[str, Any]) -> Any:
            if destination == "stuck.test":
                stuck.append(Deferred())  # kept, as a connection would keep it: never answers
                await stuck[-1]
            return await remote(destination, txn_id, body)

        hs.federation_sender.transport = two_remotes
        carol = "@carol:stuck.test"
        await hs.events.send(carol, ctx["room"], "m.room.member", {"membership": "join"}, state_key=carol)
        await say(hs, ctx, *[f"m{i}" for i in range(80)])
        await until(lambda: len(remote.texts()) == 80, "everything to the server that answers")
        assert remote.texts() == [f"m{i}" for i in range(80)] and len(stuck) == 1


@pytest_twisted.ensureDeferred
async def test_an_event_of_another_server_is_handed_on_only_when_asked(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        carol = "@carol:third.test"
        join = await hs.events.send(
            carol, ctx["room"], "m.room.member", {"membership": "join"}, state_key=carol
        )
        await say(hs, ctx, "marker")
        await until(lambda: "marker" in remote.texts(), "the marker")
        assert not any(p["sender"] == carol for _, body in remote.answered for p in body["pdus"])
        # As a resident server does with a join it got by send_join: to every other server.
        await hs.federation_sender.queue_remote_event(join, "third.test")
        await until(
            lambda: any(p["sender"] == carol for _, b in remote.answered for p in b["pdus"]), "handed on"
        )
        to_origin = [p for d, _, body in remote.calls if d == "third.test" for p in body["pdus"]]
        assert to_origin and not any(p["sender"] == carol for p in to_origin)  # never back to its origin


def backoff_s(hs: HomeServer) -> float | None:
    """The pause the sender is in for REMOTE, as its metrics show it (0 when not pausing)."""
    return hs.metrics.get_sample_value(
        "homeserver_federation_destination_backoff_seconds", {"destination": REMOTE}
    )


@pytest_twisted.ensureDeferred
async def test_a_request_from_the_destination_ends_its_backoff_at_once(tmp_path: Path) -> None:
    """Any correctly signed request of that server, through our federation routes, sends its
    queue at that moment rather than at the end of the pause; another server's does not."""
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        them, other = Origin(REMOTE), Origin("other.test")
        for origin in (them, other):
            await origin.introduce(hs)
        uri = profile_uri(ctx["alice"]["user_id"])
        remote.mode = "error"  # it answered 503: up, so no probes, only the backoff
        await say(hs, ctx, "hello")
        await until(lambda: len(remote.calls) == 1, "the first try")
        failed_at = remote.tried_at[0]
        assert backoff_s(hs) == BACKOFF_MIN_S
        remote.mode = "ok"
        clock.advance(1)
        # The wake happens as the request is admitted, before it is answered: read at once.
        assert (await signed(hs, other, "GET", uri))[0] == 200
        assert (await signed(hs, Origin(REMOTE), "GET", uri))[0] == 401  # forged in its name
        assert backoff_s(hs) == BACKOFF_MIN_S
        clock.advance(0.5)
        assert (await signed(hs, them, "GET", uri))[0] == 200
        assert backoff_s(hs) == 0
        await until(lambda: remote.texts() == ["hello"], "sent without the clock moving")
        assert remote.tried_at == [failed_at, failed_at + 1.5]  # not failed_at + BACKOFF_MIN_S
        assert remote.probed_at == []


@pytest_twisted.ensureDeferred
async def test_a_probe_finds_a_destination_that_came_back_at_the_next_probe(tmp_path: Path) -> None:
    """Unreachable at t, probed every PROBE_INTERVAL_S from then; back (without calling us)
    at t + 2.5: sent at t + 4, the next probe, before the backoff's retry at t + 5."""
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "down"
        await say(hs, ctx, "one")
        await until(lambda: len(remote.calls) == 1, "the first try")
        down_at = remote.tried_at[0]
        # The probe stand-in answers at once: each probe runs within `advance`. (Steps in
        # binary fractions of a second: the clock's sums are exact.)
        clock.advance(PROBE_INTERVAL_S - 1 / 1024)
        assert remote.probed_at == []
        clock.advance(1 / 1024)
        assert remote.probed_at == [down_at + PROBE_INTERVAL_S]
        clock.advance(0.5)
        remote.mode = "ok"
        clock.advance(PROBE_INTERVAL_S - 0.5 - 1 / 1024)
        assert len(remote.probed_at) == 1 and len(remote.calls) == 1
        clock.advance(1 / 1024)
        await until(lambda: remote.texts() == ["one"], "the queue sent once a probe found it up")
        assert remote.probed_at == [down_at + PROBE_INTERVAL_S, down_at + 2 * PROBE_INTERVAL_S]
        assert remote.tried_at == [down_at, down_at + 2 * PROBE_INTERVAL_S]
        assert 2 * PROBE_INTERVAL_S < BACKOFF_MIN_S


async def advance_until(clock: TestClock, condition: Any, what: str, most_s: int) -> None:
    """Move the clock a second at a time, letting the server work, until `condition()`."""
    for _ in range(most_s):
        if condition():
            return
        clock.advance(1)
        await turn(0.01)
    assert condition(), f"not within {most_s} s: {what}"


@pytest_twisted.ensureDeferred
async def test_a_probe_notices_a_restarted_destination_long_before_its_backoff_ends(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "down"
        await say(hs, ctx, "one")
        await until(lambda: len(remote.calls) == 1, "the first try")
        # Down for 35 s: tried again after 5, 10 and 20 s; the next try is 40 s away.
        await advance_until(clock, lambda: len(remote.calls) == 4, "three retries", 60)
        assert remote.probes >= 15, remote.probes
        remote.mode = "ok"  # restarted, and it does not call us
        clock.advance(PROBE_INTERVAL_S)
        await until(lambda: remote.texts() == ["one"], "the queue sent once a probe found it up")
        # Answering again: nothing left to probe.
        probes = remote.probes
        for _ in range(5):
            clock.advance(PROBE_INTERVAL_S)
            await turn()
        assert remote.probes == probes


@pytest_twisted.ensureDeferred
async def test_a_destination_that_answers_with_an_error_or_fails_after_a_probe_gets_the_backoff_alone(
    tmp_path: Path,
) -> None:
    """No try every PROBE_INTERVAL_S for a server that is up but does not take transactions."""
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "error"
        await say(hs, ctx, "one")
        await until(lambda: len(remote.calls) == 1, "the first try")
        await advance_until(clock, lambda: len(remote.calls) == 3, "the tries after 5 and 10 s", 30)
        assert remote.probes == 0
        # Unreachable, then a probe finds it up but the transaction fails: probes stop.
        remote.mode = "down"
        await advance_until(clock, lambda: len(remote.calls) == 4, "the try after 20 s", 40)
        remote.mode = "broken"
        clock.advance(PROBE_INTERVAL_S)
        await until(lambda: len(remote.calls) == 5, "the try a probe woke")
        probes = remote.probes
        for _ in range(20):
            clock.advance(PROBE_INTERVAL_S)
            await turn()
        assert (remote.probes, len(remote.calls)) == (probes, 5)
        remote.mode = "ok"
        clock.advance(BACKOFF_MAX_S)
        await until(lambda: remote.texts() == ["one"], "sent at the backoff's next try")


@pytest_twisted.ensureDeferred
async def test_a_slow_probe_is_not_joined_by_a_second_probe_loop(tmp_path: Path) -> None:
    """A retry that fails while a probe waits for its answer starts no second probe loop
    (each failed retry would add one: several probes every PROBE_INTERVAL_S)."""
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "down"
        remote.hold_probes = True
        await say(hs, ctx, "one")
        await until(lambda: len(remote.calls) == 1, "the first try")
        await advance_until(clock, lambda: len(remote.calls) == 3, "the tries after 5 and 10 s", 30)
        for _ in range(10):
            clock.advance(PROBE_INTERVAL_S)
            await turn(0.01)
        assert remote.most_probes_in_flight == 1
        for waiter in remote.probes_held:
            waiter.callback(None)
        await turn(0.01)
        clock.advance(PROBE_INTERVAL_S)
        await turn(0.01)
        assert remote.probes_in_flight == 1  # one loop goes on probing


@pytest_twisted.ensureDeferred
async def test_a_destination_down_for_long_is_no_longer_probed(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        remote.mode = "down"
        await say(hs, ctx, "one")
        await until(lambda: len(remote.calls) == 1, "the first try")
        for _ in range(int(PROBE_WINDOW_S / 60) + 1):
            clock.advance(60)
            await turn(0.01)
        probes = remote.probes
        assert probes > 0
        remote.mode = "ok"
        for _ in range(5):
            clock.advance(PROBE_INTERVAL_S)
            await turn(0.01)
        assert remote.probes == probes and remote.texts() == []
        # Its own request still ends the backoff at once.
        hs.federation_sender.remote_is_up(REMOTE)
        await until(lambda: remote.texts() == ["one"], "sent once it called us")


@pytest_twisted.ensureDeferred
async def test_the_version_probe_counts_any_answer_but_a_5xx_as_up() -> None:
    async def answering(outcome: Any) -> bool:
        async def get_json(destination: str, path: str) -> Any:
            assert path == "/_matrix/federation/v1/version"
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return await version_probe(get_json)(REMOTE)

    assert await answering({"server": {"name": "Synapse"}}) is True
    # The server itself refused (it is up): 401 without our key, 404 without the endpoint.
    assert await answering(RemoteError(REMOTE, 401, "M_UNAUTHORIZED", "who")) is True
    assert await answering(RemoteError(REMOTE, 404, "M_UNRECOGNIZED", "no")) is True
    # A proxy answering for a server that is down; no answer at all.
    assert await answering(RemoteError(REMOTE, 502, "M_UNKNOWN", "Bad Gateway")) is False
    assert await answering(ConnectionRefusedError()) is False


@pytest_twisted.ensureDeferred
async def test_a_refused_transaction_is_not_sent_for_ever(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        refused = {"n": 0}
        original = remote.__call__

        async def refuse_first(destination: str, txn_id: str, body: dict[str, Any]) -> Any:
            if refused["n"] == 0:
                refused["n"] += 1
                raise RemoteError(destination, 400, "M_BAD_JSON", "no")
            return await original(destination, txn_id, body)

        hs.federation_sender.transport = refuse_first
        await say(hs, ctx, "bad", "good")
        await until(lambda: "good" in remote.texts(), "the next transaction")
        assert "bad" not in remote.texts()


@pytest_twisted.ensureDeferred
async def test_a_restart_resends_the_transaction_in_flight_under_its_id_and_loses_nothing(
    tmp_path: Path,
) -> None:
    clock = TestClock()
    remote = Remote()
    hs = await start_server(tmp_path, clock, remote)
    ctx = await shared_room(hs, Client(hs), remote)
    remote.mode = "hold"
    await say(hs, ctx, "one")
    await until(lambda: remote.held, "a transaction in flight")
    await say(hs, ctx, "two", "three")
    in_flight = remote.calls[0]
    await hs.stop(None)  # the remote never answered

    again = Remote()
    hs = await start_server(tmp_path, clock, again)
    try:
        await say(hs, ctx, "four")
        await until(lambda: len(again.texts()) == 4, "everything after the restart")
        assert again.texts() == ["one", "two", "three", "four"]
        assert again.answered[0][0] == in_flight[1]
        assert again.answered[0][1]["pdus"] == in_flight[2]["pdus"]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_local_typing_receipts_presence_and_to_device_go_to_the_remote(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        token, alice = ctx["alice"]["access_token"], ctx["alice"]["user_id"]
        room = room_path(ctx["room"])
        sent = await client.call(
            "PUT", f"{room}/send/m.room.message/t1", token, {"msgtype": "m.text", "body": "x"}
        )
        await client.call("PUT", f"{room}/typing/{alice}", token, {"typing": True, "timeout": 10000})
        await client.call("POST", f"{room}/receipt/m.read/{sent['event_id']}", token, {})
        await client.call("PUT", f"/presence/{alice}/status", token, {"presence": "unavailable"})
        message = {"messages": {BOB: {"BOBDEV": {"hello": "bob"}}}}
        await client.call("PUT", "/sendToDevice/m.test/td1", token, message)
        await client.call("PUT", "/sendToDevice/m.test/td1", token, message)  # a retry
        await until(lambda: remote.edus("m.direct_to_device"), "the to-device message")
        clock.advance(1)
        await until(lambda: not hs.federation_sender._destinations[REMOTE].pending, "all sent")
        assert remote.edus("m.typing") == [{"room_id": ctx["room"], "user_id": alice, "typing": True}]
        receipt = remote.edus("m.receipt")[0][ctx["room"]]["m.read"][alice]
        assert receipt["event_ids"] == [sent["event_id"]]
        assert remote.edus("m.presence")[-1]["push"][0]["presence"] == "unavailable"
        [to_device] = remote.edus("m.direct_to_device")  # the retry was not queued again
        assert to_device["sender"] == alice and to_device["messages"] == message["messages"]
        assert to_device["type"] == "m.test"


@pytest_twisted.ensureDeferred
async def test_remote_typing_receipts_and_presence_reach_local_sync_when_checked(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        token, room_id = ctx["alice"]["access_token"], ctx["room"]
        sent = await client.call(
            "PUT", f"{room_path(room_id)}/send/m.room.message/t1", token, {"msgtype": "m.text", "body": "x"}
        )
        _, body = await client.sync(token)
        since = body["next_batch"]
        mallory = "@mallory:remote.test"  # of the origin, but not in the room
        alice = ctx["alice"]["user_id"]
        read = {"event_ids": [sent["event_id"]], "data": {"ts": 1}}
        await hs.federation_edus.receive_all(
            "evil.test",
            [
                {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": BOB, "typing": True}},
                {"edu_type": "m.presence", "content": {"push": [{"user_id": BOB, "presence": "online"}]}},
                # A read receipt in the name of our own user (Synapse's CVE-2023-42453).
                {"edu_type": "m.receipt", "content": {room_id: {"m.read": {alice: read}}}},
            ],
        )
        await hs.federation_edus.receive_all(
            REMOTE,
            [
                {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": mallory, "typing": True}},
                {"edu_type": "m.receipt", "content": {room_id: {"m.read": {mallory: read}}}},
                {"edu_type": "m.typing", "content": "not an object"},
                {"edu_type": "org.example.unknown", "content": {}},
                {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": BOB, "typing": True}},
                {
                    "edu_type": "m.receipt",
                    "content": {
                        room_id: {"m.read": {BOB: {"event_ids": [sent["event_id"]], "data": {"ts": 1}}}}
                    },
                },
                {"edu_type": "m.presence", "content": {"push": [{"user_id": BOB, "presence": "online"}]}},
            ],
        )
        _, body = await client.sync(token, since)
        ephemeral = body["rooms"]["join"][room_id]["ephemeral"]["events"]
        typing = [e for e in ephemeral if e["type"] == "m.typing"]
        assert typing and typing[0]["content"]["user_ids"] == [BOB]
        receipts = [e for e in ephemeral if e["type"] == "m.receipt"]
        assert list(receipts[0]["content"][sent["event_id"]]["m.read"]) == [BOB]  # not alice, mallory
        presence = {e["sender"]: e["content"]["presence"] for e in body["presence"]["events"]}
        assert presence.get(BOB) == "online"
        # Remote typing ends on its own after 30 s unless renewed.
        clock.advance(31)
        assert hs.typing.typing_users(room_id) == []
        # A server the room's ACL bans is not heard.
        acl = {"allow": ["*"], "deny": [REMOTE]}
        await hs.events.send(ctx["alice"]["user_id"], room_id, "m.room.server_acl", acl, state_key="")
        typing_edu = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": BOB, "typing": True}}
        await hs.federation_edus.receive_all(REMOTE, [typing_edu])
        assert hs.typing.typing_users(room_id) == []


def _key_entry(user_id: str, usage: str, key: Any) -> tuple[dict[str, Any], str]:
    public = encode_verify_key_base64(get_verify_key(key))
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}, public


@pytest_twisted.ensureDeferred
async def test_device_and_cross_signing_key_changes_go_to_servers_sharing_a_room(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        token, alice, device_id = (ctx["alice"][k] for k in ("access_token", "user_id", "device_id"))
        device_key = generate_signing_key(device_id)
        keys = {
            "user_id": alice,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"ed25519:{device_id}": encode_verify_key_base64(get_verify_key(device_key)),
                f"curve25519:{device_id}": "A" * 43,
            },
        }
        await client.call("POST", "/keys/upload", token, {"device_keys": sign_json(keys, alice, device_key)})
        master_key, self_key = generate_signing_key("m"), generate_signing_key("s")
        master, master_public = _key_entry(alice, "master", master_key)
        master_key.version = master_public
        self_signing, _ = _key_entry(alice, "self_signing", self_key)
        body = {"master_key": master, "self_signing_key": sign_json(self_signing, alice, master_key)}
        await client.call("POST", "/keys/device_signing/upload", token, body)
        await until(lambda: remote.edus("m.signing_key_update"), "the cross-signing keys")
        [update] = remote.edus("m.device_list_update")
        assert update["user_id"] == alice and update["device_id"] == device_id and not update["deleted"]
        assert update["keys"]["keys"] == keys["keys"] and update["prev_id"] == []
        [signing] = remote.edus("m.signing_key_update")
        assert signing["master_key"] == master and "user_signing_key" not in signing
        await hs.keys.devices_deleted(alice, [device_id])
        await until(lambda: len(remote.edus("m.device_list_update")) == 2, "the deletion")
        deleted = remote.edus("m.device_list_update")[1]
        # prev_id: the user's change before it (the cross-signing keys' change, after the device's).
        assert deleted["deleted"] and update["stream_id"] < deleted["prev_id"][0] < deleted["stream_id"]


@pytest_twisted.ensureDeferred
async def test_events_handed_again_after_a_crash_are_not_sent_twice(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        before = hs.stream.position
        await say(hs, ctx, "once")
        await until(lambda: remote.texts() == ["once"], "sent")
        # What the stream hands a durable consumer again after a kill -9 between queueing a
        # batch and saving its position: the same events, marked as maybe repeated.
        items = await hs.storage.events.committed_events(before, hs.stream.position, 100)
        repeat = StreamBatch(before, hs.stream.position, items, redelivered_upto=hs.stream.position)
        await hs.federation_sender._on_events(repeat)
        await say(hs, ctx, "next")
        await until(lambda: "next" in remote.texts(), "the next one")
        assert remote.texts() == ["once", "next"]
        # Past the prune (two ticks, the consumer's saved position past the first), the rows
        # are gone and the queue keeps working.
        rows: list[int] = []

        async def count() -> None:
            rows.append((await hs.storage.db.query("t", "SELECT COUNT(*) FROM federation_outbox"))[0][0])

        await count()
        assert rows[-1] > 0  # answered PDU rows kept for their dedupe key
        clock.advance(600)
        await turn(0.02)
        clock.advance(600)
        for _ in range(100):
            await count()
            if rows[-1] == 0:
                break
        assert rows[-1] == 0, rows
        await say(hs, ctx, "after prune")
        await until(lambda: "after prune" in remote.texts(), "sent after the prune")


@pytest_twisted.ensureDeferred
async def test_typing_queued_for_a_down_server_is_dropped_once_stale(tmp_path: Path) -> None:
    async with running(tmp_path) as (hs, clock, remote, client, ctx):
        token, alice = ctx["alice"]["access_token"], ctx["alice"]["user_id"]
        room = room_path(ctx["room"])
        remote.mode = "down"
        await say(hs, ctx, "while down")
        await until(lambda: remote.calls, "the first try")
        await client.call("PUT", f"{room}/typing/{alice}", token, {"typing": True, "timeout": 10000})
        await until(lambda: hs.federation_sender._destinations[REMOTE].pending == 2, "typing queued")
        # Back within the typing timeout: the notice still goes.
        remote.mode = "ok"
        clock.advance(BACKOFF_MIN_S)
        await until(lambda: remote.edus("m.typing"), "fresh typing sent")
        assert remote.texts() == ["while down"]
        # Down again, and back only after a typing notice would have expired over there.
        remote.mode = "down"
        await client.call("PUT", f"{room}/typing/{alice}", token, {"typing": False})
        await say(hs, ctx, "still down")
        await until(lambda: len(remote.calls) > len(remote.answered), "a failed try")
        clock.advance(31)
        remote.mode = "ok"
        clock.advance(BACKOFF_MAX_S)
        await until(lambda: remote.texts() == ["while down", "still down"], "the message")
        # The stale typing notice was not delivered, and no EDU carries our bookkeeping.
        assert remote.edus("m.typing") == [{"room_id": ctx["room"], "user_id": alice, "typing": True}]
        assert all("_expires_ts" not in e for _, body in remote.answered for e in body.get("edus", []))
