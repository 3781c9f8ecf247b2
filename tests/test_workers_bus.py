"""RedisBus against a real Redis (127.0.0.1:6379): messages reach the other processes in
order and never come back to the sender; a killed connection is made again and runs the
connect callbacks again (where each subscriber catches up from PostgreSQL)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from workers_harness import system_binary

from homeserver.workers.bus import RedisBus

REDIS_URL = os.environ.get("HOMESERVER_TEST_REDIS", "redis://127.0.0.1:6379/0")
SECRET = b"the workers' shared secret"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def redis_cli(*args: str) -> str:
    return subprocess.run(["redis-cli", *args], check=True, capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def prefix() -> str:
    system_binary("redis-cli", "redis-tools")  # installed with apt-get when missing
    if not _redis_up():
        if os.environ.get("CI"):
            raise AssertionError("Redis is not reachable at 127.0.0.1:6379")
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    # Its own channels: tests running at the same time never hear each other.
    return f"test{secrets.token_hex(4)}:"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    from twisted.internet import reactor

    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"never happened: {what}")


@pytest_twisted.async_yield_fixture
async def buses(prefix: str) -> AsyncIterator[tuple[RedisBus, RedisBus, dict[str, Any]]]:
    a, b = RedisBus("a", REDIS_URL, prefix, SECRET), RedisBus("b", REDIS_URL, prefix, SECRET)
    seen: dict[str, Any] = {"a": [], "b": [], "connects_a": 0, "connects_b": 0}
    for name, bus in (("a", a), ("b", b)):
        bus.subscribe("ch", lambda m, name=name: seen[name].append(m))

        async def connected(name: str = name) -> None:
            seen[f"connects_{name}"] += 1

        bus.on_connected(connected)
        await bus.start()
    try:
        yield a, b, seen
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_messages_reach_the_other_process_in_order_and_not_the_sender(buses: Any) -> None:
    a, b, seen = buses
    assert a.connected and b.connected and (seen["connects_a"], seen["connects_b"]) == (1, 1)
    # Payloads that a lossy client would change ("007" -> 7, "3.10" -> 3.1).
    for n in range(300):
        a.publish("ch", {"n": n, "text": "007", "v": "3.10", "u": "é \u2603"})
    b.publish("ch", {"from": "b"})
    await until(lambda: len(seen["b"]) == 300 and seen["a"], "all delivered")
    assert [m["n"] for m in seen["b"]] == list(range(300))
    assert seen["b"][0] == {"n": 0, "text": "007", "v": "3.10", "u": "é \u2603"}
    assert seen["a"] == [{"from": "b"}]


@pytest_twisted.ensureDeferred
async def test_a_late_subscription_and_another_prefix(buses: Any, prefix: str) -> None:
    a, b, seen = buses
    late: list[Any] = []
    b.subscribe("late", late.append)
    other = RedisBus("c", REDIS_URL, prefix + "other:", SECRET)
    stray: list[Any] = []
    other.subscribe("late", stray.append)
    await other.start()
    try:
        channel = prefix + "late"
        await until(lambda: redis_cli("PUBSUB", "NUMSUB", channel).split() == [channel, "1"], "subscribed")
        a.publish("late", {"x": 1})
        await until(lambda: late == [{"x": 1}], "late subscription delivered")
        assert stray == []
    finally:
        await other.stop()


def _past_orjson() -> dict[str, Any]:
    """What a process may hold that orjson will not write: integers past 64 bits, nesting
    past 255 levels, a lone surrogate; and what it writes, at 64 bits' edges."""
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    return {"big": 2**70, "low": -(2**70), "deep": deep, "lone": "\ud800", "u64": 2**64 - 1, "i64": -(2**63)}


@pytest_twisted.ensureDeferred
async def test_a_message_orjson_cannot_write_arrives_intact(buses: Any) -> None:
    """Client JSON a process accepted (a to-device message, an event batch) must reach the
    others as it is: publishing it was an error, and the others never heard of it."""
    a, b, seen = buses
    odd = _past_orjson()
    a.publish("ch", odd)
    a.publish("ch", {"after": 1})  # and the ordinary ones still flow, in order
    await until(lambda: len(seen["b"]) == 2, "both delivered")
    assert seen["b"] == [odd, {"after": 1}]


def _client_id(name: bytes) -> str:
    for line in redis_cli("CLIENT", "LIST").splitlines():
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        if fields.get("name") == name.decode():
            return fields["id"]
    raise AssertionError(f"no Redis client named {name!r}")


@pytest_twisted.ensureDeferred
async def test_a_killed_connection_reconnects_and_runs_the_connect_callbacks_again(buses: Any) -> None:
    a, b, seen = buses
    redis_cli("CLIENT", "KILL", "ID", _client_id(b.client_name("sub")))
    await until(lambda: seen["connects_b"] == 2, "b reconnected and caught up")
    assert b.connected
    a.publish("ch", {"after": True})
    await until(lambda: {"after": True} in seen["b"], "delivered after the reconnect")
    # The publisher's connection too: publishes while it is down are dropped, not queued
    # or raised; later ones go through.
    redis_cli("CLIENT", "KILL", "ID", _client_id(a.client_name("pub")))
    for n in range(50):
        a.publish("ch", {"during": n})
        await deferLater(_reactor(), 0.01, lambda: None)
    await until(lambda: a._publisher is not None, "a's publisher back")
    a.publish("ch", {"final": True})
    await until(lambda: {"final": True} in seen["b"], "delivered after the publisher came back")
    assert seen["connects_a"] == 1


@pytest_twisted.ensureDeferred
async def test_a_message_without_the_shared_secret_is_dropped(buses: Any, prefix: str) -> None:
    """Anyone who can publish on the Redis (another server sharing it) must not be heard: a
    forged event batch would reach every process's stream."""
    a, b, seen = buses
    forged = {"writer": "w1", "items": ["forged"]}
    payload = json.dumps(["a", forged]).encode()
    wrong = hmac.new(b"another secret", payload, hashlib.sha256).digest()
    for message in (payload, wrong + payload):  # unsigned; signed with another secret
        # Published before the genuine message below, from a finished command: delivered first.
        subprocess.run(["redis-cli", "-x", "PUBLISH", prefix + "ch"], input=message, check=True, timeout=10)
    a.publish("ch", {"genuine": True})
    await until(lambda: {"genuine": True} in seen["b"], "the genuine message delivered")
    assert seen["b"] == [{"genuine": True}]


def _raw_subscriber(channel: str) -> socket.socket:
    """A subscriber outside the reactor: it reads with blocking calls."""
    sock = socket.create_connection(("127.0.0.1", 6379), timeout=5)
    name = channel.encode()
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
    confirmed = b""
    while b"subscribe" not in confirmed:
        confirmed += sock.recv(4096)
    return sock


@pytest_twisted.ensureDeferred
async def test_a_publish_leaves_before_the_reactor_turn_ends(buses: Any, prefix: str) -> None:
    """A writer publishes a commit's batch and then, in the same reactor turn, wakes its
    own long-polls (tens of ms in a big room): the other processes must have the batch
    meanwhile, not once that turn is over."""
    a, _, _ = buses
    sock = _raw_subscriber(prefix + "ch")
    try:
        a.publish("ch", {"batch": "now"})
        # Still in the turn that published: the reactor sends nothing until it returns.
        received = b""
        try:
            while b"now" not in received:
                received += sock.recv(4096)
        except TimeoutError:
            raise AssertionError("the message stayed in the process until the reactor's next turn") from None
        assert b'"batch":"now"' in received
    finally:
        sock.close()
