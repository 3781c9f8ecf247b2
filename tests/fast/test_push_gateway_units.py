"""The push gateway's pure parts (plugins.push.gateway): its config, the notify body, the
FCM and Web Push payloads, the outgoing-address policy, VAPID, and the retry schedule on
a test Clock. The services themselves are exercised in tests/test_push_gateway.py."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from push_endpoints import rfc8291_decrypt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from homeserver.plugins import MatrixError, PluginConfigError
from plugins.push.gateway.config import FcmApp, ForwardApp, RetryPolicy, WebPushApp, parse_gateway_config
from plugins.push.gateway.dispatch import Failed, Gateway, TryAgain, with_retries
from plugins.push.gateway.fcm import MAX_DATA_BYTES, fcm_data, fcm_message
from plugins.push.gateway.notification import Device, Notification, parse_notify_body
from plugins.push.gateway.outbound import IpPolicy
from plugins.push.gateway.vapid import main as vapid_main
from plugins.push.gateway.webpush import (
    MAX_PLAINTEXT,
    application_server_key,
    encrypt,
    load_vapid_key,
    vapid_header,
    webpush_payload,
)


def note(devices: list[dict[str, Any]] | None = None, **fields: Any) -> Notification:
    body = {
        "event_id": "$e",
        "room_id": "!r:example.org",
        "type": "m.room.message",
        "sender": "@a:example.org",
        "content": {"msgtype": "m.text", "body": "hello"},
        "counts": {"unread": 3},
        **fields,
        "devices": devices or [{"app_id": "app", "pushkey": "key"}],
    }
    return parse_notify_body({"notification": body})


# Config ------------------------------------------------------------------------------------


def test_config_parses_each_kind(tmp_path: Path) -> None:
    account = tmp_path / "sa.json"
    account.write_text("{}")
    pem = tmp_path / "vapid.pem"
    pem.write_text("x")
    config = parse_gateway_config(
        {
            "apps": {
                "a.fcm": {"kind": "fcm", "service_account_file": str(account)},
                "a.web": {
                    "kind": "webpush",
                    "vapid_private_key": str(pem),
                    "vapid_contact": "mailto:o@x.org",
                    "ttl": "2h",
                    "allowed_endpoints": ["*.push.services.mozilla.com"],
                },
                "a.fwd": {"kind": "forward", "url": "https://push.example.org/_matrix/push/v1/notify"},
            },
            "timeout": "5s",
            "retry": {"attempts": 5, "initial_delay": "200ms"},
            "outbound": {"ip_range_whitelist": ["10.0.0.0/8"]},
        }
    )
    assert config.apps["a.fcm"] == FcmApp(account, None)
    web = config.apps["a.web"]
    assert isinstance(web, WebPushApp) and web.ttl_ms == 7_200_000 and web.low_priority_ttl_ms == 3_600_000
    assert config.apps["a.fwd"] == ForwardApp("https://push.example.org/_matrix/push/v1/notify")
    assert config.timeout_ms == 5000 and config.retry == RetryPolicy(5, 200)
    assert config.ip_range_whitelist == (ipaddress.ip_network("10.0.0.0/8"),)
    assert parse_gateway_config({}).apps == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"app": {}}, "unknown key"),
        ({"apps": []}, "must be a mapping"),
        ({"apps": {"a b": {"kind": "forward", "url": "https://x.org/"}}}, "not an app id"),
        ({"apps": {"a": {"kind": "apns"}}}, "must be fcm, webpush or forward"),
        ({"apps": {"a": {"kind": "fcm", "service_account_file": "/nonexistent.json"}}}, "no file"),
        ({"apps": {"a": {"kind": "forward", "url": "ftp://x.org/"}}}, "http(s) URL"),
        ({"apps": {"a": {"kind": "forward", "url": "https://x.org/", "extra": 1}}}, "unknown key"),
        ({"retry": {"attempts": 0}}, "at least 1"),
        ({"timeout": "soon"}, "duration"),
        ({"outbound": {"ip_range_whitelist": ["not-a-range"]}}, "not an IP range"),
    ],
)
def test_config_refuses_bad_blocks(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginConfigError, match=re.escape(message)):
        parse_gateway_config(raw)


def test_config_refuses_a_vapid_contact_that_is_no_uri(tmp_path: Path) -> None:
    pem = tmp_path / "k.pem"
    pem.write_text("x")
    with pytest.raises(PluginConfigError, match="mailto: or https:"):
        parse_gateway_config(
            {"apps": {"w": {"kind": "webpush", "vapid_private_key": str(pem), "vapid_contact": "ops@x.org"}}}
        )


# The notify body ----------------------------------------------------------------------------


def test_notify_body_keeps_fields_it_does_not_know_and_checks_those_it_does() -> None:
    n = note(future_field={"x": 1})
    assert n.fields["future_field"] == {"x": 1} and n.prio == "high"
    assert n.body_for(list(n.devices))["notification"]["future_field"] == {"x": 1}
    with pytest.raises(MatrixError) as e:
        note([{"app_id": "app", "pushkey": "k" * 513}])
    assert e.value.status == 400 and e.value.errcode == "M_BAD_JSON"
    with pytest.raises(MatrixError):
        note(user_is_target="yes")
    with pytest.raises(MatrixError):
        note(counts={"unread": -1})


# FCM ------------------------------------------------------------------------------------------


def test_fcm_data_is_all_strings_with_defaults_first() -> None:
    device = {
        "app_id": "app",
        "pushkey": "tok",
        "data": {"default_payload": {"channel": 7, "event_id": "old", "from": "x", "google.c": "y"}},
    }
    n = note([device], user_is_target=True, prio="low")
    data = fcm_data(n, n.devices[0])
    assert data["event_id"] == "$e" and data["channel"] == "7" and data["user_is_target"] == "true"
    assert data["unread"] == "3" and data["prio"] == "low"
    assert json.loads(data["content"]) == {"msgtype": "m.text", "body": "hello"}
    assert all(isinstance(v, str) for v in data.values())
    assert "from" not in data and "google.c" not in data  # FCM refuses reserved keys
    message = fcm_message(n, n.devices[0])
    assert message.token == "tok" and message.android.priority == "normal"


def test_fcm_data_never_has_encrypted_content_and_fits_the_limit() -> None:
    n = note(type="m.room.encrypted", content={"ciphertext": "secret"})
    assert "content" not in fcm_data(n, n.devices[0])
    big = note(content={"body": "x" * 5000}, room_name="r" * 100)
    data = fcm_data(big, big.devices[0])
    assert "content" not in data and data["room_name"] == "r" * 100
    assert sum(len(k) + len(v) for k, v in data.items()) <= MAX_DATA_BYTES


# Web Push ---------------------------------------------------------------------------------------


def test_webpush_payload_fits_one_record_and_skips_encrypted_content() -> None:
    n = note(content={"body": "y" * 5000}, sender_display_name="Zoë")
    payload = json.loads(webpush_payload(n, n.devices[0]))
    assert "content" not in payload and payload["sender_display_name"] == "Zoë" and payload["unread"] == 3
    assert len(webpush_payload(n, n.devices[0])) <= MAX_PLAINTEXT
    enc = note(type="m.room.encrypted", content={"ciphertext": "secret"})
    assert "content" not in json.loads(webpush_payload(enc, enc.devices[0]))


def test_vapid_header_signs_origin_and_expiry_with_the_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    header = vapid_header(key, "https://push.example.net:8443/wpush/v2/abc?x=1", "mailto:o@x.org", now=1000.0)
    m = re.fullmatch(r"vapid t=(\S+), k=(\S+)", header)
    assert m is not None and m.group(2) == application_server_key(key)
    claims = jwt.decode(
        m.group(1),
        key.public_key(),
        algorithms=["ES256"],
        audience="https://push.example.net:8443",
        options={"verify_exp": False},
    )
    assert claims == {
        "aud": "https://push.example.net:8443",
        "exp": 1000 + 12 * 3600,
        "sub": "mailto:o@x.org",
    }


# Outgoing addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.5", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("64:ff9b::a00:1", True),
        ("fc00::1", True),
        ("0.0.0.0", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
    ],
)
def test_outgoing_policy_blocks_internal_addresses(address: str, blocked: bool) -> None:
    assert IpPolicy().blocks(ipaddress.ip_address(address)) is blocked


def test_outgoing_policy_whitelist_wins_and_blacklist_adds() -> None:
    policy = IpPolicy(
        blacklist=(ipaddress.ip_network("8.8.8.0/24"),), whitelist=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    assert not policy.blocks(ipaddress.ip_address("127.0.0.1"))
    assert policy.blocks(ipaddress.ip_address("127.0.0.2"))
    assert policy.blocks(ipaddress.ip_address("8.8.8.8"))


# Retries and routing --------------------------------------------------------------------------------


def test_retries_wait_doubling_delays_on_the_clock_then_fail() -> None:
    clock = Clock()
    tries: list[float] = []

    async def attempt() -> str:
        tries.append(clock.seconds())
        raise TryAgain("503")

    d = Deferred.fromCoroutine(with_retries(clock, RetryPolicy(attempts=3, initial_delay_ms=1000), attempt))
    assert tries == [0]
    clock.advance(0.999)
    assert tries == [0]
    clock.advance(0.001)
    assert tries == [0, 1.0]
    clock.advance(1.999)
    assert tries == [0, 1.0]
    clock.advance(0.001)
    assert tries == [0, 1.0, 3.0]
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(Failed)


def test_retries_stop_at_the_first_success_or_a_permanent_failure() -> None:
    clock = Clock()
    answers: list[Any] = [TryAgain("503"), "sent"]

    async def attempt() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    results: list[Any] = []
    Deferred.fromCoroutine(with_retries(clock, RetryPolicy(3, 500), attempt)).addBoth(results.append)
    clock.advance(0.5)
    assert results == ["sent"]

    async def refused() -> str:
        raise Failed("400")

    Deferred.fromCoroutine(with_retries(clock, RetryPolicy(3, 500), refused)).addBoth(results.append)
    assert results[1].check(Failed) and clock.getDelayedCalls() == []


class OneApp:
    """A sender for the routing test: rejects pushkeys starting with "gone", fails on "down"."""

    async def send(self, notification: Notification, devices: list[Device]) -> list[str]:
        if any(d.pushkey == "down" for d in devices):
            raise Failed("upstream down")
        return [d.pushkey for d in devices if d.pushkey.startswith("gone")]


def test_gateway_rejects_unknown_apps_and_answers_502_when_an_app_failed() -> None:
    gateway = Gateway({"known": OneApp()})
    n = note(
        [
            {"app_id": "known", "pushkey": "live"},
            {"app_id": "known", "pushkey": "gone-1"},
            {"app_id": "other", "pushkey": "k-other"},
        ]
    )
    results: list[Any] = []
    Deferred.fromCoroutine(gateway.notify(n)).addBoth(results.append)
    assert sorted(results[0]) == ["gone-1", "k-other"]
    Deferred.fromCoroutine(gateway.notify(note([{"app_id": "known", "pushkey": "down"}]))).addBoth(
        results.append
    )
    assert results[1].check(MatrixError) and results[1].value.status == 502


def test_vapid_key_tool_writes_a_private_key_once_and_prints_its_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "vapid.pem"
    assert vapid_main([str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    key = load_vapid_key(path)
    assert printed == application_server_key(key) and len(printed) == 87  # 65 bytes, base64url
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    assert vapid_main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == printed and path.read_bytes() == before
    assert vapid_main([]) == 2


def test_webpush_encryption_opens_with_the_subscription_key_only() -> None:
    """RFC 8291: decrypted by tests/push_endpoints.py's own implementation, not http_ece."""
    browser = ec.generate_private_key(ec.SECP256R1())
    p256dh = browser.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    auth = bytes(range(16))
    body = encrypt('{"body":"héllo"}'.encode(), p256dh, auth)
    assert rfc8291_decrypt(body, browser, auth) == '{"body":"héllo"}'.encode()
    assert encrypt(b"x", p256dh, auth)[:16] != encrypt(b"x", p256dh, auth)[:16]  # a fresh salt each time
    with pytest.raises(InvalidTag):
        rfc8291_decrypt(body, ec.generate_private_key(ec.SECP256R1()), auth)
    with pytest.raises(InvalidTag):
        rfc8291_decrypt(body, browser, bytes(16))
