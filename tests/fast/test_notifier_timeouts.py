"""The notifier's deadline buckets on a clock the test moves: timeouts fire on time and
never early, share one timer, and wake-ups reach every waiter; a long-poll whose client
hung up is let go at its timeout (docs/adr/0004, "Idle connections")."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, connect, make_server, until

from homeserver.notifier import TIMEOUT_RESOLUTION_S, Notifier


def fired_at(clock: TestClock, d: Any, log: list[tuple[str, float]], name: str) -> None:
    d.addCallback(lambda _: log.append((name, clock.seconds())))


def run_clock(clock: TestClock, until: float, step: float = 0.01) -> None:
    while clock.seconds() < until:
        clock.advance(step)


def test_timeouts_fire_at_their_deadline_never_early_and_share_one_timer() -> None:
    clock = TestClock(0.0)
    clock.advance(1000.03)
    notifier = Notifier(clock)
    log: list[tuple[str, float]] = []
    for name, timeout in [("a", 1.0), ("b", 2.5), ("c", 0.3), ("d", 1.0)]:
        fired_at(clock, notifier.wait(name, timeout), log, name)
    # One reactor call for all of them, not one each.
    assert len(clock.getDelayedCalls()) == 1
    run_clock(clock, 1004)
    start = 1000.03
    deadlines = {"a": 1.0, "b": 2.5, "c": 0.3, "d": 1.0}
    assert [name for name, _ in log] == ["c", "a", "d", "b"]
    for name, at in log:
        late = at - (start + deadlines[name])
        assert -1e-9 <= late <= TIMEOUT_RESOLUTION_S + 0.011, (name, late)
    assert notifier.waiting_users() == 0
    assert clock.getDelayedCalls() == []


def test_a_wake_answers_every_waiter_of_the_user_and_only_theirs() -> None:
    clock = TestClock(0.0)
    notifier = Notifier(clock)
    log: list[tuple[str, float]] = []
    fired_at(clock, notifier.wait("@u:x", 30), log, "u1")
    fired_at(clock, notifier.wait("@u:x", 30), log, "u2")
    fired_at(clock, notifier.wait("@u:x", 10), log, "u3")
    fired_at(clock, notifier.wait("@v:x", 30), log, "v")
    assert notifier.waiting_users() == 2
    clock.advance(1)
    notifier.wake_users(["@u:x"])
    assert sorted(name for name, _ in log) == ["u1", "u2", "u3"]
    assert notifier.waiting_users() == 1
    # The woken waiters are out of their deadline buckets too: only v's timeout is left.
    assert sum(len(bucket) for bucket in notifier._buckets.values()) == 1
    run_clock(clock, 40, step=0.5)
    assert [name for name, _ in log][-1] == "v"
    assert notifier.waiting_users() == 0


def test_one_of_several_waiters_timing_out_leaves_the_others_waiting() -> None:
    clock = TestClock(0.0)
    notifier = Notifier(clock)
    log: list[tuple[str, float]] = []
    fired_at(clock, notifier.wait("@u:x", 1), log, "short")
    fired_at(clock, notifier.wait("@u:x", 60), log, "long")
    run_clock(clock, 2)
    assert [name for name, _ in log] == ["short"]
    assert notifier.waiting_users() == 1
    notifier.wake_users(["@u:x"])
    assert [name for name, _ in log] == ["short", "long"]


def test_an_earlier_deadline_moves_the_shared_timer_forward() -> None:
    clock = TestClock(0.0)
    notifier = Notifier(clock)
    log: list[tuple[str, float]] = []
    fired_at(clock, notifier.wait("@a:x", 60), log, "a")
    fired_at(clock, notifier.wait("@b:x", 2), log, "b")
    assert len(clock.getDelayedCalls()) == 1
    run_clock(clock, 3)
    assert [name for name, _ in log] == ["b"]


def test_shutdown_answers_everyone_and_cancels_the_timer() -> None:
    clock = TestClock(0.0)
    notifier = Notifier(clock)
    waits = [notifier.wait(f"@u{i}:x", 30) for i in range(5)]
    notifier.shutdown()
    assert all(d.called for d in waits)
    assert clock.getDelayedCalls() == []
    assert notifier.waiting_users() == 0


@pytest_twisted.ensureDeferred
async def test_a_long_poll_whose_client_hung_up_is_let_go_at_its_timeout(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    try:
        client = Client(hs)
        alice = await client.register(hs, "alice")
        _, first = await client.sync(alice["access_token"])
        assert hs.http is not None
        _, transport = connect(hs.http)
        transport.protocol.dataReceived(
            f"GET {CS}/sync?timeout=1000&since={quote(first['next_batch'])} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {alice['access_token']}\r\n\r\n".encode()
        )
        await until(lambda: hs.notifier.waiting_requests() == 1, "the long-poll waiting")
        transport.loseConnection()  # the client hangs up
        clock.advance(0.99)
        assert hs.notifier.waiting_requests() == 1  # never early, hung up or not
        clock.advance(0.01 + TIMEOUT_RESOLUTION_S)
        await until(lambda: hs.notifier.waiting_requests() == 0, "the long-poll let go")
        assert transport.value() == b""  # its answer went nowhere
        # The next request, on a new connection, is answered as ever.
        status, body = await client.sync(alice["access_token"], first["next_batch"])
        assert status == 200 and body["next_batch"]
    finally:
        await hs.stop(None)
