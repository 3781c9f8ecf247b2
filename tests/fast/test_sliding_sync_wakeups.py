"""A sliding sync long-poll (MSC4186, with a pos and a timeout) answers as soon as there is
something for the user, for each kind of change its lists and extensions show (a knock too), and with
nothing new exactly at its timeout on the test clock, never before."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server, room_path, until

from homeserver.notifier import TIMEOUT_RESOLUTION_S

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
BODY = {
    "lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 5}},
    "extensions": {
        name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")
    },
}


def poll(client: Client, token: str, pos: str | None, timeout_ms: int = 20_000) -> Any:
    params = {"timeout": str(timeout_ms)}
    if pos is not None:
        params["pos"] = pos
    return client.start("POST", PATH, token, BODY, **params)


async def _message(client: Client, ctx: dict[str, Any]) -> None:
    path = f"{room_path(ctx['room'])}/send/m.room.message/{secrets.token_hex(4)}"
    await client.call("PUT", path, ctx["a"], {"msgtype": "m.text", "body": "news"})


async def _receipt(client: Client, ctx: dict[str, Any]) -> None:
    await client.call("POST", f"{room_path(ctx['room'])}/receipt/m.read/{ctx['last_event']}", ctx["a"], {})


async def _typing(client: Client, ctx: dict[str, Any]) -> None:
    path = f"{room_path(ctx['room'])}/typing/{ctx['a_id']}"
    await client.call("PUT", path, ctx["a"], {"typing": True, "timeout": 30000})


async def _account_data(client: Client, ctx: dict[str, Any]) -> None:
    await client.call("PUT", f"/user/{ctx['b_id']}/account_data/org.example.x", ctx["b"], {"v": 1})


async def _to_device(client: Client, ctx: dict[str, Any]) -> None:
    body = {"messages": {ctx["b_id"]: {"*": {"n": 1}}}}
    await client.call("PUT", f"/sendToDevice/org.example.ping/{secrets.token_hex(4)}", ctx["a"], body)


async def _invite(client: Client, ctx: dict[str, Any]) -> None:
    ctx["room2"] = (await client.call("POST", "/createRoom", ctx["a"], {"invite": [ctx["b_id"]]}))["room_id"]


async def _knock(client: Client, ctx: dict[str, Any]) -> None:
    rules = [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
    room = (await client.call("POST", "/createRoom", ctx["a"], {"initial_state": rules}))["room_id"]
    ctx["knocked"] = room
    await client.call("POST", f"/knock/{room}", ctx["b"], {})


def _knocked(body: dict[str, Any], ctx: dict[str, Any]) -> bool:
    stripped = body["rooms"][ctx["knocked"]]["invite_state"]
    return any(e["state_key"] == ctx["b_id"] and e["content"]["membership"] == "knock" for e in stripped)


Change = Callable[[Client, dict[str, Any]], Any]
CHANGES: dict[str, tuple[Change, Callable[[dict[str, Any], dict[str, Any]], bool]]] = {
    "message": (
        _message,
        lambda body, ctx: [e["content"]["body"] for e in body["rooms"][ctx["room"]]["timeline"]] == ["news"],
    ),
    "receipt": (_receipt, lambda body, ctx: ctx["room"] in body["extensions"]["receipts"]["rooms"]),
    "typing": (
        _typing,
        lambda body, ctx: (
            body["extensions"]["typing"]["rooms"][ctx["room"]]["content"]["user_ids"] == [ctx["a_id"]]
        ),
    ),
    "account data": (
        _account_data,
        lambda body, ctx: any(
            e["type"] == "org.example.x" for e in body["extensions"]["account_data"]["global"]
        ),
    ),
    "to-device": (_to_device, lambda body, ctx: body["extensions"]["to_device"]["events"] != []),
    "invite": (_invite, lambda body, ctx: "invite_state" in body["rooms"][ctx["room2"]]),
    "knock": (_knock, _knocked),
}


async def joined_pair(client: Client, hs: Any) -> dict[str, Any]:
    a = await client.register(hs, "sa")
    b = await client.register(hs, "sb")
    ctx: dict[str, Any] = {
        "a": a["access_token"],
        "b": b["access_token"],
        "a_id": a["user_id"],
        "b_id": b["user_id"],
    }
    ctx["room"] = (await client.call("POST", "/createRoom", ctx["a"], {"preset": "public_chat"}))["room_id"]
    await client.call("POST", f"/join/{ctx['room']}", ctx["b"], {})
    path = f"{room_path(ctx['room'])}/send/m.room.message/warm"
    ctx["last_event"] = (await client.call("PUT", path, ctx["a"], {"msgtype": "m.text", "body": "warm"}))[
        "event_id"
    ]
    return ctx


@pytest.mark.parametrize("kind", list(CHANGES))
@pytest_twisted.ensureDeferred
async def test_sliding_sync_long_poll_answers_at_once_for(tmp_path: Path, kind: str) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await joined_pair(client, hs)
        status, first = await poll(client, ctx["b"], None)
        assert status == 200
        # Catch up: the first response's to-device messages and receipts are acknowledged.
        status, caught_up = await poll(client, ctx["b"], first["pos"], 0)
        assert status == 200
        started = clock.seconds()
        waiting = poll(client, ctx["b"], caught_up["pos"])
        await until(lambda: hs.notifier.waiting_users() == 1, "the long-poll waits")
        assert not waiting.called
        make, seen = CHANGES[kind]
        await make(client, ctx)
        await until(lambda: waiting.called, f"{kind}: the long-poll answered without the clock moving")
        status, body = await waiting
        assert status == 200
        assert clock.seconds() == started
        assert seen(body, ctx), body
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_sliding_sync_with_nothing_new_answers_at_its_timeout_never_before(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await joined_pair(client, hs)
        _, first = await poll(client, ctx["b"], None)
        _, body = await poll(client, ctx["b"], first["pos"], 0)
        waiting = poll(client, ctx["b"], body["pos"], 1000)
        await until(lambda: hs.notifier.waiting_users() == 1, "the long-poll waits")
        clock.advance(0.99)
        assert not waiting.called, "answered before its timeout"
        clock.advance(0.01 + TIMEOUT_RESOLUTION_S)
        await until(lambda: waiting.called, "answered at its timeout")
        status, body = await waiting
        assert status == 200
        assert body["rooms"] == {} and body["lists"]["all"]["count"] == 1
        # The pos it hands out works for the next request.
        status, _ = await poll(client, ctx["b"], body["pos"], 0)
        assert status == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_sliding_sync_long_poll_counts_as_an_open_sync_and_its_pos_as_proof_of_receipt(
    tmp_path: Path,
) -> None:
    """Push suppression and message status read these: a device on sliding sync (Element X)
    must not be pushed for what its sync brings, and asking with a pos proves receipt."""
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await joined_pair(client, hs)
        device = (await client.call("GET", "/account/whoami", ctx["b"]))["device_id"]
        connections = hs.delivery.connections
        status, first = await poll(client, ctx["b"], None)
        assert status == 200
        assert not connections.connected(ctx["b_id"], device, 0)
        waiting = poll(client, ctx["b"], first["pos"])
        await until(lambda: hs.notifier.waiting_users() == 1, "the long-poll waits")
        assert connections.connected(ctx["b_id"], device, 0)
        assert connections.received(ctx["b_id"], device) >= hs.sync.current_token().events
        await _message(client, ctx)
        await until(lambda: waiting.called, "the long-poll answered")
        assert not connections.connected(ctx["b_id"], device, 0)
    finally:
        await hs.stop(None)
