"""What waits for one device is capped (`limits.max_to_device_queued_per_device`), on both
engines, through a real server process: past a device's share a message is not queued for
it, the request's other recipients still get theirs, and once the device has synced its
queue takes messages again. (The rate and more cases: tests/fast/test_to_device_limits.py.)"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import ServerProcess, server_on_engine

V3 = "/_matrix/client/v3"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    overrides = {"limits": {"max_to_device_queued_per_device": "100K"}}
    with server_on_engine(request, tmp_path_factory, request.param, overrides, "to_device_cap") as s:
        yield s


def _user(server: ServerProcess, name: str) -> dict[str, Any]:
    return server.register(f"{name}{secrets.token_hex(4)}")


def _to_device(server: ServerProcess, user: dict[str, Any], since: str | None) -> tuple[list[Any], str]:
    params = {"timeout": "0", **({"since": since} if since else {})}
    r = requests.get(
        server.url(f"{V3}/sync"), params=params, timeout=30,
        headers={"Authorization": f"Bearer {user['access_token']}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return [e["content"]["n"] for e in r.json().get("to_device", {}).get("events", [])], r.json()[
        "next_batch"
    ]


def test_a_device_that_does_not_sync_is_queued_at_most_its_share(server: ServerProcess) -> None:
    mallory, bob, carol = _user(server, "mallory"), _user(server, "bob"), _user(server, "carol")
    _, bob_since = _to_device(server, bob, None)
    _, carol_since = _to_device(server, carol, None)
    big = {"blob": "x" * 40_000}

    def send(messages: dict[str, Any]) -> None:
        r = requests.put(
            server.url(f"{V3}/sendToDevice/m.test/{secrets.token_hex(4)}"), json={"messages": messages},
            headers={"Authorization": f"Bearer {mallory['access_token']}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text

    for n in range(4):
        send({bob["user_id"]: {bob["device_id"]: {**big, "n": n}}})
    send({bob["user_id"]: {bob["device_id"]: {"n": 4}}, carol["user_id"]: {carol["device_id"]: {"n": 5}}})
    # Two of the 40 KB messages fit Bob's 100 K, then the small one; Carol's is not held back.
    events, bob_since = _to_device(server, bob, bob_since)
    assert events == [0, 1, 4]
    assert _to_device(server, carol, carol_since)[0] == [5]
    # His next sync proves he has them: the queue empties and takes new messages.
    events, bob_since = _to_device(server, bob, bob_since)
    assert events == []
    send({bob["user_id"]: {bob["device_id"]: {**big, "n": 6}}})
    assert _to_device(server, bob, bob_since)[0] == [6]
