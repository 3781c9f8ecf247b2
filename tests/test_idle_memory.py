"""What idle connections hold, and that holding less changed no behaviour.

An idle long-poll waits in the notifier's shared deadline buckets (no timer of
its own) and keeps no copy of its request head; docs/adr/0004, "Idle
connections". These tests pin the behaviour around that: timeouts still fire
on time and never early, wake-ups still reach every waiter, disconnected
clients are still let go.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import requests
from conftest import ServerProcess
from twisted.internet.task import Clock

from homeserver.notifier import TIMEOUT_RESOLUTION_S, Notifier

CLIENT = "/_matrix/client/v3"
EMPTY_FILTER = json.dumps({"room": {"rooms": [], "timeline": {"limit": 0}}, "presence": {"not_types": ["*"]}})


# The notifier on a clock the test moves ------------------------------------------------


def fired_at(clock: Clock, d: Any, log: list[tuple[str, float]], name: str) -> None:
    d.addCallback(lambda _: log.append((name, clock.seconds())))


def run_clock(clock: Clock, until: float, step: float = 0.01) -> None:
    while clock.seconds() < until:
        clock.advance(step)


def test_timeouts_fire_at_their_deadline_never_early_and_share_one_timer() -> None:
    clock = Clock()
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
    clock = Clock()
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
    clock = Clock()
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
    clock = Clock()
    notifier = Notifier(clock)
    log: list[tuple[str, float]] = []
    fired_at(clock, notifier.wait("@a:x", 60), log, "a")
    fired_at(clock, notifier.wait("@b:x", 2), log, "b")
    assert len(clock.getDelayedCalls()) == 1
    run_clock(clock, 3)
    assert [name for name, _ in log] == ["b"]


def test_shutdown_answers_everyone_and_cancels_the_timer() -> None:
    clock = Clock()
    notifier = Notifier(clock)
    waits = [notifier.wait(f"@u{i}:x", 30) for i in range(5)]
    notifier.shutdown()
    assert all(d.called for d in waits)
    assert clock.getDelayedCalls() == []
    assert notifier.waiting_users() == 0


# Long-polls against a real server ------------------------------------------------------


def new_user(server: ServerProcess) -> dict[str, Any]:
    return server.register(f"idle{secrets.token_hex(4)}")


def sync(
    server: ServerProcess,
    token: str,
    since: str | None = None,
    timeout_ms: int = 0,
    filter_: str | None = None,
) -> tuple[dict[str, Any], float]:
    path = f"{CLIENT}/sync?timeout={timeout_ms}"
    if since is not None:
        path += f"&since={quote(since)}"
    if filter_ is not None:
        path += f"&filter={quote(filter_)}"
    start = time.monotonic()
    r = requests.get(server.url(path), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - start


def test_a_long_poll_with_nothing_new_returns_an_empty_delta_after_its_timeout(server: ServerProcess) -> None:
    user = new_user(server)
    first, _ = sync(server, user["access_token"], filter_=EMPTY_FILTER)
    body, took = sync(server, user["access_token"], first["next_batch"], 1000, EMPTY_FILTER)
    assert 0.95 <= took <= 2.0, took
    assert body["rooms"] == {"join": {}, "invite": {}, "leave": {}, "knock": {}}
    assert body["next_batch"]
    # And again from the new token (the head of the first long-poll is long gone).
    body, took = sync(server, user["access_token"], body["next_batch"], 500, EMPTY_FILTER)
    assert 0.45 <= took <= 1.5, took


def test_long_polls_of_two_devices_both_wake_on_one_message(server: ServerProcess) -> None:
    alice = new_user(server)
    bob = new_user(server)
    bob2 = server.login(bob["user_id"].split(":")[0][1:])
    headers = {"Authorization": f"Bearer {alice['access_token']}"}
    r = requests.post(server.url(f"{CLIENT}/createRoom"), json={"invite": [bob["user_id"]]}, headers=headers)
    room_id = r.json()["room_id"]
    r = requests.post(
        server.url(f"{CLIENT}/join/{quote(room_id)}"),
        json={},
        headers={"Authorization": f"Bearer {bob['access_token']}"},
    )
    assert r.status_code == 200, r.text
    sinces = [sync(server, token)[0]["next_batch"] for token in (bob["access_token"], bob2["access_token"])]
    with ThreadPoolExecutor(2) as pool:
        polls = [
            pool.submit(sync, server, token, since, 20_000)
            for token, since in zip((bob["access_token"], bob2["access_token"]), sinces, strict=True)
        ]
        time.sleep(0.5)
        r = requests.put(
            server.url(f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/t{secrets.token_hex(4)}"),
            json={"msgtype": "m.text", "body": "wake up"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        for poll in polls:
            body, took = poll.result(15)
            assert took < 10, took
            events = body["rooms"]["join"][room_id]["timeline"]["events"]
            assert [e["content"]["body"] for e in events if e["type"] == "m.room.message"] == ["wake up"]


def test_a_client_that_hangs_up_mid_long_poll_is_let_go(server: ServerProcess) -> None:
    """The server answers (into the void) at the timeout and the connection is gone; the
    next request on a new connection works as ever."""
    user = new_user(server)
    since = sync(server, user["access_token"])[0]["next_batch"]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        f"GET {CLIENT}/sync?timeout=1000&since={quote(since)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {user['access_token']}\r\n\r\n".encode()
    )
    time.sleep(0.2)
    sock.close()
    time.sleep(1.5)
    body, took = sync(server, user["access_token"], since, 200)
    assert took < 2
    assert "next_batch" in body
