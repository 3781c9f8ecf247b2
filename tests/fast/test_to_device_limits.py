"""sendToDevice from one ordinary account: `*` (every device of a user) must not multiply a
bounded body into an unbounded write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import CS, Client, TestClock, make_server

from homeserver.core.e2ee import MAX_TO_DEVICE_QUEUED_BYTES


async def _to_device(client: Client, token: str, since: str | None = None) -> tuple[list[Any], str]:
    status, body = await client.sync(token, since)
    assert status == 200
    return body.get("to_device", {}).get("events", []), body["next_batch"]


@pytest_twisted.ensureDeferred
async def test_a_star_send_is_bounded_after_expansion(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        mallory = await client.register(hs, "mallory")
        bob = await client.register(hs, "bob")
        carol = await client.register(hs, "carol")
        # Bob has many devices (a bot that logs in at every start, say).
        for _ in range(69):
            await hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        _, since = await _to_device(client, bob["access_token"])
        _, carol_since = await _to_device(client, carol["access_token"])

        async def send(txn: str, messages: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            path = f"{CS}/sendToDevice/m.test/{txn}"
            return await client.start("PUT", path, mallory["access_token"], {"messages": messages})

        # 60 KB to every one of 70 devices: a 60 KB request that would queue 4 MB.
        big = {"blob": "x" * 60_000}
        assert 70 * 60_000 > MAX_TO_DEVICE_QUEUED_BYTES
        status, body = await send("t1", {bob["user_id"]: {"*": big}})
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        # Nothing of it was queued, not even for the users named before.
        status, body = await send("t2", {carol["user_id"]: {"*": {"n": 1}}, bob["user_id"]: {"*": big}})
        assert status == 413
        events, _ = await _to_device(client, bob["access_token"], since)
        assert events == []
        events, _ = await _to_device(client, carol["access_token"], carol_since)
        assert events == []

        # What clients send with `*`: a small message, to each device of a few users.
        assert (await send("t3", {bob["user_id"]: {"*": {"n": 2}}, carol["user_id"]: {"*": {"n": 3}}}))[
            0
        ] == 200
        events, _ = await _to_device(client, bob["access_token"], since)
        assert [e["content"] for e in events] == [{"n": 2}]
        events, _ = await _to_device(client, carol["access_token"], carol_since)
        assert [e["content"] for e in events] == [{"n": 3}]
        queued = await hs.storage.db.query(
            "count", "SELECT COUNT(*) FROM to_device_messages WHERE user_id = ?", bob["user_id"]
        )
        assert queued[0][0] == 70  # one for each of his devices
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_device_that_never_syncs_is_queued_at_most_its_share(tmp_path: Path) -> None:
    """Anyone may message any device; one that never syncs again (a lost phone never logged
    out) kept all of it, so one account could fill the disk. Past its share a device gets
    nothing more until it syncs; the request's other recipients still get theirs."""
    hs = await make_server(tmp_path, TestClock(), limits={"max_to_device_queued_per_device": "100K"})
    client = Client(hs)
    try:
        mallory = await client.register(hs, "mallory")
        bob = await client.register(hs, "bob")
        carol = await client.register(hs, "carol")
        _, bob_since = await _to_device(client, bob["access_token"])
        _, carol_since = await _to_device(client, carol["access_token"])
        big = {"blob": "x" * 40_000}

        async def send(txn: str, messages: dict[str, Any]) -> int:
            path = f"{CS}/sendToDevice/m.test/{txn}"
            return (await client.start("PUT", path, mallory["access_token"], {"messages": messages}))[0]

        for n in range(4):
            assert await send(f"t{n}", {bob["user_id"]: {bob["device_id"]: {**big, "n": n}}}) == 200
        both = {
            bob["user_id"]: {bob["device_id"]: {"n": 4}},
            carol["user_id"]: {carol["device_id"]: {"n": 5}},
        }
        assert await send("t4", both) == 200
        # Bob's device holds two of the 40 KB messages (its 100 K share) and the small one.
        events, bob_since = await _to_device(client, bob["access_token"], bob_since)
        assert [e["content"]["n"] for e in events] == [0, 1, 4]
        events, _ = await _to_device(client, carol["access_token"], carol_since)
        assert [e["content"]["n"] for e in events] == [5]
        # His next sync proves he has them: the queue empties and takes new messages.
        events, bob_since = await _to_device(client, bob["access_token"], bob_since)
        assert events == []
        assert await send("t5", {bob["user_id"]: {bob["device_id"]: {**big, "n": 6}}}) == 200
        events, _ = await _to_device(client, bob["access_token"], bob_since)
        assert [e["content"]["n"] for e in events] == [6]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_to_device_messages_are_rate_limited_by_the_devices_messaged(tmp_path: Path) -> None:
    clock = TestClock()
    limits = {"enabled": True, "to_device_per_user": {"per_second": 1, "burst": 3}}
    hs = await make_server(tmp_path, clock, rate_limits=limits)
    client = Client(hs)
    try:
        mallory = await client.register(hs, "mallory")
        bob = await client.register(hs, "bob")
        for _ in range(4):
            await hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)

        async def send(txn: str, device: str) -> tuple[int, dict[str, Any]]:
            path = f"{CS}/sendToDevice/m.test/{txn}"
            body = {"messages": {bob["user_id"]: {device: {"n": txn}}}}
            return await client.start("PUT", path, mallory["access_token"], body)

        assert [(await send(f"a{n}", bob["device_id"]))[0] for n in range(3)] == [200, 200, 200]
        status, body = await send("a3", bob["device_id"])
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED") and body["retry_after_ms"] > 0
        # A second on, one token: `*` to Bob's 5 devices costs 5 and goes through once...
        clock.advance(1.0)
        assert (await send("b0", "*"))[0] == 200
        # ...and then waits for the bucket to refill past what it overdrew.
        clock.advance(3.0)
        assert (await send("b1", bob["device_id"]))[0] == 429
        clock.advance(2.0)
        assert (await send("b2", bob["device_id"]))[0] == 200
    finally:
        await hs.stop(None)
