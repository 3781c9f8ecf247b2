"""Per-user rate limits on send, createRoom, join, invite, media upload, reports, profile
changes, aliases and typing, in-process on a clock the test moves: the request past the burst
answers 429 M_LIMIT_EXCEEDED with `retry_after_ms` and a `Retry-After` header in whole seconds
rounded up, and the same request goes through once the clock has moved that long (never
sooner)."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import CS, Client, TestClock, make_server, request_bytes, room_path, turn
from twisted.internet.defer import Deferred

from homeserver.config import RateLimit
from homeserver.core import ratelimit
from homeserver.core.persist import GATHER_S
from homeserver.server import HomeServer

# 0.4 tokens a second: an empty bucket has its next token in 2.5 s, so Retry-After is 3.
SLOW = {"per_second": 0.4, "burst": 2}


async def raw(
    hs: HomeServer, method: str, path: str, token: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A request with its response headers (the harness's Client keeps only the body)."""
    assert hs.http is not None
    status, headers, data = await request_bytes(hs.http, method, path, token, body, content_type)
    return status, headers, json.loads(data) if data else {}


def assert_limited(
    answer: tuple[int, dict[str, str], dict[str, Any]], retry_after_ms: int, header: str
) -> None:
    status, headers, body = answer
    assert (status, body.get("errcode")) == (429, "M_LIMIT_EXCEEDED"), answer
    assert body["retry_after_ms"] == retry_after_ms
    assert headers["retry-after"] == header


def send(hs: HomeServer, token: str, room_id: str, txn: str) -> Any:
    path = f"{CS}{room_path(room_id)}/send/m.room.message/{txn}"
    return raw(hs, "PUT", path, token, json.dumps({"msgtype": "m.text", "body": txn}).encode())


async def advance(clock: TestClock, seconds: float) -> None:
    """Let the group commit finish its loop first (it times itself on the same clock: moved
    in the middle, its last commit would look slow to it and it would wait for more)."""
    await turn()
    clock.advance(seconds)


async def limited_server(tmp_path: Path, clock: TestClock, **limits: Any) -> HomeServer:
    return await make_server(tmp_path, clock, rate_limits={"enabled": True, **limits})


@pytest_twisted.ensureDeferred
async def test_sending_is_limited_per_user_and_refills_with_time(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, send_per_user=SLOW)
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)
        token = alice["access_token"]
        assert (await send(hs, token, room_id, "t1"))[0] == 200
        assert (await send(hs, token, room_id, "t2"))[0] == 200
        assert_limited(await send(hs, token, room_id, "t3"), 2500, "3")
        # A retry of a request that went through is answered, not counted.
        assert (await send(hs, token, room_id, "t2"))[0] == 200
        # Another user has their own bucket.
        assert (await send(hs, bob["access_token"], room_id, "b1"))[0] == 200
        # Not before the time it said: 2.4 s later there is still no token.
        await advance(clock, 2.4)
        assert_limited(await send(hs, token, room_id, "t3"), 100, "1")
        await advance(clock, 0.1)
        assert (await send(hs, token, room_id, "t3"))[0] == 200
        # Redactions count as sends too.
        path = f"{CS}{room_path(room_id)}/redact/{(await send(hs, bob['access_token'], room_id, 'b2'))[2]['event_id']}/r1"
        assert_limited(await raw(hs, "PUT", path, token, b"{}"), 2500, "3")
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_create_room_join_and_invite_are_limited(tmp_path: Path) -> None:
    clock = TestClock()
    one_a_minute = {"per_second": 1 / 60, "burst": 1}
    hs = await limited_server(
        tmp_path,
        clock,
        create_room_per_user=one_a_minute,
        join_per_user=one_a_minute,
        invite_per_user=one_a_minute,
    )
    client = Client(hs)
    try:
        alice, bob, carol = [await client.register(hs, n) for n in ("alice", "bob", "carol")]
        create = json.dumps({"preset": "public_chat"}).encode()
        status, _, first = await raw(hs, "POST", f"{CS}/createRoom", alice["access_token"], create)
        assert status == 200
        assert_limited(await raw(hs, "POST", f"{CS}/createRoom", alice["access_token"], create), 60_000, "60")
        status, _, second = await raw(hs, "POST", f"{CS}/createRoom", bob["access_token"], create)
        assert status == 200

        join = f"{CS}/join/"
        assert (await raw(hs, "POST", join + first["room_id"], carol["access_token"], b"{}"))[0] == 200
        assert_limited(
            await raw(hs, "POST", join + second["room_id"], carol["access_token"], b"{}"), 60_000, "60"
        )
        # Joining a room one is in again changes nothing and is not counted.
        assert (await raw(hs, "POST", join + first["room_id"], carol["access_token"], b"{}"))[0] == 200

        invite = f"{CS}{room_path(first['room_id'])}/invite"
        body = json.dumps({"user_id": bob["user_id"]}).encode()
        assert (await raw(hs, "POST", invite, alice["access_token"], body))[0] == 200
        other = json.dumps({"user_id": (await client.register(hs, "dave"))["user_id"]}).encode()
        assert_limited(await raw(hs, "POST", invite, alice["access_token"], other), 60_000, "60")

        await advance(clock, 60)
        assert (await raw(hs, "POST", invite, alice["access_token"], other))[0] == 200
        assert (await raw(hs, "POST", join + second["room_id"], carol["access_token"], b"{}"))[0] == 200
        assert (await raw(hs, "POST", f"{CS}/createRoom", alice["access_token"], create))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_media_uploads_are_limited(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(
        tmp_path,
        clock,
        rate_limits={"enabled": True, "media_upload_per_user": SLOW},
        plugins=[{"module": "plugins.media.MediaPlugin", "config": {"max_upload_size": "1M"}}],
    )
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        upload = "/_matrix/media/v3/upload?filename=a.txt"
        for _ in range(2):
            answer = await raw(hs, "POST", upload, alice["access_token"], b"hello", "text/plain")
            assert answer[0] == 200, answer
        assert_limited(
            await raw(hs, "POST", upload, alice["access_token"], b"hello", "text/plain"), 2500, "3"
        )
        await advance(clock, 2.5)
        assert (await raw(hs, "POST", upload, alice["access_token"], b"hello", "text/plain"))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_limits_off_when_disabled(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(
        tmp_path, clock, rate_limits={"enabled": False, "send_per_user": {"per_second": 0.001, "burst": 1}}
    )
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        room_id = (await client.call("POST", "/createRoom", alice["access_token"], {}))["room_id"]
        for i in range(5):
            assert (await send(hs, alice["access_token"], room_id, f"t{i}"))[0] == 200
    finally:
        await hs.stop(None)


def test_a_full_table_of_recent_buckets_is_not_scanned_on_every_request(monkeypatch: Any) -> None:
    # One client with many addresses (an IPv6 range) can fill the table with buckets all
    # used within the hour: the idle-bucket prune then frees nothing, and ran again on every
    # request (a scan of the whole table each time). The stalest half goes instead.
    monkeypatch.setattr(ratelimit, "_MAX_BUCKETS", 1000)
    limiter = ratelimit.RateLimiter(TestClock())
    scans = 0
    prune = limiter._prune

    def counting(now: float) -> None:
        nonlocal scans
        scans += 1
        prune(now)

    monkeypatch.setattr(limiter, "_prune", counting)
    limit = RateLimit(1.0, 5)
    for n in range(3000):
        limiter.check("login", f"2001:db8::{n:x}", limit)
    assert len(limiter._buckets) <= 1000
    assert scans <= 5, scans


@pytest_twisted.ensureDeferred
async def test_reports_are_limited(tmp_path: Path) -> None:
    """Reports are stored for the admins: past the burst they are refused, not stored."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, report_per_user=SLOW)
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)
        token = alice["access_token"]
        reason = json.dumps({"reason": "spam"}).encode()
        assert (await raw(hs, "POST", f"{CS}/users/{bob['user_id']}/report", token, reason))[0] == 200
        assert (await raw(hs, "POST", f"{CS}{room_path(room_id)}/report", token, reason))[0] == 200
        assert_limited(
            await raw(hs, "POST", f"{CS}/users/@x:elsewhere.example/report", token, reason), 2500, "3"
        )
        assert len(await hs.storage.reports.recent(10)) == 2
        # Another user has their own bucket.
        assert (await raw(hs, "POST", f"{CS}{room_path(room_id)}/report", bob["access_token"], reason))[
            0
        ] == 200
        await advance(clock, 2.5)
        assert (await raw(hs, "POST", f"{CS}/users/@x:elsewhere.example/report", token, reason))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_create_room_invites_count_as_invites(tmp_path: Path) -> None:
    """createRoom's 'invite' list is that many invitations: one request (a room's cost) named
    thousands of users, thousands of invite events and pushes."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, invite_per_user={"per_second": 1 / 60, "burst": 3})
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        others = [(await client.register(hs, n))["user_id"] for n in ("bob", "carol", "dave", "erin")]
        token = alice["access_token"]

        def create(invite: list[str]) -> Any:
            return raw(hs, "POST", f"{CS}/createRoom", token, json.dumps({"invite": invite}).encode())

        status, _, body = await create(others)
        assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), body
        # Nothing was taken by the refused request: three invitations go through at once.
        status, _, body = await create(others[:3])
        assert status == 200, body
        joined = await raw(hs, "GET", f"{CS}{room_path(body['room_id'])}/members", token, b"")
        assert sorted(e["state_key"] for e in joined[2]["chunk"]) == sorted([alice["user_id"], *others[:3]])
        assert_limited(await create([others[3]]), 60_000, "60")
        # The bucket is the one of POST /invite.
        invite = f"{CS}{room_path(body['room_id'])}/invite"
        assert_limited(
            await raw(hs, "POST", invite, token, json.dumps({"user_id": others[3]}).encode()), 60_000, "60"
        )
        # A room without invitations is only a room.
        assert (await create([]))[0] == 200
        await advance(clock, 60)
        assert (await create([others[3]]))[0] == 200
    finally:
        await hs.stop(None)


async def driven(clock: TestClock, request: Coroutine[Any, Any, Any]) -> Any:
    """`request`, moving the clock a group commit's gathering pause at a time: member events
    persisted together in several rooms wait that long on the server's clock for more."""
    done = Deferred.fromCoroutine(request)
    while not done.called:
        await turn()
        clock.advance(GATHER_S)
    return await done


def assert_limited_about(answer: tuple[int, dict[str, str], dict[str, Any]], retry_after_ms: int) -> None:
    """429 with retry_after_ms within the few gathering pauses `driven` moved the clock."""
    status, _, body = answer
    assert (status, body.get("errcode")) == (429, "M_LIMIT_EXCEEDED"), answer
    assert retry_after_ms - 100 < body["retry_after_ms"] <= retry_after_ms, body


@pytest_twisted.ensureDeferred
async def test_profile_changes_are_limited_by_the_member_events_they_make(tmp_path: Path) -> None:
    """A display name change is a new member event in each joined room: a user in many rooms
    changing it in a loop made that many events a request. Each change costs its rooms; one
    token lets it through, then the bucket refills from below zero."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, profile_update_per_user={"per_second": 1, "burst": 3})
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        rooms = [(await raw(hs, "POST", f"{CS}/createRoom", token, b"{}"))[2]["room_id"] for _ in range(3)]
        path = f"{CS}/profile/{alice['user_id']}/displayname"

        def rename(name: str) -> Any:
            return raw(hs, "PUT", path, token, json.dumps({"displayname": name}).encode())

        assert (await driven(clock, rename("one")))[0] == 200  # 3 member events: the bucket is empty
        for room_id in rooms:
            member = await raw(
                hs, "GET", f"{CS}{room_path(room_id)}/state/m.room.member/{alice['user_id']}", token, b""
            )
            assert member[2]["displayname"] == "one"
        assert_limited_about(await driven(clock, rename("two")), 1000)
        assert (await raw(hs, "GET", path, token, b""))[2] == {"displayname": "one"}
        await advance(clock, 1)
        assert (await driven(clock, rename("two")))[0] == 200  # one token is enough: 3 below zero now
        assert_limited_about(await driven(clock, raw(hs, "DELETE", path, token, b"")), 3000)
        # The admin API's changes are not counted.
        await driven(clock, hs.admin.put_user(alice["user_id"], {"displayname": "three"}))
        assert (await raw(hs, "GET", path, token, b""))[2] == {"displayname": "three"}
        await advance(clock, 3)
        assert (await driven(clock, rename("four")))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_knocks_count_as_joins(tmp_path: Path) -> None:
    """Knocking and leaving in a loop put a member event in front of the room's moderators
    each time, without limit: a knock is a join of `join_per_user`."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, join_per_user={"per_second": 1 / 60, "burst": 1})
    client = Client(hs)
    try:
        alice, bob = [await client.register(hs, n) for n in ("alice", "bob")]
        room_id = (await raw(hs, "POST", f"{CS}/createRoom", alice["access_token"], b"{}"))[2]["room_id"]
        rules = f"{CS}{room_path(room_id)}/state/m.room.join_rules/"
        assert (await raw(hs, "PUT", rules, alice["access_token"], b'{"join_rule": "knock"}'))[0] == 200
        knock = f"{CS}/knock/{room_id}"
        token = bob["access_token"]
        assert (await raw(hs, "POST", knock, token, b"{}"))[0] == 200
        # Knocking again asks nothing and is not counted.
        assert (await raw(hs, "POST", knock, token, b"{}"))[0] == 200
        assert (await raw(hs, "POST", f"{CS}{room_path(room_id)}/leave", token, b"{}"))[0] == 200
        assert_limited(await raw(hs, "POST", knock, token, b"{}"), 60_000, "60")
        await advance(clock, 60)
        assert (await raw(hs, "POST", knock, token, b"{}"))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_aliases_are_limited(tmp_path: Path) -> None:
    """Aliases are kept until removed, in one namespace: a loop of PUTs took any number of
    names. Pointing an alias where it points already takes nothing."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, create_alias_per_user={"per_second": 1 / 60, "burst": 1})
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        room_id = (await raw(hs, "POST", f"{CS}/createRoom", token, b"{}"))[2]["room_id"]
        body = json.dumps({"room_id": room_id}).encode()

        def alias(name: str) -> Any:
            return raw(hs, "PUT", f"{CS}/directory/room/%23{name}:{hs.config.server_name}", token, body)

        assert (await alias("one"))[0] == 200
        status, _, answer = await alias("one")
        assert (status, answer.get("errcode")) == (409, "M_UNKNOWN")
        assert_limited(await alias("two"), 60_000, "60")
        await advance(clock, 60)
        assert (await alias("two"))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_typing_is_limited(tmp_path: Path) -> None:
    """Each typing change wakes the syncs of every member of the room: a loop of toggles in a
    big room made that work at request speed. Past the bucket nothing changes for the others."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, typing_per_user={"per_second": 1, "burst": 3})
    client = Client(hs)
    try:
        alice, bob, room_id = await client.alice_and_bob(hs)
        path = f"{CS}{room_path(room_id)}/typing/{alice['user_id']}"

        def typing(on: bool) -> Any:
            return raw(hs, "PUT", path, alice["access_token"], json.dumps({"typing": on}).encode())

        for on in (True, False, True):
            assert (await typing(on))[0] == 200
        assert_limited(await typing(False), 1000, "1")
        assert hs.typing.typing_users(room_id) == [alice["user_id"]]
        # Bob has his own bucket.
        bob_path = f"{CS}{room_path(room_id)}/typing/{bob['user_id']}"
        assert (await raw(hs, "PUT", bob_path, bob["access_token"], b'{"typing": true}'))[0] == 200
        await advance(clock, 1)
        assert (await typing(False))[0] == 200
        assert hs.typing.typing_users(room_id) == [bob["user_id"]]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_the_default_typing_limit(tmp_path: Path) -> None:
    """What a client sends while its user writes fast for ten minutes (a typing notice, then
    a stop at each message, one message every 2 s) never meets the default typing limit; a
    flood of toggles does."""
    clock = TestClock()
    hs = await limited_server(tmp_path, clock)
    client = Client(hs)
    try:
        alice, _, room_id = await client.alice_and_bob(hs)
        path = f"{CS}{room_path(room_id)}/typing/{alice['user_id']}"
        for _ in range(300):
            for on in (True, False):
                body = json.dumps({"typing": on, "timeout": 30_000}).encode()
                assert (await raw(hs, "PUT", path, alice["access_token"], body))[0] == 200
            await advance(clock, 2)
        answers = [
            (await raw(hs, "PUT", path, alice["access_token"], b'{"typing": true}'))[0] for _ in range(40)
        ]
        assert answers == [200] * 30 + [429] * 10
    finally:
        await hs.stop(None)
