"""A client's /keys/query and /keys/claim ask at most MAX_SERVERS_PER_REQUEST servers at
once: a request naming thousands of servers is not thousands of outbound connections, and
the servers not asked are named in `failures` so the client asks again."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from harness import Client, TestClock, make_server

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
