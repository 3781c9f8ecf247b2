"""A long-poll /sync answers as soon as there is something for the user, for every kind of
change a sync shows, also when the user was woken before (the server then skips computing
an empty response first: core/sync.py `_nothing_new`). In-process on a clock the test
moves: "at once" means without the clock moving at all, and a poll with nothing new
answers exactly at its timeout on that clock, never before."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server, room_path, until
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.notifier import TIMEOUT_RESOLUTION_S
from homeserver.server import HomeServer

POLL_MS = 20_000
EMPTY_FILTER = '{"room": {"rooms": [], "timeline": {"limit": 0}}, "presence": {"not_types": ["*"]}}'


def has_message(body: dict[str, Any], room_id: str, text: str) -> bool:
    room = body["rooms"]["join"].get(room_id, {})
    return any(ev["content"].get("body") == text for ev in room.get("timeline", {}).get("events", []))


def ephemeral_types(body: dict[str, Any], room_id: str) -> set[str]:
    room = body["rooms"]["join"].get(room_id, {})
    return {ev["type"] for ev in room.get("ephemeral", {}).get("events", [])}


Change = Callable[[Client, dict[str, Any]], Any]
CHANGES: dict[str, tuple[Change, Callable[..., bool]]] = {}


def change(name: str, seen: Callable[..., bool]) -> Callable[[Change], Change]:
    def register(fn: Change) -> Change:
        CHANGES[name] = (fn, seen)
        return fn

    return register


@change("message", lambda body, ctx: has_message(body, ctx["room"], ctx["text"]))
async def _message(client: Client, ctx: dict[str, Any]) -> None:
    ctx["text"] = "hello " + secrets.token_hex(3)
    path = f"{room_path(ctx['room'])}/send/m.room.message/{secrets.token_hex(4)}"
    await client.call("PUT", path, ctx["a"], {"msgtype": "m.text", "body": ctx["text"]})


@change("receipt", lambda body, ctx: "m.receipt" in ephemeral_types(body, ctx["room"]))
async def _receipt(client: Client, ctx: dict[str, Any]) -> None:
    await client.call("POST", f"{room_path(ctx['room'])}/receipt/m.read/{ctx['last_event']}", ctx["a"], {})


@change("typing", lambda body, ctx: "m.typing" in ephemeral_types(body, ctx["room"]))
async def _typing(client: Client, ctx: dict[str, Any]) -> None:
    path = f"{room_path(ctx['room'])}/typing/{ctx['a_id']}"
    await client.call("PUT", path, ctx["a"], {"typing": True, "timeout": 30000})


@change(
    "account data",
    lambda body, ctx: any(ev["type"] == "org.example.x" for ev in body["account_data"]["events"]),
)
async def _account_data(client: Client, ctx: dict[str, Any]) -> None:
    await client.call("PUT", f"/user/{ctx['b_id']}/account_data/org.example.x", ctx["b"], {"v": 1})


@change(
    "to-device", lambda body, ctx: any(ev["type"] == "org.example.ping" for ev in body["to_device"]["events"])
)
async def _to_device(client: Client, ctx: dict[str, Any]) -> None:
    body = {"messages": {ctx["b_id"]: {"*": {"n": 1}}}}
    await client.call("PUT", f"/sendToDevice/org.example.ping/{secrets.token_hex(4)}", ctx["a"], body)


@change("presence", lambda body, ctx: any(ev["sender"] == ctx["a_id"] for ev in body["presence"]["events"]))
async def _presence(client: Client, ctx: dict[str, Any]) -> None:
    body = {"presence": "online", "status_msg": "here"}
    await client.call("PUT", f"/presence/{ctx['a_id']}/status", ctx["a"], body)


@change("device list", lambda body, ctx: ctx["a_id"] in body["device_lists"]["changed"])
async def _device_list(client: Client, ctx: dict[str, Any]) -> None:
    # A's device publishes its keys, as a client does right after logging in.
    device_id = ctx["a_device"]
    key = generate_signing_key(device_id)
    keys = {
        "user_id": ctx["a_id"],
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"ed25519:{device_id}": encode_verify_key_base64(get_verify_key(key)),
            f"curve25519:{device_id}": "A" * 43,
        },
    }
    await client.call("POST", "/keys/upload", ctx["a"], {"device_keys": sign_json(keys, ctx["a_id"], key)})


@change("invite", lambda body, ctx: ctx["room2"] in body["rooms"]["invite"])
async def _invite(client: Client, ctx: dict[str, Any]) -> None:
    ctx["room2"] = (await client.call("POST", "/createRoom", ctx["a"], {"invite": [ctx["b_id"]]}))["room_id"]


async def joined_pair(hs: HomeServer, client: Client) -> dict[str, Any]:
    a = await client.register(hs, "wa")
    b = await client.register(hs, "wb")
    ctx: dict[str, Any] = {
        "a": a["access_token"],
        "b": b["access_token"],
        "a_id": a["user_id"],
        "b_id": b["user_id"],
        "a_device": a["device_id"],
    }
    ctx["room"] = (await client.call("POST", "/createRoom", ctx["a"], {"preset": "public_chat"}))["room_id"]
    await client.call("POST", f"/join/{ctx['room']}", ctx["b"], {})
    ctx["last_event"] = (
        await client.call(
            "PUT",
            f"{room_path(ctx['room'])}/send/m.room.message/warm",
            ctx["a"],
            {"msgtype": "m.text", "body": "warm"},
        )
    )["event_id"]
    return ctx


@pytest.mark.parametrize("kind", list(CHANGES))
@pytest.mark.parametrize("order", ["while waiting", "before asking"])
@pytest_twisted.ensureDeferred
async def test_long_poll_answers_at_once_for(tmp_path: Path, kind: str, order: str) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await joined_pair(hs, client)
        # B is now woken at least once; catch up to a token past that wake.
        _, body = await client.sync(ctx["b"])
        _, body = await client.sync(ctx["b"], body["next_batch"])
        token = body["next_batch"]
        make, seen = CHANGES[kind]
        started = clock.seconds()
        if order == "while waiting":
            poll = client.sync(ctx["b"], token, POLL_MS)
            await until(lambda: hs.notifier.waiting_users() == 1, "the long-poll waits")
            assert not poll.called
            await make(client, ctx)
        else:
            await make(client, ctx)
            poll = client.sync(ctx["b"], token, POLL_MS)
        await until(lambda: poll.called, f"{kind}: the long-poll answered without the clock moving")
        status, body = await poll
        assert status == 200
        assert clock.seconds() == started
        assert seen(body, ctx), body
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_long_poll_with_nothing_new_answers_at_its_timeout_never_before(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        user = await client.register(hs, "quiet")
        _, first = await client.start(
            "GET", "/_matrix/client/v3/sync", user["access_token"], filter=EMPTY_FILTER, timeout="0"
        )
        for timeout_s in (1.0, 0.5):
            poll = client.start(
                "GET",
                "/_matrix/client/v3/sync",
                user["access_token"],
                filter=EMPTY_FILTER,
                timeout=str(int(timeout_s * 1000)),
                since=first["next_batch"],
            )
            await until(lambda: hs.notifier.waiting_users() == 1, "the long-poll waits")
            clock.advance(timeout_s - 0.01)
            assert not poll.called, "answered before its timeout"
            clock.advance(0.01 + TIMEOUT_RESOLUTION_S)
            await until(lambda: poll.called, "answered at its timeout")  # noqa: B023 - awaited here
            status, body = await poll
            assert status == 200
            assert body["rooms"] == {"join": {}, "invite": {}, "leave": {}, "knock": {}}
            first = body
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_long_polls_of_two_devices_both_wake_on_one_message(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await joined_pair(hs, client)
        second = await hs.accounts.create_session(ctx["b_id"], None, None, refreshable=False, ip=None)
        tokens = [ctx["b"], second.tokens.access_token]
        sinces = [(await client.sync(t))[1]["next_batch"] for t in tokens]
        polls = [client.sync(t, s, POLL_MS) for t, s in zip(tokens, sinces, strict=True)]
        await until(lambda: len(hs.notifier._waiters.get(ctx["b_id"], [])) == 2, "both polls wait")
        await _message(client, ctx)
        await until(lambda: all(p.called for p in polls), "both polls answered at once")
        for poll in polls:
            _, body = await poll
            assert has_message(body, ctx["room"], ctx["text"])
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_typing_stops_at_its_timeout_on_the_clock(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        ctx = await joined_pair(hs, client)
        path = f"{room_path(ctx['room'])}/typing/{ctx['a_id']}"
        await client.call("PUT", path, ctx["a"], {"typing": True, "timeout": 10_000})
        _, body = await client.sync(ctx["b"])
        assert hs.typing.typing_users(ctx["room"]) == [ctx["a_id"]]
        poll = client.sync(ctx["b"], body["next_batch"], POLL_MS)
        await until(lambda: hs.notifier.waiting_users() == 1, "the long-poll waits")
        clock.advance(9.9)
        assert not poll.called
        clock.advance(0.2)
        await until(lambda: poll.called, "woken when typing stopped")
        _, body = await poll
        typing = [
            ev for ev in body["rooms"]["join"][ctx["room"]]["ephemeral"]["events"] if ev["type"] == "m.typing"
        ]
        assert typing and typing[0]["content"]["user_ids"] == []
    finally:
        await hs.stop(None)
