"""Email notifications of the push plugin (plugins/push/email_notifier.py, docs/push.md).

The server runs in-process on a clock the test moves (tests/fast/harness.py): the delay
and the throttle pass only when the test advances it. Mails go through the server's
mailer over real SMTP to an aiosmtpd sink in this process (tests/mail_sink.py), and are
read as the user would read them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fast.harness import Client, TestClock, make_server, room_path, turn, until
from mail_sink import Mail, MailSink

from homeserver.server import HomeServer
from plugins.push import DELIVERY_GATHER_S

DELAY_S = 600  # email_delay: 10m
THROTTLE_S = 3600  # email_throttle: 1h
CLIENT_URL = "https://app.example.org"


@pytest.fixture
def sink() -> Iterator[MailSink]:
    mail_sink = MailSink().start()
    yield mail_sink
    mail_sink.stop()


class Setup:
    def __init__(self, hs: HomeServer, clock: TestClock, sink: MailSink) -> None:
        self.hs, self.clock, self.sink = hs, clock, sink
        self.client = Client(hs)

    async def user(self, name: str, email: str | None = None) -> dict[str, str]:
        user_id = await self.hs.accounts.register(
            name, "correct horse battery", email=email, email_validated=email is not None
        )
        login = await self.hs.accounts.create_session(user_id, None, None, refreshable=False, ip=None)
        return {"user_id": user_id, "device_id": login.device_id, "access_token": login.tokens.access_token}

    async def room(self, creator: dict[str, str], *members: dict[str, str], **body: Any) -> str:
        body.setdefault("preset", "public_chat")
        result = await self.client.call("POST", "/createRoom", creator["access_token"], body)
        room_id: str = result["room_id"]
        for member in members:
            await self.client.call("POST", f"/join/{room_id}", member["access_token"], {})
        return room_id

    async def email_pusher(self, user: dict[str, str], address: str) -> None:
        body = {
            "kind": "email",
            "app_id": "m.email",
            "pushkey": address,
            "app_display_name": "Email",
            "device_display_name": address,
            "lang": "en",
            "data": {},
        }
        await self.client.call("POST", "/pushers/set", user["access_token"], body)

    async def send(self, user: dict[str, str], room_id: str, text: str, kind: str = "m.room.message") -> str:
        content = {"msgtype": "m.text", "body": text} if kind == "m.room.message" else {"ciphertext": text}
        path = f"{room_path(room_id)}/send/{kind}/{secrets.token_hex(4)}"
        event_id: str = (await self.client.call("PUT", path, user["access_token"], content))["event_id"]
        self.clock.advance(DELIVERY_GATHER_S)  # the delivery's gathering pause, on this clock
        return event_id

    async def read(self, user: dict[str, str], room_id: str, event_id: str) -> None:
        await self.client.call(
            "POST", f"{room_path(room_id)}/receipt/m.read/{event_id}", user["access_token"], {}
        )

    async def settled(self) -> None:
        """Until the plugin has taken in everything sent so far (its pending rows written)."""
        consumer = next(c for c in self.hs.stream.consumers() if c.name == "plugin.push.delivery")
        await until(lambda: consumer.position >= self.hs.stream.position, "events taken in")

    async def advance(self, seconds: float) -> None:
        await self.settled()
        self.clock.advance(seconds)
        for _ in range(20):  # let a mail that fell due go through the database and SMTP
            await turn()
        await until(lambda: not self.hs.plugins[0].email._sending, "mails sent")

    def mails(self, address: str) -> list[Mail]:
        return self.sink.to(address)

    async def close(self) -> None:
        await self.hs.stop(None)


async def start(
    tmp_path: Path, sink: MailSink, clock: TestClock | None = None, db_url: str | None = None
) -> Setup:
    clock = clock or TestClock()
    config = {"email_delay": "10m", "email_throttle": "1h", "email_client_url": CLIENT_URL}
    database = {"database": {"url": db_url}} if db_url else {}
    hs = await make_server(
        tmp_path,
        clock,
        plugins=[{"module": "plugins.push.PushPlugin", "config": config}],
        email={"sender": "Homeserver <noreply@fast.test>", "smtp": sink.smtp_config},
        encryption={"enabled_by_default_for_room_type": "off"},
        **database,
    )
    return Setup(hs, clock, sink)


def text(mail: Mail) -> str:
    return mail.text.replace("\r\n", "\n")  # SMTP's line ends


def _address(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}@example.org"


@pytest_twisted.ensureDeferred
async def test_an_unread_message_is_mailed_after_the_delay_with_its_sender_room_and_text(
    tmp_path: Path, sink: MailSink
) -> None:
    s = await start(tmp_path, sink)
    try:
        address = _address("bob")
        alice, bob = await s.user("alice"), await s.user("bob", address)
        room_id = await s.room(alice, bob, name="Book club")
        await s.email_pusher(bob, address)
        await s.send(alice, room_id, "see you at eight")
        await s.advance(DELAY_S - 1)
        assert s.mails(address) == []  # not before the delay
        await s.advance(1)
        await until(lambda: s.mails(address), "a mail")
        [mail] = s.mails(address)
        assert mail.subject == "[fast.test] 1 unread message in Book club"
        assert mail.message["From"] == "Homeserver <noreply@fast.test>"
        assert "Book club\n  alice: see you at eight\n" in text(mail)
        assert f"{CLIENT_URL}/#/room/{room_id}" in text(mail)
        await s.advance(THROTTLE_S * 2)
        assert len(s.mails(address)) == 1  # mailed once
        assert s.mails(alice["user_id"]) == []
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_room_read_before_the_delay_is_not_mailed(tmp_path: Path, sink: MailSink) -> None:
    s = await start(tmp_path, sink)
    try:
        address = _address("bob")
        alice, bob = await s.user("alice"), await s.user("bob", address)
        read_room = await s.room(alice, bob, name="Read")
        await s.email_pusher(bob, address)
        await s.send(alice, read_room, "first")
        last = await s.send(alice, read_room, "second")
        await s.advance(60)
        await s.read(bob, read_room, last)
        await s.advance(DELAY_S * 3)
        assert s.mails(address) == []
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_several_rooms_go_in_one_mail_and_only_their_unread_messages(
    tmp_path: Path, sink: MailSink
) -> None:
    s = await start(tmp_path, sink)
    try:
        address = _address("bob")
        alice, carol = await s.user("alice"), await s.user("carol")
        bob = await s.user("bob", address)
        await s.client.call(
            "PUT",
            f"/profile/{carol['user_id']}/displayname",
            carol["access_token"],
            {"displayname": "Carol C."},
        )
        garden = await s.room(alice, bob, name="Garden")
        kitchen = await s.room(carol, bob, name="Kitchen")
        read_room = await s.room(alice, bob, name="Already read")
        await s.email_pusher(bob, address)
        early = await s.send(alice, garden, "roses are out")
        await s.send(alice, read_room, "read me")
        await s.advance(120)
        await s.send(carol, kitchen, "dinner at 7?")
        await s.send(alice, garden, "and the tulips")
        seen = await s.send(alice, read_room, "read me too")
        await s.read(bob, read_room, seen)
        # Due 10 minutes after the oldest ("roses are out"): the later ones ride along.
        await s.advance(DELAY_S - 120)
        await until(lambda: s.mails(address), "a mail")
        [mail] = s.mails(address)
        assert mail.subject == "[fast.test] 3 unread messages in 2 rooms"
        assert "Garden\n  alice: roses are out\n  alice: and the tulips\n" in text(mail)
        assert "Kitchen\n  Carol C.: dinner at 7?\n" in text(mail)
        assert "Already read" not in text(mail) and "alice: read me" not in text(mail)
        assert early  # the oldest decided the time
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_mails_are_throttled_per_user(tmp_path: Path, sink: MailSink) -> None:
    s = await start(tmp_path, sink)
    try:
        address = _address("bob")
        alice, bob = await s.user("alice"), await s.user("bob", address)
        room_id = await s.room(alice, bob, name="Chatty")
        await s.email_pusher(bob, address)
        await s.send(alice, room_id, "one")
        await s.advance(DELAY_S)
        await until(lambda: s.mails(address), "the first mail")
        await s.send(alice, room_id, "two")
        await s.advance(DELAY_S)  # ten minutes after "two", but within the hour
        await s.send(alice, room_id, "three")
        await s.advance(THROTTLE_S - DELAY_S - 1)
        assert len(s.mails(address)) == 1
        await s.advance(1)  # an hour after the first mail
        await until(lambda: len(s.mails(address)) == 2, "the second mail")
        second = s.mails(address)[1]
        assert "  alice: two\n  alice: three\n" in text(second)
        assert "alice: one" not in text(second)  # mailed already
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_an_encrypted_room_carries_no_text(tmp_path: Path, sink: MailSink) -> None:
    s = await start(tmp_path, sink)
    try:
        address = _address("bob")
        alice, bob = await s.user("alice"), await s.user("bob", address)
        encryption = {
            "type": "m.room.encryption",
            "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"},
        }
        secret = await s.room(alice, bob, name="Secret plans", initial_state=[encryption])
        await s.email_pusher(bob, address)
        await s.send(alice, secret, "CIPHERTEXT-abc", kind="m.room.encrypted")
        await s.advance(DELAY_S)
        await until(lambda: s.mails(address), "a mail")
        [mail] = s.mails(address)
        assert "Secret plans\n  alice: an encrypted message\n" in text(mail)
        assert "CIPHERTEXT" not in mail.message.as_string()
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The plugin's tables on both engines (the restart test runs every query of them)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest_twisted.ensureDeferred
async def test_a_restart_keeps_the_pending_mail_and_sends_it_once(
    tmp_path: Path, sink: MailSink, db_url: str | None
) -> None:
    s = await start(tmp_path, sink, db_url=db_url)
    assert s.hs.config.database.url == (db_url or f"sqlite:///{tmp_path / 'hs.db'}")
    address = _address("bob")
    try:
        alice, bob = await s.user("alice"), await s.user("bob", address)
        room_id = await s.room(alice, bob, name="Durable")
        await s.email_pusher(bob, address)
        await s.send(alice, room_id, "still there after a restart")
        await s.advance(DELAY_S / 2)
    finally:
        await s.close()
    assert s.mails(address) == []
    s = await start(tmp_path, sink, TestClock(s.clock.seconds()), db_url)
    try:
        await s.advance(DELAY_S / 2 - 1)
        assert s.mails(address) == []  # the delay still counts from the message
        await s.advance(1)
        await until(lambda: s.mails(address), "a mail after the restart")
        assert "alice: still there after a restart" in text(s.mails(address)[0])
    finally:
        await s.close()
    s = await start(tmp_path, sink, TestClock(s.clock.seconds()), db_url)
    try:
        await s.advance(THROTTLE_S * 2)
        assert len(s.mails(address)) == 1  # not again after another restart
    finally:
        await s.close()
