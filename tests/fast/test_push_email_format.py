"""Pure parts of email notifications: the mail's text (plugins/push/email_format.py) and
the plugin's email config keys."""

from __future__ import annotations

import pytest

from homeserver.plugins import PluginConfigError
from plugins.push.config import parse_delivery_config
from plugins.push.email_format import MailedMessage, MailedRoom, body, message_text, subject

BOB = "@bob:example.org"


def text_event(text: str, kind: str = "m.room.message") -> dict[str, object]:
    return {"type": kind, "sender": "@alice:example.org", "content": {"msgtype": "m.text", "body": text}}


def test_the_text_of_a_message_but_never_in_an_encrypted_room() -> None:
    plain = MailedMessage("alice", text_event("line one\nline two"))
    assert message_text(plain, False, BOB) == "line one line two"
    assert message_text(plain, True, BOB) == "an encrypted message"
    # An m.room.encrypted event in a room without encryption state says no more.
    assert message_text(MailedMessage("alice", text_event("x", "m.room.encrypted")), False, BOB) == (
        "an encrypted message"
    )
    redacted = {"type": "m.room.message", "sender": "@alice:example.org", "content": {}}
    assert message_text(MailedMessage("alice", redacted), False, BOB) == "a message"
    assert message_text(MailedMessage("alice", None), False, BOB) == "a message"  # hidden meanwhile
    invite = {"type": "m.room.member", "state_key": BOB, "content": {"membership": "invite"}}
    assert message_text(MailedMessage("alice", invite), False, BOB) == "invited you"
    long = message_text(MailedMessage("alice", text_event("x" * 1000)), False, BOB)
    assert len(long) == 300 and long.endswith("…")


def test_subject_and_body_list_every_room() -> None:
    rooms = [
        MailedRoom("!a:example.org", "Garden", False, [MailedMessage("alice", text_event("roses"))]),
        MailedRoom("!b:example.org", None, True, [MailedMessage("carol", text_event("secret"))] * 2),
    ]
    assert subject("example.org", rooms) == "[example.org] 3 unread messages in 2 rooms"
    assert subject("example.org", rooms[:1]) == "[example.org] 1 unread message in Garden"
    text = body("example.org", BOB, "bob@example.org", rooms, "https://app.example.org")
    assert "Garden\n  alice: roses\n  Open: https://app.example.org/#/room/!a:example.org\n" in text
    assert "A conversation with carol\n  carol: an encrypted message\n  carol: an encrypted message\n" in text
    assert "secret" not in text
    assert "Open:" not in body("example.org", BOB, "bob@example.org", rooms, None)


def test_email_config_keys() -> None:
    config = parse_delivery_config(
        {"email_delay": "5m", "email_throttle": "2h", "email_client_url": "https://app.example.org/"}
    )
    assert (config.email_delay_s, config.email_throttle_s) == (300, 7200)
    assert config.email_client_url == "https://app.example.org"
    assert parse_delivery_config({}).email_client_url is None
    for bad in ({"email_delay": "0s"}, {"email_client_url": "app.example.org"}, {"email_client_url": 3},
                {"email_client_url": "https://app.example.org/?x=1"}, {"email_throttle": "soon"}):  # fmt: skip
        with pytest.raises(PluginConfigError):
            parse_delivery_config(bad)
