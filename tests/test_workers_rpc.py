"""WorkerRpc over real HTTP between two internal listeners: answers and Matrix errors cross
unchanged, the shared secret is checked, and an instance that cannot answer is a 503."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import free_port
from twisted.internet.defer import Deferred

from homeserver.api.http import make_site
from homeserver.api.internal import internal_router
from homeserver.core.clock import Clock
from homeserver.errors import Forbidden, LimitExceeded, NotFound, ServiceUnavailable
from homeserver.workers.rpc import HttpTransport, WorkerRpc

SECRET = b"a-shared-secret-for-tests"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Instances:
    """Two instances, "a" and "b", each with its internal listener on a free port."""

    def __init__(self) -> None:
        self.addresses: dict[str, tuple[str, int]] = {"gone": ("127.0.0.1", free_port())}
        self.rpcs: dict[str, WorkerRpc] = {}
        self.ports: list[Any] = []
        self.transports: list[HttpTransport] = []

    def transport(self, secret: bytes = SECRET, timeout_s: float = 5.0) -> HttpTransport:
        t = HttpTransport(_reactor(), self.addresses.__getitem__, secret, timeout_s)
        self.transports.append(t)
        return t

    def start(self, name: str) -> WorkerRpc:
        rpc = WorkerRpc(name, SECRET, self.transport())
        site = make_site(internal_router(rpc), 1024 * 1024, Clock(_reactor()))
        port = _reactor().listenTCP(0, site, interface="127.0.0.1")
        self.ports.append(port)
        self.addresses[name] = ("127.0.0.1", port.getHost().port)
        self.rpcs[name] = rpc
        return rpc

    async def close(self) -> None:
        for t in self.transports:
            await t.close()
        for port in self.ports:
            await port.stopListening()


@pytest_twisted.async_yield_fixture
async def instances() -> AsyncIterator[Instances]:
    pair = Instances()
    a, b = pair.start("a"), pair.start("b")

    async def send(args: dict[str, Any]) -> dict[str, Any]:
        return {"event_id": f"$from-b-{args['n']}", "args": args}

    async def refuse(args: dict[str, Any]) -> dict[str, Any]:
        if args.get("why") == "limit":
            raise LimitExceeded(2500)
        if args.get("why") == "missing":
            raise NotFound("No such room")
        if args.get("why") == "bug":
            raise RuntimeError("a bug on b")
        raise Forbidden("You are not invited to this room.", reason="not_invited")

    b.register("events.send", send)
    b.register("rooms.refuse", refuse)
    a.register("events.send", send)
    try:
        yield pair
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_a_call_crosses_to_the_other_instance_and_back(instances: Instances) -> None:
    a = instances.rpcs["a"]
    answer = await a.call("b", "events.send", {"n": 1, "body": "héllo", "big": "x" * 200_000})
    assert answer["event_id"] == "$from-b-1" and answer["args"]["body"] == "héllo"
    assert len(answer["args"]["big"]) == 200_000
    # Many at once over the pooled connections, each answered with its own result.
    results = await Deferred.fromCoroutine(_gather(a, 40))
    assert [r["event_id"] for r in results] == [f"$from-b-{n}" for n in range(40)]


@pytest_twisted.ensureDeferred
async def test_values_orjson_cannot_write_cross_intact_both_ways(instances: Instances) -> None:
    """A forwarded write carries the client's JSON as the first process accepted it (a
    to-device message holding 2**70 was a 500 on its way to the writer)."""
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    odd = {"n": 2, "big": 2**70, "low": -(2**70), "deep": deep, "lone": "\ud800", "u64": 2**64 - 1}
    answer = await instances.rpcs["a"].call("b", "events.send", odd)
    # The answer holds them too (orjson would read 2**70 back as a float).
    assert answer == {"event_id": "$from-b-2", "args": odd}


async def _gather(rpc: WorkerRpc, n: int) -> list[dict[str, Any]]:
    from twisted.internet.defer import gatherResults

    calls = [Deferred.fromCoroutine(rpc.call("b", "events.send", {"n": i})) for i in range(n)]
    return list(await gatherResults(calls))


@pytest_twisted.ensureDeferred
async def test_matrix_errors_come_back_as_the_same_error(instances: Instances) -> None:
    a = instances.rpcs["a"]
    with pytest.raises(Forbidden) as forbidden:
        await a.call("b", "rooms.refuse", {})
    assert forbidden.value.to_json() == {
        "errcode": "M_FORBIDDEN",
        "error": "You are not invited to this room.",
        "reason": "not_invited",
    }
    with pytest.raises(LimitExceeded) as limited:
        await a.call("b", "rooms.refuse", {"why": "limit"})
    assert limited.value.retry_after_ms == 2500 and limited.value.status == 429
    with pytest.raises(NotFound):
        await a.call("b", "rooms.refuse", {"why": "missing"})
    # A bug on the other side is its 500 (logged there), not a hang and not a 503.
    with pytest.raises(Exception) as bug:
        await a.call("b", "rooms.refuse", {"why": "bug"})
    assert getattr(bug.value, "status", None) == 500
    with pytest.raises(Exception) as unknown:
        await a.call("b", "no.such", {})
    assert (getattr(unknown.value, "status", None), getattr(unknown.value, "errcode", None)) == (
        404,
        "M_UNRECOGNIZED",
    )


@pytest_twisted.ensureDeferred
async def test_the_shared_secret_is_required(instances: Instances) -> None:
    wrong = WorkerRpc("a", b"not-the-secret", instances.transport(b"not-the-secret"))
    with pytest.raises(Forbidden):
        await wrong.call("b", "events.send", {"n": 1})
    host, port = instances.addresses["b"]
    url = f"http://{host}:{port}/_homeserver/internal/events.send"
    response = await treq.post(url, json={"n": 1})
    assert response.code == 403
    assert (await response.json())["errcode"] == "M_FORBIDDEN"
    response = await treq.post(url, json={"n": 1}, headers={"Authorization": "Bearer " + SECRET.decode()})
    assert response.code == 200 and (await response.json())["event_id"] == "$from-b-1"


@pytest_twisted.ensureDeferred
async def test_an_instance_that_cannot_answer_is_a_503(instances: Instances) -> None:
    a = instances.rpcs["a"]
    with pytest.raises(ServiceUnavailable) as refused:
        await a.call("gone", "events.send", {"n": 1})
    assert refused.value.status == 503
    # One that accepts but never answers: the call gives up after its timeout.
    never: Deferred[dict[str, Any]] = Deferred()
    instances.rpcs["b"].register("slow.never", lambda args: never)
    slow = WorkerRpc("a", SECRET, instances.transport(timeout_s=0.3))
    with pytest.raises(ServiceUnavailable):
        await slow.call("b", "slow.never", {})
    never.callback({})
    # To itself: no HTTP at all.
    assert (await a.call("a", "events.send", {"n": 7}))["event_id"] == "$from-b-7"


class _FrozenTimers:
    """The real reactor's sockets with timers that never fire: what arrives through it came
    from the network, not from a delay running out."""

    def __init__(self, reactor: Any) -> None:
        from twisted.internet.task import Clock as TimerClock

        self._reactor = reactor
        self.timers = TimerClock()

    def callLater(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - twisted's name
        return self.timers.callLater(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_a_dead_instance_is_a_503_as_soon_as_its_port_refuses(instances: Instances) -> None:
    """A dead writer's rooms answer 503 at once, for clients to retry: Twisted's default
    endpoint learnt a refusal only at its 0.3 s attempt timer, so every such request waited
    for it (up to 0.9 s through the balancer)."""
    frozen = _FrozenTimers(_reactor())
    transport = HttpTransport(frozen, instances.addresses.__getitem__, SECRET, 5.0)
    instances.transports.append(transport)
    call = WorkerRpc("a", SECRET, transport).call("gone", "events.send", {"n": 1})
    outcome: Deferred[Any] = Deferred.fromCoroutine(call)
    outcome.addErrback(lambda failure: failure.value)
    # Bounded on the real reactor: with the refusal waiting on a frozen timer it never comes.
    answer = await outcome.addTimeout(10, _reactor())
    assert isinstance(answer, ServiceUnavailable), answer
