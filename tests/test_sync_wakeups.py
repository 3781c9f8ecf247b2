"""A long-poll /sync answers as soon as there is something for the user, for every kind of
change a sync shows, also when the user was woken before (the server then skips computing
an empty response first: core/sync.py `_nothing_new`). Each change must come back well
before the poll's timeout, and in the response."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from conftest import ServerProcess
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

CS = "/_matrix/client/v3"
POLL_MS = 20_000


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(server: ServerProcess, token: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    r = requests.request(method, server.url(CS + path), json=body, headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def sync(server: ServerProcess, token: str, since: str | None, timeout_ms: int) -> dict[str, Any]:
    params = {"timeout": str(timeout_ms), **({"since": since} if since else {})}
    r = requests.get(server.url(CS + "/sync"), params=params, headers=auth(token), timeout=60)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def has_message(body: dict[str, Any], room_id: str, text: str) -> bool:
    room = body["rooms"]["join"].get(room_id, {})
    return any(ev["content"].get("body") == text for ev in room.get("timeline", {}).get("events", []))


def ephemeral_types(body: dict[str, Any], room_id: str) -> set[str]:
    room = body["rooms"]["join"].get(room_id, {})
    return {ev["type"] for ev in room.get("ephemeral", {}).get("events", [])}


CHANGES: dict[str, tuple[Callable[..., Any], Callable[..., bool]]] = {}


def change(name: str, seen: Callable[..., bool]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        CHANGES[name] = (fn, seen)
        return fn

    return register


@change("message", lambda body, ctx: has_message(body, ctx["room"], ctx["text"]))
def _message(server: ServerProcess, ctx: dict[str, Any]) -> None:
    ctx["text"] = "hello " + secrets.token_hex(3)
    call(
        server,
        ctx["a"],
        "PUT",
        f"/rooms/{ctx['room']}/send/m.room.message/{secrets.token_hex(4)}",
        {"msgtype": "m.text", "body": ctx["text"]},
    )


@change("receipt", lambda body, ctx: "m.receipt" in ephemeral_types(body, ctx["room"]))
def _receipt(server: ServerProcess, ctx: dict[str, Any]) -> None:
    call(server, ctx["a"], "POST", f"/rooms/{ctx['room']}/receipt/m.read/{ctx['last_event']}", {})


@change("typing", lambda body, ctx: "m.typing" in ephemeral_types(body, ctx["room"]))
def _typing(server: ServerProcess, ctx: dict[str, Any]) -> None:
    call(
        server,
        ctx["a"],
        "PUT",
        f"/rooms/{ctx['room']}/typing/{ctx['a_id']}",
        {"typing": True, "timeout": 30000},
    )


@change(
    "account data",
    lambda body, ctx: any(ev["type"] == "org.example.x" for ev in body["account_data"]["events"]),
)
def _account_data(server: ServerProcess, ctx: dict[str, Any]) -> None:
    call(server, ctx["b"], "PUT", f"/user/{ctx['b_id']}/account_data/org.example.x", {"v": 1})


@change(
    "to-device", lambda body, ctx: any(ev["type"] == "org.example.ping" for ev in body["to_device"]["events"])
)
def _to_device(server: ServerProcess, ctx: dict[str, Any]) -> None:
    call(
        server,
        ctx["a"],
        "PUT",
        f"/sendToDevice/org.example.ping/{secrets.token_hex(4)}",
        {"messages": {ctx["b_id"]: {"*": {"n": 1}}}},
    )


@change("presence", lambda body, ctx: any(ev["sender"] == ctx["a_id"] for ev in body["presence"]["events"]))
def _presence(server: ServerProcess, ctx: dict[str, Any]) -> None:
    call(
        server,
        ctx["a"],
        "PUT",
        f"/presence/{ctx['a_id']}/status",
        {"presence": "online", "status_msg": "here"},
    )


@change("device list", lambda body, ctx: ctx["a_id"] in body["device_lists"]["changed"])
def _device_list(server: ServerProcess, ctx: dict[str, Any]) -> None:
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
    call(server, ctx["a"], "POST", "/keys/upload", {"device_keys": sign_json(keys, ctx["a_id"], key)})


@change("invite", lambda body, ctx: ctx["room2"] in body["rooms"]["invite"])
def _invite(server: ServerProcess, ctx: dict[str, Any]) -> None:
    ctx["room2"] = call(server, ctx["a"], "POST", "/createRoom", {"invite": [ctx["b_id"]]})["room_id"]


@pytest.mark.parametrize("kind", list(CHANGES))
def test_long_poll_answers_at_once_for(server: ServerProcess, kind: str) -> None:
    a_user = server.register("wa_" + secrets.token_hex(4))
    b_user = server.register("wb_" + secrets.token_hex(4))
    ctx: dict[str, Any] = {
        "a": a_user["access_token"],
        "b": b_user["access_token"],
        "a_id": a_user["user_id"],
        "b_id": b_user["user_id"],
        "a_device": a_user["device_id"],
    }
    ctx["room"] = call(server, ctx["a"], "POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    call(server, ctx["b"], "POST", f"/join/{ctx['room']}", {})
    ctx["last_event"] = call(
        server,
        ctx["a"],
        "PUT",
        f"/rooms/{ctx['room']}/send/m.room.message/warm",
        {"msgtype": "m.text", "body": "warm"},
    )["event_id"]
    # B is now woken at least once; catch up to a token past that wake.
    token = sync(server, ctx["b"], None, 0)["next_batch"]
    token = sync(server, ctx["b"], token, 0)["next_batch"]

    make, seen = CHANGES[kind]
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        result["body"] = sync(server, ctx["b"], token, POLL_MS)
        result["elapsed"] = time.monotonic() - started

    # Both orders: the change lands while B is waiting, and before B asks.
    if kind in ("message", "typing", "receipt"):
        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.3)
        make(server, ctx)
        poller.join(timeout=60)
    else:
        make(server, ctx)
        poll()
    assert result["elapsed"] < POLL_MS / 2000, f"{kind}: answered only after {result['elapsed']:.1f}s"
    assert seen(result["body"], ctx), result["body"]
