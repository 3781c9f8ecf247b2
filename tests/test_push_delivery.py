"""The push plugin delivering to a push gateway (plugins/push, docs/push.md).

The server runs in-process on a clock the test moves (tests/fast/harness.py): ack waits
and retry backoff happen only when the test advances it. The gateway is a real HTTP
endpoint on 127.0.0.1 started by the test (no real gateway, Sygnal, can run here): it
records each request and checks what a gateway checks before it answers (the Push Gateway
API's path, a JSON body with a `notification` whose `devices` each carry an app id and a
pushkey; 400 otherwise), then answers as told per pushkey: 200, 500, 200 with the pushkey
`rejected`, or not at all (slow).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from fast.harness import Client, TestClock, make_server, real_reactor, room_path, turn, until
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from homeserver.core import event_stream
from homeserver.server import HomeServer
from plugins.push import DELIVERY_GATHER_S

NOTIFY = "/_matrix/push/v1/notify"
CONSUMER = "plugin.push.delivery"


class Gateway(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.bad: list[bytes] = []
        self.modes: dict[str, str] = {}  # pushkey -> ok | fail | reject | slow | deep
        self.stalled: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802 - twisted's name
        assert request.content is not None
        raw = request.content.read()
        try:
            body = json.loads(raw)
            devices = body["notification"]["devices"]
            pushkey = devices[0]["pushkey"]
            ok = request.path == NOTIFY.encode() and all("app_id" in d and "pushkey" in d for d in devices)
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        if not ok:
            self.bad.append(raw)
            request.setResponseCode(400)
            return b'{"error": "bad request"}'
        self.requests.append(body["notification"])
        mode = self.modes.get(pushkey, "ok")
        if mode == "fail":
            request.setResponseCode(500)
            return b"{}"
        if mode == "reject":
            return json.dumps({"rejected": [pushkey]}).encode()
        if mode == "slow":
            self.stalled.append(request)
            return NOT_DONE_YET
        if mode == "deep":  # a 200 whose JSON nests past the parser's depth (10 KB)
            return b"[" * 5000 + b"]" * 5000
        return b'{"rejected": []}'

    def for_pushkey(self, pushkey: str) -> list[dict[str, Any]]:
        return [n for n in self.requests if n["devices"][0]["pushkey"] == pushkey]


class Setup:
    def __init__(self, hs: HomeServer, clock: TestClock, gateway: Gateway, port: Any) -> None:
        self.hs, self.clock, self.gateway, self.port = hs, clock, gateway, port
        self.client = Client(hs)
        self.url = f"http://127.0.0.1:{port.getHost().port}{NOTIFY}"

    async def user(self, name: str) -> dict[str, str]:
        return await self.client.register(self.hs, name)

    async def room(self, creator: dict[str, str], *members: dict[str, str], **body: Any) -> str:
        body.setdefault("preset", "public_chat")
        room_id: str = (await self.client.call("POST", "/createRoom", creator["access_token"], body))[
            "room_id"
        ]
        for member in members:
            await self.client.call("POST", f"/join/{room_id}", member["access_token"], {})
        return room_id

    async def pusher(self, user: dict[str, str], pushkey: str, **data: Any) -> None:
        body = {
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": pushkey,
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": self.url, **data},
        }
        await self.client.call("POST", "/pushers/set", user["access_token"], body)

    async def send(self, user: dict[str, str], room_id: str, text: str, kind: str = "m.room.message") -> str:
        content = {"msgtype": "m.text", "body": text} if kind == "m.room.message" else {"ciphertext": text}
        path = f"{room_path(room_id)}/send/{kind}/{secrets.token_hex(4)}"
        event_id: str = (await self.client.call("PUT", path, user["access_token"], content))["event_id"]
        self.clock.advance(DELIVERY_GATHER_S)  # the delivery's gathering pause, on this clock
        return event_id

    async def bob_pushed(
        self, pushkey: str, mode: str, text: str
    ) -> tuple[dict[str, str], dict[str, str], str]:
        """Alice and Bob in a room, Bob's pusher `pushkey` answered as `mode` by the gateway,
        and Alice's `text` pushed and settled: (alice, bob, room)."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room(alice, bob)
        await self.pusher(bob, pushkey)
        self.gateway.modes[pushkey] = mode
        await self.send(alice, room_id, text)
        await until(lambda: self.gateway.requests, "a push")
        await self.settled()
        return alice, bob, room_id

    async def settled(self) -> None:
        """Until every notification of what was sent so far is settled (the subscription's
        position has reached the stream: nothing held)."""
        consumer = next(c for c in self.hs.stream.consumers() if c.name == CONSUMER)
        await until(lambda: consumer.position >= self.hs.stream.position, "notifications settled")

    async def saved_position(self) -> tuple[int, int]:
        """(position, handed_upto) of the delivery subscription as saved in the database."""
        saved = await self.hs.storage.stream_consumers.load(CONSUMER)
        assert saved is not None
        return saved

    async def saved_after_lazy_save(self) -> tuple[int, int]:
        """The saved (position, handed_upto) once the lazy save due now has been written."""
        self.clock.advance(event_stream.LAZY_SAVE_S)
        for _ in range(500):
            saved = await self.saved_position()
            if saved[0] >= self.hs.stream.position:
                return saved
            await turn()
        raise AssertionError(f"position never saved: {saved} behind {self.hs.stream.position}")

    def retry_scheduled(self) -> bool:
        """Whether a failed pusher has its next retry on the clock (its last try is answered)."""
        queues = self.hs.plugins[0].delivery.queues.values()
        return any(q.retry_call is not None and q.retry_call.active() for q in queues)

    def parked(self) -> list[tuple[Any, ...]]:
        import sqlite3

        db = sqlite3.connect(Path(self.hs.config.database.url.removeprefix("sqlite:///")))
        try:
            return db.execute(
                "SELECT pusher_id, position, event_id FROM push_parked ORDER BY position"
            ).fetchall()
        finally:
            db.close()

    async def close(self) -> None:
        for request in self.gateway.stalled:
            if not request.finished:
                request.setResponseCode(500)
                request.finish()
        await self.hs.stop(None)
        stopped = self.port.stopListening()
        if stopped is not None:
            await stopped


async def start(
    tmp_path: Path,
    allow_private: bool = True,
    again: Setup | None = None,
    db_url: str | None = None,
    **plugin: Any,
) -> Setup:
    """A server with the plugin; `again`: restarted on the same database, with the clock
    where that one left it and a fresh gateway on the same port (the pushers' URL)."""
    gateway = Gateway()
    number = int(again.url.split(":")[2].split("/")[0]) if again is not None else 0
    port = real_reactor().listenTCP(number, Site(gateway), interface="127.0.0.1")
    clock = TestClock(again.clock.seconds()) if again is not None else TestClock()
    config = {"ack_wait": "2s", "retry_min": "1s", "retry_max": "8s", "request_timeout": "5s", **plugin}
    database = {"database": {"url": db_url}} if db_url else {}
    hs = await make_server(
        tmp_path,
        clock,
        plugins=[{"module": "plugins.push.PushPlugin", "config": config}],
        pushers={"allow_private_addresses": allow_private},
        encryption={"enabled_by_default_for_room_type": "off"},
        **database,
    )
    return Setup(hs, clock, gateway, port)


@pytest_twisted.ensureDeferred
async def test_a_device_with_no_sync_open_is_pushed_at_once_in_the_full_format(tmp_path: Path) -> None:
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob, name="Book club")
        await s.pusher(bob, "bob-phone", extra="kept")
        event_id = await s.send(alice, room_id, "see you at eight")
        await until(lambda: s.gateway.requests, "a push")  # the clock moved by the gather only
        [notification] = s.gateway.requests
        pushkey_ts = notification["devices"][0].pop("pushkey_ts")
        assert isinstance(pushkey_ts, int) and pushkey_ts > 1_700_000_000  # seconds
        assert notification == {
            "event_id": event_id,
            "room_id": room_id,
            "type": "m.room.message",
            "sender": alice["user_id"],
            "sender_display_name": "alice",
            "room_name": "Book club",
            "content": {"msgtype": "m.text", "body": "see you at eight"},
            # Two members: the default rule .m.rule.room_one_to_one plays a sound, so high.
            "prio": "high",
            "counts": {"unread": 1},  # bob's unread count after it, from his push rules
            "devices": [
                {
                    "app_id": "org.example.app",
                    "pushkey": "bob-phone",
                    "data": {"extra": "kept"},
                    "tweaks": {"sound": "default"},
                }
            ],
        }
        await s.settled()
        assert s.gateway.bad == [] and s.parked() == []
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_each_message_costs_the_subscription_no_position_write_its_position_follows_lazily(
    tmp_path: Path,
) -> None:
    """At a steady rate each message is a batch of its own. The delivery is idempotent (an
    event handed over again is skipped for every pusher that settled it), so the stream writes
    its position lazily instead of twice a message: two commits a message were most of what
    the plugin cost (W2 at 500 msg/s, docs/latency.md)."""
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-phone")
        s.clock.advance(DELIVERY_GATHER_S)  # set-up's events: the gather before their batch
        await s.settled()
        saved_before = await s.saved_after_lazy_save()
        for i in range(5):
            await s.send(alice, room_id, f"message {i}")
            await until(lambda i=i: len(s.gateway.requests) == i + 1, "a push")
            await s.settled()
            assert await s.saved_position() == saved_before  # nothing written for this message
        assert (await s.saved_after_lazy_save())[0] == s.hs.stream.position > saved_before[0]

        # Restarted on that position: nothing is pushed again.
        pushed = len(s.gateway.requests)
        await s.close()
        s = await start(tmp_path, again=s)
        await s.send(alice, room_id, "after the restart")
        await until(lambda: s.gateway.requests, "a push")
        await s.settled()
        assert [n["content"]["body"] for n in s.gateway.requests] == ["after the restart"] and pushed == 5
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_event_id_only_and_encrypted_rooms_carry_ids_and_counts_only(tmp_path: Path) -> None:
    s = await start(tmp_path)
    try:
        alice, bob, carol = await s.user("alice"), await s.user("bob"), await s.user("carol")
        plain = await s.room(alice, bob, carol, name="Plain")
        secret = await s.room(
            alice,
            bob,
            carol,
            name="Secret plans",
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        await s.pusher(bob, "bob-short", format="event_id_only")
        await s.pusher(carol, "carol-full")
        short_id = await s.send(alice, plain, "visible text")
        secret_id = await s.send(alice, secret, "CIPHERTEXT", kind="m.room.encrypted")
        await until(lambda: len(s.gateway.requests) == 4, "four pushes")
        ids_only = {"event_id", "room_id", "counts", "prio", "devices"}
        [bob_plain, bob_secret] = s.gateway.for_pushkey("bob-short")
        [carol_plain, carol_secret] = s.gateway.for_pushkey("carol-full")
        assert set(bob_plain) == ids_only and bob_plain["event_id"] == short_id
        assert bob_plain["devices"][0]["data"] == {"format": "event_id_only"}
        # The full format in an encrypted room: no content, sender, names or type either.
        assert set(carol_secret) == ids_only and carol_secret["event_id"] == secret_id
        assert set(bob_secret) == ids_only
        assert "CIPHERTEXT" not in json.dumps(s.gateway.requests)
        assert "Secret plans" not in json.dumps(s.gateway.requests)
        assert carol_plain["content"]["body"] == "visible text"  # while the plain room's is full
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_gateway_is_retried_with_backoff_without_holding_up_other_pushers(
    tmp_path: Path,
) -> None:
    s = await start(tmp_path)
    try:
        alice, bob, carol = await s.user("alice"), await s.user("bob"), await s.user("carol")
        room_id = await s.room(alice, bob, carol)
        await s.pusher(bob, "bob-down")
        await s.pusher(carol, "carol-up")
        s.gateway.modes["bob-down"] = "fail"
        first = await s.send(alice, room_id, "one")
        await until(
            lambda: s.gateway.for_pushkey("bob-down") and s.gateway.for_pushkey("carol-up"), "first try"
        )
        await s.settled()  # parked counts as settled: the stream moves on
        assert [row[2] for row in s.parked()] == [first]
        second = await s.send(alice, room_id, "two")
        await until(lambda: len(s.gateway.for_pushkey("carol-up")) == 2, "carol's second push")
        await s.settled()
        # Behind a parked one, bob's next notification is parked too, without a request.
        assert [row[2] for row in s.parked()] == [first, second]
        assert len(s.gateway.for_pushkey("bob-down")) == 1

        # Retries: after 1 s, then 2 s, then 4 s (each on the test's clock).
        for delay, tries in ((1.0, 2), (2.0, 3), (4.0, 4)):
            await until(s.retry_scheduled, "the failure handled")
            s.clock.advance(delay - 0.01)
            await turn(0.05)
            assert len(s.gateway.for_pushkey("bob-down")) == tries - 1
            s.clock.advance(0.01)
            await until(lambda t=tries: len(s.gateway.for_pushkey("bob-down")) == t, f"try {tries}")
        s.gateway.modes["bob-down"] = "ok"
        await until(s.retry_scheduled, "the failure handled")
        s.clock.advance(8.0)
        await until(lambda: len(s.gateway.for_pushkey("bob-down")) == 6, "both sent")
        assert [n["event_id"] for n in s.gateway.for_pushkey("bob-down")] == [first] * 5 + [second]
        await until(lambda: s.parked() == [], "unparked")
        third = await s.send(alice, room_id, "three")  # the pusher is back to direct sends
        await until(lambda: len(s.gateway.for_pushkey("bob-down")) == 7, "third push")
        assert s.gateway.for_pushkey("bob-down")[-1]["event_id"] == third
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_parked_notification_is_given_up_after_the_configured_time(tmp_path: Path) -> None:
    s = await start(tmp_path, give_up_after="10s", retry_max="4s")
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-dead")
        s.gateway.modes["bob-dead"] = "fail"
        await s.send(alice, room_id, "lost cause")
        await until(lambda: s.parked(), "parked")
        started = s.clock.seconds()
        while s.parked():
            await until(lambda: s.retry_scheduled() or not s.parked(), "the failure handled")
            s.clock.advance(4.0)
            await turn(0.05)
            assert s.clock.seconds() - started < 20, "never given up"
        assert s.clock.seconds() - started > 10  # and not before give_up_after
        tries = len(s.gateway.for_pushkey("bob-dead"))
        s.clock.advance(60.0)
        await turn(0.1)
        assert len(s.gateway.for_pushkey("bob-dead")) == tries  # no more tries
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_rejected_pushkey_removes_its_pusher(tmp_path: Path) -> None:
    s = await start(tmp_path)
    try:
        alice, bob, room_id = await s.bob_pushed("bob-uninstalled", "reject", "anyone there?")
        assert (await s.client.call("GET", "/pushers", bob["access_token"]))["pushers"] == []
        await s.send(alice, room_id, "hello?")
        await s.settled()
        assert len(s.gateway.requests) == 1
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_gateway_answering_200_with_json_nested_too_deep_has_the_push_delivered(
    tmp_path: Path,
) -> None:
    """The answer's list of rejected pushkeys cannot be read, but a 200 is a delivery: the
    push is not parked and sent again (the parser's RecursionError made it a retry)."""
    s = await start(tmp_path)
    try:
        _, bob, _ = await s.bob_pushed("bob-deep", "deep", "one")
        assert s.parked() == [] and not s.retry_scheduled()
        assert len((await s.client.call("GET", "/pushers", bob["access_token"]))["pushers"]) == 1
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_connected_device_that_acknowledges_is_not_pushed(tmp_path: Path) -> None:
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-online")
        _, first = await s.client.sync(bob["access_token"])
        poll = s.client.sync(bob["access_token"], first["next_batch"], timeout_ms=30_000)  # open
        await s.send(alice, room_id, "you are online")
        _, got = await poll  # the message arrives by sync...
        assert room_id in got["rooms"]["join"]
        # ...and the next poll's `since` proves it arrived: no push, even after ack_wait.
        again = s.client.sync(bob["access_token"], got["next_batch"], timeout_ms=30_000)
        await s.settled()
        s.clock.advance(5.0)
        await turn(0.1)
        assert s.gateway.requests == []
        s.clock.advance(30.0)
        await again
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_connected_device_that_does_not_acknowledge_is_pushed_after_ack_wait(tmp_path: Path) -> None:
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-dozing")
        _, first = await s.client.sync(bob["access_token"])
        poll = s.client.sync(bob["access_token"], first["next_batch"], timeout_ms=30_000)
        event_id = await s.send(alice, room_id, "are you there?")
        await poll  # answered, but the phone went to sleep before asking again
        s.clock.advance(1.9)
        await turn(0.1)
        assert s.gateway.requests == []  # still waiting for its receipt
        s.clock.advance(0.1)
        await until(lambda: s.gateway.requests, "the push after ack_wait")
        assert [n["event_id"] for n in s.gateway.requests] == [event_id]
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_message_read_on_another_device_while_its_push_waits_is_not_pushed(tmp_path: Path) -> None:
    """Bob's phone has the message by sync, then sleeps; before ack_wait is over he reads it
    on his laptop (a read receipt): the queued notification is dropped, not sent; the phone
    gets the count instead (counts only, 0). A message he has not read is pushed to the
    same phone after it, with the count then unread."""
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-phone")
        laptop = await s.hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        _, first = await s.client.sync(bob["access_token"])
        poll = s.client.sync(bob["access_token"], first["next_batch"], timeout_ms=30_000)
        read = await s.send(alice, room_id, "lunch?")
        await poll  # the phone has it, then goes to sleep before asking again
        queues = s.hs.plugins[0].delivery.queues.values()
        await until(lambda: any(q.items for q in queues), "the push queued for the phone's receipt")
        s.clock.advance(1.0)
        receipt = f"{room_path(room_id)}/receipt/m.read/{quote(read)}"
        await s.client.call("POST", receipt, laptop.tokens.access_token, {})
        s.clock.advance(1.0)  # ack_wait is over: it would be pushed now, and the badge is due
        await s.settled()
        await until(lambda: s.gateway.requests, "the badge update")
        assert [(n.get("event_id"), n["counts"]) for n in s.gateway.requests] == [(None, {"unread": 0})]
        unread = await s.send(alice, room_id, "are you there?")
        await until(lambda: len(s.gateway.requests) == 2, "the next message's push")
        assert (s.gateway.requests[1]["event_id"], s.gateway.requests[1]["counts"]) == (unread, {"unread": 1})
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_pusher_host_that_resolves_to_a_private_address_is_refused_at_delivery(
    tmp_path: Path,
) -> None:
    s = await start(tmp_path, allow_private=False)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        # A host name passes when set (only literal addresses are judged then)...
        port = s.port.getHost().port
        await s.client.call(
            "POST",
            "/pushers/set",
            bob["access_token"],
            {
                "kind": "http",
                "app_id": "org.example.app",
                "pushkey": "bob-rebound",
                "app_display_name": "Example",
                "device_display_name": "Phone",
                "lang": "en",
                "data": {"url": f"http://localhost:{port}{NOTIFY}"},
            },
        )
        await s.send(alice, room_id, "to the loopback?")
        await s.settled()  # ...and at delivery it resolves to loopback: refused, not retried
        await turn(0.1)
        assert s.gateway.requests == [] and s.parked() == []
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_muting_a_room_by_a_push_rule_stops_its_pushes_and_a_keyword_rule_highlights(
    tmp_path: Path,
) -> None:
    s = await start(tmp_path)
    try:
        alice, bob, carol = await s.user("alice"), await s.user("bob"), await s.user("carol")
        room_id = await s.room(alice, bob, carol)
        await s.pusher(bob, "bob-phone")
        rule = f"/pushrules/global/room/{quote(room_id, safe='')}"
        await s.client.call("PUT", rule, bob["access_token"], {"actions": []})  # muted
        await s.send(alice, room_id, "nothing to see")
        await s.settled()
        assert s.gateway.requests == []

        await s.client.call("DELETE", rule, bob["access_token"])
        keyword = {"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]}
        await s.client.call("PUT", "/pushrules/global/content/cake", bob["access_token"], keyword)
        plain = await s.send(alice, room_id, "hello all")
        cake = await s.send(alice, room_id, "there is cake")
        await until(lambda: len(s.gateway.requests) == 2, "two pushes")
        by_event = {n["event_id"]: n for n in s.gateway.requests}
        assert by_event[plain]["devices"][0]["tweaks"] == {}
        assert by_event[cake]["devices"][0]["tweaks"] == {"highlight": True}
    finally:
        await s.close()


# Badges: counts-only pushes after read receipts --------------------------------------------


async def read(s: Setup, token: str, room_id: str, event_id: str, kind: str = "m.read") -> None:
    await s.client.call("POST", f"{room_path(room_id)}/receipt/{kind}/{quote(event_id)}", token, {})


async def answered(s: Setup) -> None:
    """Until no pusher has a request in flight or anything queued: moving the clock while a
    gateway's answer is on its way would time the request out (request_timeout)."""
    queues = s.hs.plugins[0].delivery.queues.values()
    await until(lambda: all(q.posting is None and not q.items for q in queues), "requests answered")


def badges(s: Setup, pushkey: str) -> list[int]:
    """The counts of the pusher's counts-only notifications, in order."""
    return [n["counts"]["unread"] for n in s.gateway.for_pushkey(pushkey) if "event_id" not in n]


@pytest_twisted.ensureDeferred
async def test_reading_on_another_device_sends_the_phone_one_counts_only_push_with_the_new_count(
    tmp_path: Path,
) -> None:
    """Bob's phone was pushed two messages (badge 2). He reads the first on his laptop: after
    badge_delay the phone gets a counts-only notification with 1, and carol (who read
    nothing) gets none. A receipt that leaves his count as it is sends nothing; reading
    the second (a private receipt) sends 0."""
    s = await start(tmp_path)
    try:
        alice, bob, carol = await s.user("alice"), await s.user("bob"), await s.user("carol")
        room_id = await s.room(alice, bob, carol)
        quiet = await s.room(bob, name="Notes to self")
        note = await s.send(bob, quiet, "buy milk")  # his own: nothing unread there
        await s.pusher(bob, "bob-phone")
        await s.pusher(carol, "carol-phone")
        laptop = await s.hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        token = laptop.tokens.access_token
        first = await s.send(alice, room_id, "one")
        await until(lambda: len(s.gateway.requests) == 2, "the first message pushed to both")
        second = await s.send(alice, room_id, "two")
        await until(lambda: len(s.gateway.requests) == 4, "the second message pushed to both")
        await answered(s)
        assert [n["counts"]["unread"] for n in s.gateway.for_pushkey("bob-phone")] == [1, 2]

        await read(s, token, room_id, first)
        s.clock.advance(0.99)
        await turn(0.05)
        assert badges(s, "bob-phone") == []  # waiting for badge_delay
        s.clock.advance(0.01)
        await until(lambda: badges(s, "bob-phone"), "the badge update")
        await answered(s)
        [badge] = [n for n in s.gateway.for_pushkey("bob-phone") if "event_id" not in n]
        pushkey_ts = badge["devices"][0].pop("pushkey_ts")
        assert isinstance(pushkey_ts, int)
        # The spec's notification with no event: only its counts, low priority, the device.
        assert badge == {
            "prio": "low",
            "counts": {"unread": 1},
            "devices": [{"app_id": "org.example.app", "pushkey": "bob-phone", "data": {}, "tweaks": {}}],
        }

        await read(s, token, quiet, note)  # a receipt, but his count stays 1
        await read(s, token, room_id, first, "m.read.private")  # not past the public one
        s.clock.advance(5.0)
        await turn(0.1)
        assert badges(s, "bob-phone") == [1]

        await read(s, token, room_id, second, "m.read.private")
        s.clock.advance(1.0)
        await until(lambda: len(badges(s, "bob-phone")) == 2, "the second badge update")
        assert badges(s, "bob-phone") == [1, 0]
        assert badges(s, "carol-phone") == []
        assert len(s.gateway.requests) == 6
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_burst_of_receipts_sends_one_badge_update_with_the_last_count(tmp_path: Path) -> None:
    """Bob scrolls through three unread messages on his laptop, a receipt each within
    badge_delay: his phone gets one counts-only notification, with 0, not three."""
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-phone")
        laptop = await s.hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        events = [await s.send(alice, room_id, f"message {i}") for i in range(3)]
        await until(lambda: len(s.gateway.requests) == 3, "three pushes")
        await answered(s)
        for event_id in events:
            await read(s, laptop.tokens.access_token, room_id, event_id)
            s.clock.advance(0.25)
            await turn(0.05)
        s.clock.advance(0.25)  # badge_delay after the first receipt
        await until(lambda: badges(s, "bob-phone"), "the badge update")
        await answered(s)
        s.clock.advance(10.0)
        await turn(0.1)
        assert badges(s, "bob-phone") == [0]
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_parked_push_read_before_its_retry_is_dropped_and_the_badge_follows(tmp_path: Path) -> None:
    """Bob's gateway is down when a message comes: its push is parked. He reads it on his
    laptop; when the gateway is back, the retry does not send the message (read), but the
    badge update parked behind it, with the count now (0)."""
    s = await start(tmp_path)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-phone")
        laptop = await s.hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        s.gateway.modes["bob-phone"] = "fail"
        event_id = await s.send(alice, room_id, "while you were offline")
        await until(lambda: s.parked(), "parked")
        await read(s, laptop.tokens.access_token, room_id, event_id)
        s.gateway.modes["bob-phone"] = "ok"
        s.clock.advance(1.0)  # the retry (retry_min) and the badge (badge_delay) are due
        await until(lambda: badges(s, "bob-phone"), "the badge update")
        await answered(s)
        s.clock.advance(60.0)
        await turn(0.1)
        assert [(n.get("event_id"), n["counts"]["unread"]) for n in s.gateway.for_pushkey("bob-phone")] == [
            (event_id, 1),  # the first try, failed
            (None, 0),
        ]
        assert s.parked() == []
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_badge_update_due_at_a_restart_is_sent_after_it(tmp_path: Path, db_url: str | None) -> None:
    """Bob reads his message on his laptop and the server stops before badge_delay is over:
    after the restart the phone gets the counts-only notification (from the receipts
    stored since the saved position), once."""
    s = await start(tmp_path, db_url=db_url)
    try:
        alice, bob = await s.user("alice"), await s.user("bob")
        room_id = await s.room(alice, bob)
        await s.pusher(bob, "bob-phone")
        laptop = await s.hs.accounts.create_session(bob["user_id"], None, None, refreshable=False, ip=None)
        event_id = await s.send(alice, room_id, "read me")
        await until(lambda: s.gateway.requests, "the push")
        await answered(s)
        await read(s, laptop.tokens.access_token, room_id, event_id)
        s.clock.advance(0.5)
        await turn(0.05)
        assert badges(s, "bob-phone") == []
    finally:
        await s.close()
    s = await start(tmp_path, again=s, db_url=db_url)
    try:
        # The delay starts once the restarted consumer has read the receipt, which may be
        # after any one advance of the clock: move it on a little every turn until then.
        def later_and_sent() -> bool:
            s.clock.advance(0.1)
            return bool(s.gateway.requests)

        await until(later_and_sent, "the badge update after the restart")
        await answered(s)
        s.clock.advance(10.0)
        await turn(0.1)
        assert [(n.get("event_id"), n["counts"]["unread"]) for n in s.gateway.requests] == [(None, 0)]
    finally:
        await s.close()
    s = await start(tmp_path, again=s, db_url=db_url)
    try:
        s.clock.advance(10.0)
        await turn(0.2)
        assert s.gateway.requests == []  # settled: not again
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The plugin's badge tables on both engines."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url
