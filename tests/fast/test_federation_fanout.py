"""A client's /keys/query and /keys/claim ask at most MAX_SERVERS_PER_REQUEST servers at
once: a request naming thousands of servers is not thousands of outbound connections, and
the servers not asked are named in `failures` so the client asks again. A server that
does not answer is named there at the request's `timeout`, and holds nothing up past it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, until
from remote_server import settle
from twisted.internet.defer import Deferred

from homeserver.core.federation.remote_keys import MAX_SERVERS_PER_REQUEST

# Loopback addresses, which outbound federation refuses at once: each asked server fails
# with the refusal, each server not asked with 429.
SERVERS = [f"127.0.0.1:{port}" for port in range(1, MAX_SERVERS_PER_REQUEST + 31)]


@pytest_twisted.ensureDeferred
async def test_keys_query_and_claim_ask_a_bounded_number_of_servers(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice = await client.register(hs, "alice")
    token = alice["access_token"]
    # The last server has two users wanted: the servers with most users are asked first.
    wanted = {f"@u:{s}": [] for s in SERVERS} | {f"@v:{SERVERS[-1]}": []}
    answer = await client.call("POST", "/keys/query", token, {"device_keys": wanted})
    failures = answer["failures"]
    assert set(failures) == set(SERVERS)
    not_asked = {s for s, f in failures.items() if f["status"] == 429}
    assert len(not_asked) == len(SERVERS) - MAX_SERVERS_PER_REQUEST
    assert SERVERS[-1] not in not_asked
    assert all("Too many servers" in failures[s]["message"] for s in not_asked)
    assert all("Too many servers" not in f["message"] for s, f in failures.items() if s not in not_asked)

    claim = {f"@u:{s}": {"DEV": "signed_curve25519"} for s in SERVERS}
    answer = await client.call("POST", "/keys/claim", token, {"one_time_keys": claim})
    assert set(answer["failures"]) == set(SERVERS)
    assert sum(f["status"] == 429 for f in answer["failures"].values()) == 30
    await hs.stop(None)


class Network:
    """Other servers as the federation client would reach them: SILENT takes the request
    and never answers (the time its request is given up is kept); ANSWERS answers."""

    SILENT, ANSWERS = "silent.test", "answers.test"

    def __init__(self, clock: TestClock) -> None:
        self.clock = clock
        self.asked: list[str] = []
        self.given_up_at: list[float] = []

    async def post_json(self, destination: str, path: str, body: Any) -> Any:
        self.asked.append(destination)
        if destination == self.SILENT:
            await Deferred(lambda _: self.given_up_at.append(self.clock.seconds()))
        if path.endswith("/claim"):
            return {"one_time_keys": {}}
        user_id = f"@bob:{self.ANSWERS}"
        keys = {"user_id": user_id, "device_id": "BOBDEV", "algorithms": [], "keys": {"ed25519:BOBDEV": "k"}}
        return {"device_keys": {user_id: {"BOBDEV": keys}}}


@pytest_twisted.ensureDeferred
async def test_a_silent_server_is_given_up_at_the_timeout_and_named_in_failures(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    network = hs.remote_keys.client = Network(clock)  # type: ignore[assignment]
    try:
        client = Client(hs)
        token = (await client.register(hs, "alice"))["access_token"]

        async def ask(path: str, body: dict[str, Any]) -> dict[str, Any]:
            """The answer to a request with a 1.5 s timeout, checking when SILENT is given up."""
            network.asked.clear()
            network.given_up_at.clear()
            asked_at = clock.seconds()
            answer = client.start("POST", f"/_matrix/client/v3{path}", token, {**body, "timeout": 1500})
            # The request reads the database (on the real reactor) before it asks: no time passes.
            await until(lambda: Network.SILENT in network.asked, "the silent server asked")
            clock.advance(1.5 - 1 / 1024)  # binary fractions of a second: exact sums on the clock
            assert network.given_up_at == [] and not answer.called
            clock.advance(1 / 1024)
            assert network.given_up_at == [asked_at + 1.5]
            await until(lambda: answer.called, "the answer")
            status, result = await answer
            assert status == 200, result
            assert result["failures"] == {Network.SILENT: {"status": 503, "message": "timed out"}}
            return result

        bob = f"@bob:{Network.ANSWERS}"
        found = await ask("/keys/query", {"device_keys": {f"@x:{Network.SILENT}": [], bob: []}})
        assert list(found["device_keys"][bob]) == ["BOBDEV"]  # the other server's answer is kept
        await ask("/keys/claim", {"one_time_keys": {f"@x:{Network.SILENT}": {"D": "signed_curve25519"}}})
    finally:
        # On the clock: a request a failed check left waiting holds the stop for its grace.
        await settle(clock, Deferred.fromCoroutine(hs.stop(None)))
