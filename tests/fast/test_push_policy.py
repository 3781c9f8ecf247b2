"""Pure parts of push delivery: which addresses a pusher may reach (server-side request
forgery, DNS rebinding), and the gateway request's shape and priority."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address

from homeserver.core.push_addresses import is_public_address
from homeserver.plugins import PushDecision, Pusher
from plugins.push.delivery_format import EventFacts, notify_body, priority
from plugins.push.delivery_http import PolicyResolver


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::a00:1", False),  # NAT64 around 10.0.0.1
        ("2002:0a00:0001::1", False),  # 6to4 around 10.0.0.1
        ("not an address", False),
    ],
)
def test_only_public_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


class FakeResolver:
    """A resolver whose answers the test sets: a name that rebinds from one call to the next."""

    def __init__(self, answers: list[list[Any]]) -> None:
        self.answers = answers

    def resolveHostName(self, receiver: Any, host: str, port: int = 0, *rest: Any) -> Any:  # noqa: N802
        receiver.resolutionBegan(None)
        for address in self.answers.pop(0):
            receiver.addressResolved(address)
        receiver.resolutionComplete()
        return receiver


class Receiver:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:  # noqa: N802
        pass

    def addressResolved(self, address: Any) -> None:  # noqa: N802
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:  # noqa: N802
        self.complete = True


def test_a_name_that_rebinds_to_a_private_address_reaches_nothing() -> None:
    public = IPv4Address("TCP", "93.184.216.34", 443)
    resolver = PolicyResolver(
        FakeResolver(
            [
                [public],
                [IPv4Address("TCP", "127.0.0.1", 443), IPv6Address("TCP", "::1", 443)],
                [IPv4Address("TCP", "10.0.0.7", 443), public],
            ]
        ),
        is_public_address,
    )
    first, second, third = Receiver(), Receiver(), Receiver()
    resolver.resolveHostName(first, "push.example.org", 443)
    assert first.addresses == ["93.184.216.34"] and first.complete
    assert resolver.refused_hosts == set()
    # The same name now resolves to loopback: the connection gets no address at all.
    resolver.resolveHostName(second, "push.example.org", 443)
    assert second.addresses == [] and second.complete
    assert resolver.refused_hosts == {"push.example.org"}
    # Mixed answers: only the public address is passed on.
    resolver.resolveHostName(third, "push.example.org", 443)
    assert third.addresses == ["93.184.216.34"]


def pusher(**data: Any) -> Pusher:
    return Pusher(
        "p1", "@bob:x", "PHONE", "http", "org.example.app", "key", 1_800_000_000, "Example", "Phone",
        None, "en", {"url": "https://push.example.org/_matrix/push/v1/notify", **data},
    )  # fmt: skip


MESSAGE = {
    "event_id": "$e",
    "room_id": "!r:x",
    "type": "m.room.message",
    "sender": "@alice:x",
    "content": {"msgtype": "m.text", "body": "hi"},
}


def test_priority_is_high_for_sound_invites_and_calls_only() -> None:
    quiet = PushDecision("@bob:x", False, {})
    assert priority(MESSAGE, quiet) == "low"
    assert priority(MESSAGE, PushDecision("@bob:x", True, {"highlight": True})) == "low"
    assert priority(MESSAGE, PushDecision("@bob:x", False, {"sound": "default"})) == "high"
    assert priority({**MESSAGE, "type": "m.call.invite"}, quiet) == "high"
    invite = {"type": "m.room.member", "state_key": "@bob:x", "content": {"membership": "invite"}}
    assert priority(invite, quiet) == "high"
    assert priority({**invite, "state_key": "@carol:x"}, quiet) == "low"


def test_an_encrypted_event_never_carries_its_content_whatever_the_format() -> None:
    encrypted = {**MESSAGE, "type": "m.room.encrypted", "content": {"ciphertext": "SECRET"}}
    facts = EventFacts(room_encrypted=False, room_name="Room", sender_display_name="Alice")
    body = notify_body(encrypted, pusher(), PushDecision("@bob:x", False, {}), facts, 3)
    assert "SECRET" not in str(body) and "Alice" not in str(body)
    assert body["notification"]["counts"] == {"unread": 3}
    full = notify_body(MESSAGE, pusher(), PushDecision("@bob:x", False, {}), facts, 3)["notification"]
    assert full["content"] == MESSAGE["content"] and full["sender_display_name"] == "Alice"
    assert full["devices"][0]["data"] == {}  # the URL is the gateway's own business
