"""What one ordinary account may store of its own data (account data, room tags), and that
it is its own: another user's is neither readable nor writable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, make_server


@pytest_twisted.ensureDeferred
async def test_account_data_is_bounded_per_user(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock(), limits={"max_account_data_per_user": "64K"})
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        a, b = alice["access_token"], bob["access_token"]
        me = f"/user/{quote(alice['user_id'])}"

        async def put(path: str, body: Any, token: str = a) -> tuple[int, dict[str, Any]]:
            return await client.start("PUT", CS + path, token, body)

        # Fresh types, 20 K each: the fourth would pass 64 K.
        blob = {"x": "y" * 20_000}
        for i in range(3):
            assert (await put(f"{me}/account_data/org.example.t{i}", blob))[0] == 200
        status, body = await put(f"{me}/account_data/org.example.t3", blob)
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        status, body = await put(f"{me}/rooms/{quote(room)}/account_data/org.example.t3", blob)
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        status, body = await put(f"{me}/rooms/{quote(room)}/tags/big", {"order": 0.5, **blob})
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        # Nothing of it was stored.
        status, _ = await client.start("GET", f"{CS}{me}/account_data/org.example.t3", a)
        assert status == 404
        # Replacing an entry counts what it replaces; shrinking one makes room again.
        assert (await put(f"{me}/account_data/org.example.t0", {"x": "z" * 20_000}))[0] == 200
        assert (await put(f"{me}/account_data/org.example.t0", {}))[0] == 200
        assert (await put(f"{me}/account_data/org.example.t3", blob))[0] == 200
        # Small things still fit, and every other user has their own allowance.
        assert (await put(f"{me}/rooms/{quote(room)}/tags/u.work", {"order": 0.5}))[0] == 200
        bob_me = f"/user/{quote(bob['user_id'])}"
        for i in range(3):
            assert (await put(f"{bob_me}/account_data/org.example.t{i}", blob, b))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_another_users_account_data_and_tags_are_out_of_reach(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        a, b = alice["access_token"], bob["access_token"]
        alices = f"/user/{quote(alice['user_id'])}"
        await client.call("PUT", f"{alices}/account_data/org.example.secret", a, {"k": 1})
        await client.call("PUT", f"{alices}/rooms/{quote(room)}/tags/u.secret", a, {})
        for method, path, body in [
            ("GET", f"{alices}/account_data/org.example.secret", None),
            ("PUT", f"{alices}/account_data/org.example.secret", {"k": 2}),
            ("GET", f"{alices}/rooms/{quote(room)}/account_data/org.example.x", None),
            ("PUT", f"{alices}/rooms/{quote(room)}/account_data/org.example.x", {}),
            ("GET", f"{alices}/rooms/{quote(room)}/tags", None),
            ("PUT", f"{alices}/rooms/{quote(room)}/tags/u.x", {}),
            ("DELETE", f"{alices}/rooms/{quote(room)}/tags/u.secret", None),
        ]:
            status, answer = await client.start(method, CS + path, b, body)
            assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), (method, path)
        assert await client.call("GET", f"{alices}/account_data/org.example.secret", a) == {"k": 1}
        tags = await client.call("GET", f"{alices}/rooms/{quote(room)}/tags", a)
        assert tags == {"tags": {"u.secret": {}}}
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_filters_are_stored_once_and_bounded_per_user(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        a, path = alice["access_token"], f"/user/{quote(alice['user_id'])}/filter"
        # What a client sends at every start, keys in any order: one filter, one id.
        lazy = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 20}}}
        first = (await client.call("POST", path, a, lazy))["filter_id"]
        reordered = {"room": {"timeline": {"limit": 20}, "state": {"lazy_load_members": True}}}
        assert (await client.call("POST", path, a, reordered))["filter_id"] == first
        assert await client.call("GET", f"{path}/{first}", a) == lazy
        other = (await client.call("POST", path, a, {"room": {"timeline": {"limit": 5}}}))["filter_id"]
        assert other != first

        # Fresh filters of about 180 K: the sixth would pass 1 MiB in all.
        stored = 0
        status = 200
        while status == 200:
            big = {"room": {"rooms": [f"!{stored}-{i}:fast.test" for i in range(10_000)]}}
            status, body = await client.start("POST", CS + path, a, big)
            stored += status == 200
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        assert stored == 5
        # The filters stored still work, and so do ones already stored.
        assert (await client.call("POST", path, a, lazy))["filter_id"] == first
        status, _ = await client.start("GET", f"{CS}/sync", a, filter=first, timeout="0")
        assert status == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_status_messages_are_bounded(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        a, path = alice["access_token"], f"/presence/{quote(alice['user_id'])}/status"
        await client.call("PUT", path, a, {"presence": "online", "status_msg": "x" * 1024})
        status, body = await client.start(
            "PUT", CS + path, a, {"presence": "online", "status_msg": "x" * 1025}
        )
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        assert (await client.call("GET", path, a))["status_msg"] == "x" * 1024
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_presence_is_seen_by_room_mates_only(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        carol = await client.register(hs, "carol")
        a, b, c = alice["access_token"], bob["access_token"], carol["access_token"]
        path = f"/presence/{quote(alice['user_id'])}/status"
        await client.call("PUT", path, a, {"presence": "online", "status_msg": "here"})

        # Alice and Bob share a room; Carol shares none with Alice.
        assert (await client.call("GET", path, a))["status_msg"] == "here"
        assert (await client.call("GET", path, b))["presence"] == "online"
        status, body = await client.start("GET", CS + path, c)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await client.start("GET", f"{CS}/presence/{quote('@nobody:fast.test')}/status", c)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        # Once she joins a room with Alice, she sees it; once Bob leaves, he no longer does.
        await client.call("POST", f"/join/{quote(room)}", c, {})
        assert (await client.call("GET", path, c))["presence"] == "online"
        await client.call("POST", f"/rooms/{quote(room)}/leave", b, {})
        status, _ = await client.start("GET", CS + path, b)
        assert status == 403
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_filters_globs_are_bounded_and_plain_lists_are_any_length(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, _, room = await client.alice_and_bob(hs)
        a, path = alice["access_token"], f"/user/{quote(alice['user_id'])}/filter"
        # Each glob is matched against each event type a sync meets: 21 are refused, stored
        # or inline; plain types, senders and rooms may be many (they are sets).
        globs = [f"org.example.{i}.*" for i in range(21)]
        status, body = await client.start("POST", CS + path, a, {"room": {"timeline": {"not_types": globs}}})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        inline = json.dumps({"room": {"timeline": {"types": globs}}})
        status, body = await client.start("GET", f"{CS}/sync", a, filter=inline, timeout="0")
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

        many = {
            "room": {
                "rooms": [room, *(f"!r{i}:fast.test" for i in range(5000))],
                "timeline": {
                    "types": [*globs[:20], "m.room.message", *(f"org.example.t{i}" for i in range(5000))],
                    "not_senders": [{"not": "a string"}, *(f"@u{i}:fast.test" for i in range(5000))],
                },
            }
        }
        filter_id = (await client.call("POST", path, a, many))["filter_id"]
        await client.call(
            "PUT", f"/rooms/{quote(room)}/send/m.room.message/t1", a, {"msgtype": "m.text", "body": "hi"}
        )
        status, synced = await client.start("GET", f"{CS}/sync", a, filter=filter_id, timeout="0")
        assert status == 200
        timeline = synced["rooms"]["join"][room]["timeline"]["events"]
        assert [e["content"]["body"] for e in timeline if e["type"] == "m.room.message"] == ["hi"]
        assert all(e["type"] == "m.room.message" for e in timeline)
    finally:
        await hs.stop(None)
