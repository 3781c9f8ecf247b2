"""Receipts, typing, presence, account data, to-device messages and device lists across
worker processes (homeserver/workers/streams.py), push rules and ignore lists through the
account-data stream (what counts, is listed and is pushed on every worker), token
revocations and other caches (invalidation.py), and rate limits counted over several
processes (shared_limits.py).

Two HomeServers in one reactor on one fresh PostgreSQL schema, joined by a MemoryHub bus
and in-process RPC: w1 writes every stream (and every room), w2 is a client worker. A
/sync long-poll proves a wake-up: the test clock never moves, so its timeout cannot end
it. The rate-limit test at the end goes through a real Redis.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import pytest
import pytest_twisted
from fast.harness import Client, TestClock, real_reactor, until
from nacl.signing import SigningKey
from signedjson.key import encode_verify_key_base64, get_verify_key
from signedjson.sign import sign_json
from test_e2ee_api import CrossSigning
from twisted.internet.defer import Deferred

from homeserver.config import STREAMS, RateLimit, WorkersConfig, parse_config
from homeserver.core.ratelimit import RateLimiter
from homeserver.errors import LimitExceeded
from homeserver.server import HomeServer
from homeserver.workers.bus import MemoryHub, RedisBus
from homeserver.workers.event_replication import CHANNEL as EVENTS_CHANNEL
from homeserver.workers.rpc import MemoryTransport
from homeserver.workers.shared_limits import BATCH_S, SharedRateLimits

CS = "/_matrix/client/v3"
LONG_POLL_MS = 60_000


class Workers:
    """w1 and w2 over one database, one hub and one RPC transport. w2 starts when a test has
    made its rooms on w1: the events themselves do not cross processes in these tests."""

    def __init__(self, tmp_path: Path, pg_url: str) -> None:
        self.clock = TestClock()
        self.hub = MemoryHub()
        self.transport = MemoryTransport()
        self.config = parse_config(_config(tmp_path, pg_url), "workers-test.yaml", env={})
        self.w1 = self._server("w1")
        self.w2 = self._server("w2")
        self.c1, self.c2 = Client(self.w1), Client(self.w2)
        self.started: list[HomeServer] = []

    def _server(self, name: str) -> HomeServer:
        hs = HomeServer(
            self.config,
            real_reactor(),
            clock=self.clock,
            worker=name,
            bus=self.hub.bus(name),
            rpc_transport=self.transport,
        )
        self.transport.add(hs.rpc)
        return hs

    async def start(self, hs: HomeServer) -> None:
        await hs.start()
        self.started.append(hs)

    def client(self, hs: HomeServer) -> Client:
        return self.c1 if hs is self.w1 else self.c2


def _config(tmp_path: Path, pg_url: str, **overrides: Any) -> dict[str, Any]:
    workers: dict[str, Any] = {
        "redis_url": "redis://127.0.0.1:6379/0",
        "secret": "w" * 32,
        "instances": {"w1": {"internal": "127.0.0.1:9"}, "w2": {"internal": "127.0.0.1:10"}},
        "event_writers": ["w1"],
        "stream_writers": dict.fromkeys(STREAMS, "w1"),
    }
    if "drain_delay" in WorkersConfig.__dataclass_fields__:
        workers["drain_delay"] = "0s"  # no balancer to tell (and the test clock never moves)
    return {
        "server_name": "workers.test",
        "data_dir": str(tmp_path / "data"),
        "database": {"url": pg_url},
        "auth": {"password_hashing": "fast", "jwt_secret": "s" * 48},
        "rate_limits": {"enabled": False},
        "plugins": [],
        "workers": workers,
        **overrides,
    }


@pytest_twisted.async_yield_fixture
async def workers(tmp_path: Path, pg_url: str) -> AsyncIterator[Workers]:
    w = Workers(tmp_path, pg_url)
    await w.start(w.w1)
    try:
        yield w
    finally:
        for hs in reversed(w.started):
            await hs.stop(None)


async def _user(w: Workers, name: str) -> dict[str, str]:
    return await w.c1.register(w.w1, name)


async def _room(w: Workers, owner: dict[str, str], *members: dict[str, str]) -> str:
    """A room made and joined on w1 (the event writer) before anyone reads it on w2."""
    room_id = (await w.c1.call("POST", "/createRoom", owner["access_token"], {"preset": "public_chat"}))[
        "room_id"
    ]
    for member in members:
        await w.c1.call("POST", f"/join/{quote(room_id)}", member["access_token"], {})
    return room_id


async def _message(w: Workers, user: dict[str, str], room_id: str) -> str:
    body = {"msgtype": "m.text", "body": "hello"}
    txn = secrets.token_hex(4)
    path = f"/rooms/{quote(room_id)}/send/m.room.message/{txn}"
    return str((await w.c1.call("PUT", path, user["access_token"], body))["event_id"])


async def _since(client: Client, user: dict[str, str]) -> str:
    status, body = await client.sync(user["access_token"])
    assert status == 200, body
    return str(body["next_batch"])


def _long_poll(client: Client, user: dict[str, str], since: str) -> Deferred[tuple[int, dict[str, Any]]]:
    return client.sync(user["access_token"], since, timeout_ms=LONG_POLL_MS)


async def _woken(poll: Deferred[tuple[int, dict[str, Any]]], what: str) -> dict[str, Any]:
    """The long-poll's answer: it must come back by a wake-up (the clock never moves)."""
    await until(lambda: poll.called, f"a long-poll woken by {what}")
    status, body = await poll
    assert status == 200, body
    return body


def _ephemeral(body: dict[str, Any], room_id: str, kind: str) -> list[dict[str, Any]]:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == kind]


async def _settled(w: Workers) -> None:
    """Presence set by the first syncs reaches every process before a test starts."""
    await until(
        lambda: w.w2.presence.stream.current == w.w1.presence.stream.current, "presence positions agree"
    )


# The streams, each written on one worker and seen by a long-poll on the other -----------


@pytest.mark.parametrize("writer", ["w1", "w2"])
@pytest_twisted.ensureDeferred
async def test_receipt_wakes_a_long_poll_on_the_other_worker(workers: Workers, writer: str) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    room_id = await _room(w, alice, bob)
    event_id = await _message(w, alice, room_id)
    on, other = (w.w1, w.w2) if writer == "w1" else (w.w2, w.w1)
    await w.start(w.w2)
    since = await _since(w.client(other), bob)
    await _settled(w)
    poll = _long_poll(w.client(other), bob, since)
    path = f"/rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}"
    await w.client(on).call("POST", path, alice["access_token"], {})
    body = await _woken(poll, "a read receipt")
    receipts = _ephemeral(body, room_id, "m.receipt")
    assert receipts and alice["user_id"] in receipts[0]["content"][event_id]["m.read"]


@pytest_twisted.ensureDeferred
async def test_read_markers_on_a_client_worker_go_to_the_writer_as_one_request(workers: Workers) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    room_id = await _room(w, alice, bob)
    event_id = await _message(w, alice, room_id)
    await w.start(w.w2)
    since = await _since(w.client(w.w1), bob)
    await _settled(w)
    poll = _long_poll(w.client(w.w1), bob, since)
    markers = {"m.fully_read": event_id, "m.read": event_id}
    await w.client(w.w2).call("POST", f"/rooms/{quote(room_id)}/read_markers", alice["access_token"], markers)
    body = await _woken(poll, "a read receipt")
    receipts = _ephemeral(body, room_id, "m.receipt")
    assert receipts and alice["user_id"] in receipts[0]["content"][event_id]["m.read"]
    path = f"/user/{quote(alice['user_id'])}/rooms/{quote(room_id)}/account_data/m.fully_read"
    assert await w.client(w.w2).call("GET", path, alice["access_token"]) == {"event_id": event_id}


@pytest_twisted.ensureDeferred
async def test_typing_on_the_client_worker_wakes_a_long_poll_there(workers: Workers) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    room_id = await _room(w, alice, bob)
    await w.start(w.w2)
    since = await _since(w.c2, bob)
    await _settled(w)
    poll = _long_poll(w.c2, bob, since)
    path = f"/rooms/{quote(room_id)}/typing/{quote(alice['user_id'])}"
    await w.c2.call("PUT", path, alice["access_token"], {"typing": True, "timeout": 30000})
    body = await _woken(poll, "typing")
    assert _ephemeral(body, room_id, "m.typing")[0]["content"]["user_ids"] == [alice["user_id"]]
    # The writer holds the timer; the client worker only mirrors it.
    assert w.w1.typing.typing_users(room_id) == [alice["user_id"]]


@pytest_twisted.ensureDeferred
async def test_presence_set_on_one_worker_reaches_a_room_mate_on_the_other(workers: Workers) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    await _room(w, alice, bob)
    await w.start(w.w2)
    since = await _since(w.c1, bob)
    await _settled(w)
    poll = _long_poll(w.c1, bob, since)
    path = f"/presence/{quote(alice['user_id'])}/status"
    await w.c2.call("PUT", path, alice["access_token"], {"presence": "unavailable", "status_msg": "lunch"})
    body = await _woken(poll, "presence")
    seen = {e["sender"]: e["content"] for e in body.get("presence", {}).get("events", [])}
    assert seen[alice["user_id"]]["presence"] == "unavailable"
    assert seen[alice["user_id"]]["status_msg"] == "lunch"


@pytest_twisted.ensureDeferred
async def test_account_data_written_through_one_worker_reaches_another_device(workers: Workers) -> None:
    w = workers
    alice = await _user(w, "alice")
    second = await _login(w, alice["user_id"])
    await w.start(w.w2)
    since = await _since(w.c1, second)
    await _settled(w)
    poll = _long_poll(w.c1, second, since)
    path = f"/user/{quote(alice['user_id'])}/account_data/org.example.colour"
    await w.c2.call("PUT", path, alice["access_token"], {"colour": "teal"})
    body = await _woken(poll, "account data")
    events = body.get("account_data", {}).get("events", [])
    assert {"type": "org.example.colour", "content": {"colour": "teal"}} in events
    # Read back through the worker that forwarded it: its own caches have it already.
    assert await w.c2.call("GET", path, alice["access_token"]) == {"colour": "teal"}


async def _login(w: Workers, user_id: str) -> dict[str, str]:
    login = await w.w1.accounts.create_session(user_id, None, None, refreshable=False, ip=None)
    return {"user_id": user_id, "device_id": login.device_id, "access_token": login.tokens.access_token}


@pytest_twisted.ensureDeferred
async def test_to_device_message_sent_on_one_worker_wakes_the_device_on_the_other(workers: Workers) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    await w.start(w.w2)
    since = await _since(w.c1, bob)
    await _settled(w)
    poll = _long_poll(w.c1, bob, since)
    messages = {bob["user_id"]: {bob["device_id"]: {"secret": "s3"}}}
    await w.c2.call("PUT", "/sendToDevice/org.example.ping/t1", alice["access_token"], {"messages": messages})
    body = await _woken(poll, "a to-device message")
    events = body.get("to_device", {}).get("events", [])
    assert [(e["type"], e["sender"], e["content"]) for e in events] == [
        ("org.example.ping", alice["user_id"], {"secret": "s3"})
    ]


@pytest_twisted.ensureDeferred
async def test_device_keys_uploaded_on_one_worker_tell_a_room_mate_on_the_other(workers: Workers) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    await _room(w, alice, bob)
    await w.start(w.w2)
    since = await _since(w.c1, alice)
    await _settled(w)
    poll = _long_poll(w.c1, alice, since)
    await w.c2.call("POST", "/keys/upload", bob["access_token"], {"device_keys": _device_keys(bob)})
    body = await _woken(poll, "a device-list change")
    assert bob["user_id"] in body.get("device_lists", {}).get("changed", [])
    # Both workers read the same keys.
    query = {"device_keys": {bob["user_id"]: []}}
    for client in (w.c1, w.c2):
        found = await client.call("POST", "/keys/query", alice["access_token"], query)
        assert bob["device_id"] in found["device_keys"][bob["user_id"]]


@pytest_twisted.ensureDeferred
async def test_deactivation_on_a_client_worker_deletes_the_keys_through_the_writer(workers: Workers) -> None:
    """The deactivated account's cross-signing keys go on the device-list writer (w1), and a
    room mate syncing there hears of it."""
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    await _room(w, alice, bob)
    await w.start(w.w2)
    await w.c2.call("POST", "/keys/upload", bob["access_token"], {"device_keys": _device_keys(bob)})
    xs = CrossSigning.make(bob["user_id"])
    await w.c2.call("POST", "/keys/device_signing/upload", bob["access_token"], xs.upload_body())
    query = {"device_keys": {bob["user_id"]: []}}
    assert (
        bob["user_id"]
        in (await w.c1.call("POST", "/keys/query", alice["access_token"], query))["master_keys"]
    )
    since = await _since(w.c1, alice)
    await _settled(w)
    poll = _long_poll(w.c1, alice, since)
    status, challenge = await w.c2.start("POST", CS + "/account/deactivate", bob["access_token"], {})
    assert status == 401, challenge
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": bob["user_id"]},
        "password": "correct horse battery",
        "session": challenge["session"],
    }
    await w.c2.call("POST", "/account/deactivate", bob["access_token"], {"auth": auth})
    body = await _woken(poll, "the deactivated user's keys going")
    assert bob["user_id"] in body.get("device_lists", {}).get("changed", [])
    for client in (w.c1, w.c2):
        found = await client.call("POST", "/keys/query", alice["access_token"], query)
        assert found["device_keys"] == {bob["user_id"]: {}}
        assert found["master_keys"] == {} and found["self_signing_keys"] == {}


async def _token_cached_on_w2(w: Workers, user: dict[str, str]) -> None:
    """Start w2 and use `user`'s token there once, so that w2 holds it in its cache."""
    await w.start(w.w2)
    assert (await w.c2.call("GET", "/account/whoami", user["access_token"]))["user_id"] == user["user_id"]


async def _whoami_on_w2(w: Workers, user: dict[str, str]) -> tuple[int, str]:
    """The status and errcode w2 answers for `user`'s token."""
    status, body = await w.c2.start("GET", CS + "/account/whoami", user["access_token"])
    return status, body.get("errcode", "")


def _device_keys(user: dict[str, str]) -> dict[str, Any]:
    key = SigningKey.generate()
    signing_key: Any = key
    signing_key.alg, signing_key.version = "ed25519", user["device_id"]
    keys = {
        "user_id": user["user_id"],
        "device_id": user["device_id"],
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"ed25519:{user['device_id']}": encode_verify_key_base64(get_verify_key(signing_key)),
            f"curve25519:{user['device_id']}": "c" * 43,
        },
    }
    signed: dict[str, Any] = sign_json(keys, user["user_id"], signing_key)
    return signed


@pytest_twisted.ensureDeferred
async def test_a_remote_users_device_list_change_written_on_a_client_worker_borrows_a_position(
    workers: Workers,
) -> None:
    w = workers
    await w.start(w.w2)
    carol = "@carol:elsewhere.test"
    before = w.w1.keys.device_lists.current
    seen_while_writing: list[tuple[int, int]] = []

    async def write(position: int) -> None:
        # Lent by the writer and held open there: nobody reads past it yet.
        seen_while_writing.append((position, w.w1.keys.device_lists.current))
        await w.w2.storage.remote_devices.record_change(carol, position)

    await w.w2.keys.remote_list_changed(carol, write)
    [(position, writer_current)] = seen_while_writing
    assert writer_current < position
    for hs in (w.w1, w.w2):
        assert hs.keys.device_lists.current >= position
        assert carol in await hs.keys.users_changed_between(before, hs.keys.device_lists.current)


@pytest_twisted.ensureDeferred
async def test_presence_writer_keeps_a_user_syncing_on_another_worker_online(workers: Workers) -> None:
    w = workers
    alice = await _user(w, "alice")
    await w.start(w.w2)
    await _since(w.c2, alice)
    await _settled(w)
    assert w.w1.presence.to_json(alice["user_id"])["presence"] == "online"
    # Six minutes of short syncs on w2 only: the writer hears of them through the reports.
    for _ in range(36):
        w.clock.advance(10)
        await _since(w.c2, alice)
    await until(
        lambda: w.w1.presence.get(alice["user_id"]).last_active_ts >= w.clock.time_ms() - 20_000,  # type: ignore[union-attr]
        "a report reached the presence writer",
    )
    await w.w1.presence.expire()
    assert w.w1.presence.to_json(alice["user_id"])["presence"] == "online"
    # She stops: the writer's expiry takes her offline, and w2 learns it.
    for _ in range(12):
        w.clock.advance(10)
    await w.w1.presence.expire()
    assert w.w1.presence.to_json(alice["user_id"])["presence"] == "offline"
    await until(lambda: w.w2.presence.to_json(alice["user_id"])["presence"] == "offline", "w2 hears of it")


# Catching up after the bus was lost -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_receipt_and_account_data_written_while_disconnected_are_seen_after_reconnect(
    workers: Workers,
) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    room_id = await _room(w, alice, bob)
    event_id = await _message(w, alice, room_id)
    await w.start(w.w2)
    since = await _since(w.c2, bob)
    await _settled(w)
    w.hub.disconnect("w2")
    await w.c1.call(
        "POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}", alice["access_token"], {}
    )
    path = f"/user/{quote(bob['user_id'])}/account_data/org.example.note"
    await w.c1.call("PUT", path, bob["access_token"], {"n": 1})
    # Lost on the way: w2 has not moved.
    assert w.w2.receipts.stream.current < w.w1.receipts.stream.current
    assert w.w2.account_data.stream.current < w.w1.account_data.stream.current
    poll = _long_poll(w.c2, bob, since)
    await w.hub.reconnect("w2")
    body = await _woken(poll, "the catch-up after a reconnect")
    if not _ephemeral(body, room_id, "m.receipt"):
        # The catch-up may land in two wake-ups: the receipt came with the second.
        body = await _woken(_long_poll(w.c2, bob, body["next_batch"]), "the rest of the catch-up")
    receipts = _ephemeral(body, room_id, "m.receipt")
    assert receipts and alice["user_id"] in receipts[0]["content"][event_id]["m.read"]
    status, full = await w.c2.sync(bob["access_token"], since)
    assert {"type": "org.example.note", "content": {"n": 1}} in full["account_data"]["events"]


@pytest_twisted.ensureDeferred
async def test_typing_and_a_logout_missed_while_disconnected_hold_after_reconnect(workers: Workers) -> None:
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    room_id = await _room(w, alice, bob)
    await _token_cached_on_w2(w, bob)
    w.hub.disconnect("w2")
    path = f"/rooms/{quote(room_id)}/typing/{quote(alice['user_id'])}"
    await w.c1.call("PUT", path, alice["access_token"], {"typing": True, "timeout": 30000})
    await w.c1.call("POST", "/logout", bob["access_token"], {})
    assert w.w2.typing.typing_users(room_id) == []
    await w.hub.reconnect("w2")
    # Typing is copied from its writer; every cached token is read again.
    assert w.w2.typing.typing_users(room_id) == [alice["user_id"]]
    assert await _whoami_on_w2(w, bob) == (401, "M_UNKNOWN_TOKEN")


# Caches ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_logout_on_one_worker_makes_the_token_fail_on_the_other_at_once(workers: Workers) -> None:
    w = workers
    alice = await _user(w, "alice")
    await _token_cached_on_w2(w, alice)
    await w.c1.call("POST", "/logout", alice["access_token"], {})
    assert await _whoami_on_w2(w, alice) == (401, "M_UNKNOWN_TOKEN")


@pytest_twisted.ensureDeferred
async def test_a_lock_by_an_admin_on_one_worker_holds_on_the_other(workers: Workers) -> None:
    w = workers
    alice = await _user(w, "alice")
    await _token_cached_on_w2(w, alice)
    await w.w1.restrictions.set(alice["user_id"], "locked", True)
    await until(lambda: w.w2.restrictions.has("locked", alice["user_id"]), "the lock reaches w2")
    assert await _whoami_on_w2(w, alice) == (401, "M_USER_LOCKED")


# Push rules and ignore lists: what counts and notifies on every worker ----------------------


async def _replicated(w: Workers) -> None:
    """Every message sent so far has reached w2's event stream."""
    await until(lambda: w.w2.stream.position >= w.w1.stream.position, "w2 has every message")


async def _counts_and_notified(client: Client, user: dict[str, str], room_id: str) -> tuple[int, int]:
    """What the user sees there: the room's unread count in a /sync, and how many of its
    messages GET /notifications lists."""
    status, body = await client.sync(user["access_token"])
    assert status == 200, body
    count = body["rooms"]["join"][room_id]["unread_notifications"]["notification_count"]
    listed = (await client.call("GET", "/notifications", user["access_token"]))["notifications"]
    return count, sum(1 for n in listed if n["room_id"] == room_id and n["event"]["type"] == "m.room.message")


async def _mute(client: Client, user: dict[str, str], room_id: str) -> None:
    path = f"/pushrules/global/room/{quote(room_id)}"
    await client.call("PUT", path, user["access_token"], {"actions": ["dont_notify"]})


async def _ignore(client: Client, user: dict[str, str], ignored: dict[str, str]) -> None:
    path = f"/user/{quote(user['user_id'])}/account_data/m.ignored_user_list"
    await client.call("PUT", path, user["access_token"], {"ignored_users": {ignored["user_id"]: {}}})


async def _pushed_to(hs: HomeServer, user: dict[str, str], event_id: str) -> bool:
    """Whether the push rules on `hs` decide that the event notifies the user (what the
    pusher job asks, api.push_decisions)."""
    return user["user_id"] in {d.user_id for d in await hs.unread.decisions(event_id)}


async def _neither_counted_nor_pushed_on_any(
    w: Workers, alice: dict[str, str], bob: dict[str, str], room_id: str
) -> None:
    """alice's next message neither counts for bob nor notifies him, on either worker."""
    event_id = await _message(w, alice, room_id)
    await _replicated(w)
    for name, hs, client in (("w1", w.w1, w.c1), ("w2", w.w2, w.c2)):
        assert not await _pushed_to(hs, bob, event_id), name
        assert await _counts_and_notified(client, bob, room_id) == (0, 0), name


async def _counting_on_both(w: Workers) -> tuple[dict[str, str], dict[str, str], str]:
    """alice's message to bob, counted, listed and pushed for bob on both workers (so that
    each holds bob's rules, his count and alice's ignorers in memory)."""
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    pusher = {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": "key",
        "app_display_name": "App",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    }
    await w.c1.call("POST", "/pushers/set", bob["access_token"], pusher)
    room_id = await _room(w, alice, bob)
    event_id = await _message(w, alice, room_id)
    await w.start(w.w2)
    await _replicated(w)
    for hs, client in ((w.w1, w.c1), (w.w2, w.c2)):
        assert await _counts_and_notified(client, bob, room_id) == (1, 1)
        assert await _pushed_to(hs, bob, event_id)
    return alice, bob, room_id


@pytest.mark.parametrize("change", ["mute the room", "ignore the sender"])
@pytest.mark.parametrize("editor", ["w1", "w2"])
@pytest_twisted.ensureDeferred
async def test_a_room_muted_or_a_user_ignored_on_one_worker_neither_counts_nor_notifies_on_any(
    workers: Workers, editor: str, change: str
) -> None:
    w = workers
    alice, bob, room_id = await _counting_on_both(w)
    client = w.c1 if editor == "w1" else w.c2
    if change == "mute the room":
        await _mute(client, bob, room_id)
    else:
        await _ignore(client, bob, alice)
    await _neither_counted_nor_pushed_on_any(w, alice, bob, room_id)


@pytest_twisted.ensureDeferred
async def test_a_mute_and_an_ignore_missed_while_disconnected_hold_after_reconnect(workers: Workers) -> None:
    w = workers
    alice, bob, room_id = await _counting_on_both(w)
    carol = await _user(w, "carol")
    await w.c1.call("POST", f"/join/{quote(room_id)}", carol["access_token"], {})
    w.hub.disconnect("w2")
    await _mute(w.c1, bob, room_id)
    await _ignore(w.c1, carol, alice)
    await w.hub.reconnect("w2")
    event_id = await _message(w, alice, room_id)
    await _replicated(w)
    assert await _counts_and_notified(w.c2, carol, room_id) == (0, 0)
    assert not await _pushed_to(w.w2, bob, event_id)
    assert await _counts_and_notified(w.c2, bob, room_id) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_mute_forwarded_while_the_bus_is_down_holds_on_its_worker_at_once(workers: Workers) -> None:
    w = workers
    alice, bob, room_id = await _counting_on_both(w)
    w.hub.disconnect("w2")
    await _mute(w.c2, bob, room_id)  # stored by w1, whose row cannot come back yet
    assert await _counts_and_notified(w.c2, bob, room_id) == (0, 0)


# A receipt that reaches a worker before the event it points at -----------------------------


class HeldEvents:
    """Holds the event stream's messages to one process (its other streams go on) until
    `release`: the receipts stream then runs ahead of the events."""

    def __init__(self, w: Workers, name: str) -> None:
        self.bus = w.hub.bus(name)
        self.real = self.bus.deliver
        self.held: list[dict[str, Any]] = []
        self.bus.deliver = self.deliver  # type: ignore[method-assign]

    def deliver(self, channel: str, message: dict[str, Any]) -> None:
        if channel == EVENTS_CHANNEL:
            self.held.append(message)
        else:
            self.real(channel, message)

    def release(self) -> None:
        self.bus.deliver = self.real  # type: ignore[method-assign]
        for message in self.held:
            self.real(EVENTS_CHANNEL, message)


class ReadFirst(NamedTuple):
    alice: dict[str, str]
    bob: dict[str, str]
    room_id: str
    event_id: str  # alice's message bob read
    held: HeldEvents


async def _read_on_w1_before_w2_has_it(w: Workers) -> ReadFirst:
    """Bob's count at 1 on both; then alice's next message, held from w2, and bob's read
    receipt for it (through w1, which has it), applied on w2."""
    alice, bob, room_id = await _counting_on_both(w)
    held = HeldEvents(w, "w2")
    event_id = await _message(w, alice, room_id)
    path = f"/rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}"
    await w.c1.call("POST", path, bob["access_token"], {})
    await until(lambda: w.w2.receipts.stream.current >= w.w1.receipts.stream.current, "w2 has the receipt")
    assert held.held and w.w2.stream.position < w.w1.stream.position
    return ReadFirst(alice, bob, room_id, event_id, held)


@pytest_twisted.ensureDeferred
async def test_a_message_read_before_it_reaches_a_worker_is_not_counted_there(workers: Workers) -> None:
    w = workers
    alice, bob, room_id, _, held = await _read_on_w1_before_w2_has_it(w)
    # Bob's count on w2, loaded afresh after the receipt, before the message is there.
    assert (await _counts_and_notified(w.c2, bob, room_id))[0] == 0
    held.release()
    await _replicated(w)
    assert (await _counts_and_notified(w.c2, bob, room_id))[0] == 0
    assert (await _counts_and_notified(w.c1, bob, room_id))[0] == 0
    # The next message counts as ever.
    await _message(w, alice, room_id)
    await _replicated(w)
    assert (await _counts_and_notified(w.c2, bob, room_id))[0] == 1


@pytest_twisted.ensureDeferred
async def test_a_message_read_before_it_reaches_a_worker_mid_load_is_not_counted_there(
    workers: Workers,
) -> None:
    """The message arrives while w2's load of bob's count reads (the read has the receipt,
    the message is past the read's position): the load evaluates it as if read, and must not
    count it."""
    w = workers
    _, bob, room_id, _, held = await _read_on_w1_before_w2_has_it(w)
    real = w.w2.storage.events.unread_events_many
    reached: Deferred[None] = Deferred()
    gate: Deferred[None] = Deferred()

    async def read(queries: Any, limit: int, upto: int) -> Any:
        rows = await real(queries, limit, upto)
        if not reached.called:
            reached.callback(None)
            await gate
        return rows

    w.w2.storage.events.unread_events_many = read  # type: ignore[method-assign]
    loading = Deferred.fromCoroutine(w.w2.unread.counts(bob["user_id"], room_id))
    await reached
    held.release()
    await _replicated(w)
    gate.callback(None)
    assert (await loading)["notification_count"] == 0
    assert (await _counts_and_notified(w.c2, bob, room_id))[0] == 0


@pytest.mark.parametrize("count_on_w2", ["loaded between", "not loaded"])
@pytest_twisted.ensureDeferred
async def test_a_message_read_before_it_reaches_a_worker_is_pushed_on_none(
    workers: Workers, count_on_w2: str
) -> None:
    """Bob read alice's message (on another device, through w1) before w2 had it: neither
    worker's push decisions notify him of it, whether the receipt came before the message
    (w2, with his count loaded in between or not) or after it (w1, which decided at the
    commit). His next message is pushed as ever."""
    w = workers
    alice, bob, room_id, event_id, held = await _read_on_w1_before_w2_has_it(w)
    if count_on_w2 == "loaded between":
        assert (await _counts_and_notified(w.c2, bob, room_id))[0] == 0
    held.release()
    await _replicated(w)
    assert [name for name, hs in (("w1", w.w1), ("w2", w.w2)) if await _pushed_to(hs, bob, event_id)] == []
    assert (await _counts_and_notified(w.c2, bob, room_id))[0] == 0
    event_id = await _message(w, alice, room_id)
    await _replicated(w)
    for name, hs in (("w1", w.w1), ("w2", w.w2)):
        assert await _pushed_to(hs, bob, event_id), name


def _edits_waiting(hs: HomeServer, user_id: str) -> bool:
    lock = hs.push_rules._locks.get(user_id)
    return lock is not None and bool(lock.waiting)


@pytest_twisted.ensureDeferred
async def test_two_rules_added_at_once_on_two_workers_are_both_kept(workers: Workers) -> None:
    """A client that mutes a room sends several rule edits at once; the balancer spreads
    them. Each edit reads the ruleset, changes it and stores it whole: the one on w2 read
    before the one on w1 stored (its read held there) must not store over it."""
    w = workers
    alice, bob, room_id = await _counting_on_both(w)
    user_id = bob["user_id"]
    reached: Deferred[None] = Deferred()
    gate: Deferred[None] = Deferred()
    for hs in (w.w1, w.w2):
        real = hs.account_data.get

        async def held(user: str, room: str, data_type: str, real: Any = real) -> Any:
            content = await real(user, room, data_type)
            if data_type == "m.push_rules" and not reached.called:  # the first edit's read
                reached.callback(None)
                await gate
            return content

        hs.account_data.get = held
    room_rule = f"/pushrules/global/room/{quote(room_id)}"
    first = Deferred.fromCoroutine(
        w.c2.call("PUT", room_rule, bob["access_token"], {"actions": ["dont_notify"]})
    )
    await reached
    sender_rule = f"/pushrules/global/sender/{quote(alice['user_id'])}"
    second = Deferred.fromCoroutine(
        w.c1.call("PUT", sender_rule, bob["access_token"], {"actions": ["dont_notify"]})
    )
    # The second edit either ran through (nothing orders it after the first) or waits
    # for the first to be stored.
    await until(lambda: second.called or _edits_waiting(w.w1, user_id), "the second edit stored or waiting")
    gate.callback(None)
    await first
    await second
    for client in (w.c1, w.c2):
        rules = await client.call("GET", "/pushrules/global/", bob["access_token"])
        assert [r["rule_id"] for r in rules["room"] if not r["default"]] == [room_id]
        assert [r["rule_id"] for r in rules["sender"] if not r["default"]] == [alice["user_id"]]


@pytest_twisted.ensureDeferred
async def test_a_push_rule_edit_refused_by_the_writer_answers_the_same_error(workers: Workers) -> None:
    w = workers
    bob = await _user(w, "bob")
    await w.start(w.w2)
    rules = CS + "/pushrules/global"
    missing = await w.c2.start("DELETE", rules + "/override/nope", bob["access_token"])
    assert (missing[0], missing[1]["errcode"]) == (404, "M_NOT_FOUND")
    bad = await w.c2.start("PUT", rules + "/override/x", bob["access_token"], {"actions": ["wave"]})
    assert (bad[0], bad[1]["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_a_push_rule_edit_on_a_new_worker_holds_while_the_writer_is_of_the_old_version(
    workers: Workers,
) -> None:
    """A rolling upgrade: w2 runs the new version, w1 (the account-data writer) the one
    before, which knows `account_data.put` but not `account_data.push_rules`."""
    w = workers
    alice, bob, room_id = await _counting_on_both(w)
    del w.w1.rpc._handlers["account_data.push_rules"]
    await _mute(w.c2, bob, room_id)
    await _neither_counted_nor_pushed_on_any(w, alice, bob, room_id)


@pytest_twisted.ensureDeferred
async def test_a_mute_through_a_new_worker_while_the_bus_is_down_and_the_writer_is_old_holds_there(
    workers: Workers,
) -> None:
    w = workers
    alice, bob, room_id = await _counting_on_both(w)
    del w.w1.rpc._handlers["account_data.push_rules"]
    w.hub.disconnect("w2")
    await _mute(w.c2, bob, room_id)  # stored by w1, whose row cannot come back yet
    assert await _counts_and_notified(w.c2, bob, room_id) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_push_rule_body_field_the_rule_drops_does_not_fail_the_edit_on_a_worker(
    workers: Workers,
) -> None:
    """A field of the PUT body that the rule does not keep (here an integer past 64 bits,
    which cannot go between processes) is ignored on the worker as on the writer."""
    w = workers
    bob = await _user(w, "bob")
    await w.start(w.w2)
    rules = CS + "/pushrules/global/override/"
    body = {"actions": ["notify"], "conditions": [], "extra": 2**70}
    for name, client in (("w1", w.c1), ("w2", w.c2)):
        status, answer = await client.start("PUT", rules + name, bob["access_token"], body)
        assert status == 200, (name, answer)
        assert (await client.call("GET", "/pushrules/global/override/" + name, bob["access_token"]))[
            "actions"
        ] == ["notify"]


@pytest_twisted.ensureDeferred
async def test_a_rule_whose_unknown_condition_holds_an_integer_past_canonical_json_is_refused(
    workers: Workers,
) -> None:
    """An unknown condition is kept as sent, so it must be able to go between processes:
    one holding an integer past canonical JSON's range is refused, on either worker, and the
    user's later edits still go through."""
    w = workers
    bob = await _user(w, "bob")
    await w.start(w.w2)
    rules = CS + "/pushrules/global/override/"
    odd = {"actions": ["notify"], "conditions": [{"kind": "org.example.odd", "n": [{"v": 2**70}]}]}
    for name, client in (("w1", w.c1), ("w2", w.c2)):
        status, answer = await client.start("PUT", rules + "odd", bob["access_token"], odd)
        assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), name
        status, answer = await client.start("PUT", rules + name, bob["access_token"], {"actions": ["notify"]})
        assert status == 200, (name, answer)
    kept = {"actions": ["notify"], "conditions": [{"kind": "org.example.odd", "n": [{"v": 2**53 - 1}]}]}
    status, answer = await w.c2.start("PUT", rules + "kept", bob["access_token"], kept)
    assert status == 200, answer
    got = await w.c1.call("GET", "/pushrules/global/override/kept", bob["access_token"])
    assert got["conditions"] == kept["conditions"]


@pytest_twisted.ensureDeferred
async def test_account_data_holding_an_integer_past_canonical_json_is_refused_on_either_worker(
    workers: Workers,
) -> None:
    """Such content would be stored and then fail between processes (a 500, and the other
    workers never hear of it: an ignore list that holds on one worker only)."""
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    await w.start(w.w2)
    ignore = CS + f"/user/{quote(bob['user_id'])}/account_data/m.ignored_user_list"
    odd = {"ignored_users": {alice["user_id"]: {"since": 2**70}}}
    for name, client in (("w1", w.c1), ("w2", w.c2)):
        status, answer = await client.start("PUT", ignore, bob["access_token"], odd)
        assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), name
        assert w.w1.ignored_users.now(bob["user_id"]) == set(), name
    fine = {"ignored_users": {alice["user_id"]: {"since": 2**53 - 1}}}
    status, answer = await w.c2.start("PUT", ignore, bob["access_token"], fine)
    assert status == 200, answer
    for hs in (w.w1, w.w2):
        assert hs.ignored_users.now(bob["user_id"]) == {alice["user_id"]}


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest_twisted.ensureDeferred
async def test_to_device_content_orjson_cannot_write_reaches_the_device_intact(workers: Workers) -> None:
    """To-device content is the sender's to choose (spec): what one process delivers, a
    client worker hands to the to-device writer as it is. An integer past 64 bits or nesting
    past 255 levels was a 500 on w2; 2**60 always went through."""
    w = workers
    alice, bob = await _user(w, "alice"), await _user(w, "bob")
    await w.start(w.w2)
    since = await _since(w.c1, bob)
    await _settled(w)
    poll = _long_poll(w.c1, bob, since)
    content = {"big": 2**70, "low": -(2**70), "wide": 2**60, "deep": _nested(300)}
    body = {"messages": {bob["user_id"]: {bob["device_id"]: content}}}
    path = CS + "/sendToDevice/org.example.odd/t1"
    status, answer = await w.c2.start("PUT", path, alice["access_token"], body)
    assert status == 200, answer
    got = await _woken(poll, "a to-device message")
    assert [e["content"] for e in got["to_device"]["events"]] == [content]
    status, again = await w.c2.sync(bob["access_token"], since)  # not acknowledged: again on w2
    assert status == 200, again
    assert [e["content"] for e in again["to_device"]["events"]] == [content]


@pytest_twisted.ensureDeferred
async def test_an_event_past_canonical_json_through_a_client_worker_is_refused_as_on_the_writer(
    workers: Workers,
) -> None:
    """The room's writer checks event content (events/canonical.py): a client worker hands
    a send or a createRoom body there, and the answer is that 400, not a 500 on the way."""
    w = workers
    alice = await _user(w, "alice")
    room_id = await _room(w, alice)
    await w.start(w.w2)
    path = CS + f"/rooms/{quote(room_id)}/send/org.example.odd/"
    for name, client in (("w1", w.c1), ("w2", w.c2)):
        status, answer = await client.start("PUT", path + name, alice["access_token"], {"n": 2**70})
        assert (status, answer.get("errcode")) == (400, "M_BAD_JSON"), (name, answer)
        odd_room = {"creation_content": {"n": 2**70}}
        status, answer = await client.start("POST", CS + "/createRoom", alice["access_token"], odd_room)
        assert (status, answer.get("errcode")) == (400, "M_BAD_JSON"), (name, answer)
    status, answer = await w.c2.start("PUT", path + "fine", alice["access_token"], {"n": 2**53 - 1})
    assert status == 200, answer


# Jobs --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_jobs_run_only_where_the_topology_puts_them(workers: Workers) -> None:
    w = workers
    await w.start(w.w2)
    # w1 (the default for every job) sends to other servers; w2 does not follow the stream for it.
    assert w.w1.federation_sender._consumer is not None
    assert w.w2.federation_sender._consumer is None
    assert w.w1.topology.runs("background") and not w.w2.topology.runs("background")


@pytest_twisted.ensureDeferred
async def test_edus_queued_on_a_worker_go_to_the_federation_sender_s_queue(workers: Workers) -> None:
    w = workers
    await w.start(w.w2)
    seq = w.w1.federation_sender._seq
    await w.w2.federation_sender.queue_edu(["127.0.0.1:9"], "m.typing", {"room_id": "!r:x", "typing": True})
    # Numbered and held by w1, the one sending; w2 queues nothing of its own.
    assert w.w1.federation_sender._seq == seq + 1
    assert "127.0.0.1:9" in {d.name for d in w.w1.federation_sender.destinations()}
    assert not list(w.w2.federation_sender.destinations())


# Rate limits ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rate_limit_counts_takes_spread_over_two_processes_through_redis() -> None:
    limit = RateLimit(per_second=0.001, burst=4)
    prefix = f"hs-test-{secrets.token_hex(4)}:"
    clock = TestClock()
    buses = [RedisBus(name, "redis://127.0.0.1:6379/0", prefix) for name in ("a", "b")]
    limiters = [RateLimiter(clock) for _ in buses]
    shared = [SharedRateLimits(limiter, bus, clock) for limiter, bus in zip(limiters, buses, strict=True)]
    received: list[int] = []
    for bus, sharing in zip(buses, shared, strict=True):
        sharing.wire()
        bus.subscribe("ratelimit.taken", lambda m: received.append(1))
    try:
        for bus in buses:
            await bus.start()
        # Four sends, alternating between the processes: each sees only two of its own.
        for i in range(4):
            limiters[i % 2].check("send", "@alice:x", limit)
            clock.advance(BATCH_S)
        await until(lambda: len(received) >= 4, "every batch of takes crossed Redis")
        for limiter in limiters:
            with pytest.raises(LimitExceeded):
                limiter.check("send", "@alice:x", limit)
        # Another key is untouched.
        limiters[0].check("send", "@bob:x", limit)
    finally:
        for sharing in shared:
            sharing.stop()
        for bus in buses:
            await bus.stop()
