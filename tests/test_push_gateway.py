"""The push gateway plugin (plugins.push.gateway) in a real server process, against local
endpoints that check what the real services check (tests/push_endpoints.py says what
each one checks): a Google OAuth token endpoint and an FCM v1 endpoint for firebase-admin,
and a Web Push service that verifies VAPID and decrypts the payload. No real FCM or
browser push service can be reached here; docs/push-gateway.md says what that leaves out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import firebase_admin
import pytest
import requests
from conftest import ServerProcess, start_server_process
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from push_endpoints import FcmV1, GoogleOAuth, WebPushService, start_fcm, vapid_key_file

from plugins.push.gateway.firebase_internals import fcm_url, prepare_messaging
from plugins.push.gateway.webpush import application_server_key

ROOT = Path(__file__).resolve().parents[1]
NOTIFY = "/_matrix/push/v1/notify"
GATEWAY = "plugins.push.gateway.PushGatewayPlugin"
FAST_RETRY = {"attempts": 3, "initial_delay": "10ms"}


@pytest.fixture
def fcm(tmp_path: Path) -> Iterator[tuple[GoogleOAuth, FcmV1, Path]]:
    oauth, fcm, account = start_fcm(tmp_path)
    yield oauth, fcm, account
    fcm.close()
    oauth.close()


@pytest.fixture
def push_service() -> Iterator[WebPushService]:
    service = WebPushService()
    yield service
    service.close()


def gateway_server(start_server: Callable[..., ServerProcess], config: dict[str, Any]) -> ServerProcess:
    return start_server({"plugins": [{"module": GATEWAY, "config": {"retry": FAST_RETRY, **config}}]})


def notification(devices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    base = {
        "event_id": "$3957tyerfgewrf384",
        "room_id": "!slw48wfj34rtnrf:example.org",
        "type": "m.room.message",
        "sender": "@exampleuser:example.org",
        "sender_display_name": "Major Tom",
        "room_name": "Mission Control",
        "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
        "counts": {"unread": 2, "missed_calls": 1},
    }
    return {"notification": {**base, **fields, "devices": devices}}


def notify(server: ServerProcess, body: Any) -> requests.Response:
    return requests.post(server.url(NOTIFY), json=body, timeout=30)


# FCM -------------------------------------------------------------------------------------


def test_fcm_delivers_data_message_and_rejects_unregistered_token(
    start_server: Callable[..., ServerProcess], fcm: tuple[GoogleOAuth, FcmV1, Path]
) -> None:
    oauth, endpoint, account = fcm
    server = gateway_server(
        start_server,
        {
            "apps": {
                "im.example.android": {
                    "kind": "fcm",
                    "service_account_file": str(account),
                    "endpoint": endpoint.base_url,
                }
            }
        },
    )
    endpoint.gone.add("token-of-uninstalled-app")
    body = notification(
        [
            {"app_id": "im.example.android", "pushkey": "token-live", "pushkey_ts": 12345678, "data": {}},
            {"app_id": "im.example.android", "pushkey": "token-of-uninstalled-app"},
        ]
    )
    r = notify(server, body)
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": ["token-of-uninstalled-app"]}
    # The token endpoint accepted the signed assertion; FCM accepted the message.
    assert oauth.issued and not oauth.refused
    [message] = endpoint.messages
    assert message["token"] == "token-live"
    assert message["android"]["priority"].upper() == "HIGH"
    data = message["data"]
    assert data["event_id"] == "$3957tyerfgewrf384"
    assert data["room_id"] == "!slw48wfj34rtnrf:example.org"
    assert data["sender_display_name"] == "Major Tom"
    assert data["unread"] == "2" and data["missed_calls"] == "1"
    assert '"body":"I\'m floating in a most peculiar way."' in data["content"]
    assert all(isinstance(v, str) for v in data.values())


def test_fcm_sends_no_content_of_encrypted_event_and_normal_priority_for_low(
    start_server: Callable[..., ServerProcess], fcm: tuple[GoogleOAuth, FcmV1, Path]
) -> None:
    _, endpoint, account = fcm
    server = gateway_server(
        start_server,
        {
            "apps": {
                "app.fcm": {
                    "kind": "fcm",
                    "service_account_file": str(account),
                    "endpoint": endpoint.base_url,
                }
            }
        },
    )
    # A homeserver should not send it, but if one does the gateway does not pass it on.
    body = notification(
        [{"app_id": "app.fcm", "pushkey": "t1"}],
        type="m.room.encrypted",
        prio="low",
        content={"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAC..."},
    )
    r = notify(server, body)
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": []}
    [message] = endpoint.messages
    assert "content" not in message["data"]
    assert "AwgAEnAC" not in str(message)
    assert message["android"]["priority"].upper() == "NORMAL"
    assert message["data"]["type"] == "m.room.encrypted"


def test_fcm_invalid_token_rejected_and_unavailable_retried_then_502(
    start_server: Callable[..., ServerProcess], fcm: tuple[GoogleOAuth, FcmV1, Path]
) -> None:
    _, endpoint, account = fcm
    server = gateway_server(
        start_server,
        {
            "apps": {
                "app.fcm": {
                    "kind": "fcm",
                    "service_account_file": str(account),
                    "endpoint": endpoint.base_url,
                }
            }
        },
    )
    endpoint.invalid.add("not-a-token")
    r = notify(server, notification([{"app_id": "app.fcm", "pushkey": "not-a-token"}]))
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": ["not-a-token"]}

    # Two 503s, then FCM is back: the third try delivers.
    endpoint.fail_next = 2
    before = endpoint.requests
    r = notify(server, notification([{"app_id": "app.fcm", "pushkey": "t-retry"}]))
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": []}
    assert endpoint.requests - before == 3
    assert [m["token"] for m in endpoint.messages] == ["t-retry"]

    # Down for longer than the tries: 502, so the homeserver sends it again later.
    endpoint.fail_next = 3
    before = endpoint.requests
    r = notify(server, notification([{"app_id": "app.fcm", "pushkey": "t-down"}]))
    assert r.status_code == 502, r.text
    assert r.json()["errcode"] == "M_UNKNOWN"
    assert endpoint.requests - before == 3


def test_unknown_app_id_is_rejected(start_server: Callable[..., ServerProcess]) -> None:
    server = gateway_server(start_server, {"apps": {}})
    r = notify(server, notification([{"app_id": "com.example.unknown", "pushkey": "abc"}]))
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": ["abc"]}


# Not in the fast tier: deleting a firebase-admin app runs an asyncio loop (a socketpair).
def test_firebase_internals_the_gateway_relies_on_are_there(tmp_path: Path) -> None:
    """firebase_internals.py sets two private attributes of firebase-admin: this fails if
    the pinned version changes or an upgrade renames them."""
    pins = ConfigParser()
    pins.read(ROOT / "setup.cfg")
    assert "firebase-admin==7.7.0" in pins["options"]["install_requires"].split()
    assert firebase_admin.__version__ == "7.7.0"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    account = tmp_path / "sa.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj",
                "private_key_id": "k1",
                "private_key": pem.decode(),
                "client_email": "sa@proj.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    app = firebase_admin.initialize_app(firebase_admin.credentials.Certificate(str(account)), name="guard")
    try:
        assert fcm_url(app) == "https://fcm.googleapis.com/v1/projects/proj/messages:send"
        prepare_messaging(app, "http://127.0.0.1:9")
        assert fcm_url(app) == "http://127.0.0.1:9/v1/projects/proj/messages:send"
        adapter = firebase_admin.messaging._get_messaging_service(app)._client.session.get_adapter(
            fcm_url(app)
        )
        assert adapter.max_retries.total == 0
    finally:
        firebase_admin.delete_app(app)


# Bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        (b"not json", "M_NOT_JSON"),
        (b"[]", "M_BAD_JSON"),
        (b"{}", "M_MISSING_PARAM"),
        (b'{"notification": "x"}', "M_BAD_JSON"),
        (b'{"notification": {}}', "M_MISSING_PARAM"),
        (b'{"notification": {"devices": []}}', "M_BAD_JSON"),
        (b'{"notification": {"devices": [{"app_id": "a"}]}}', "M_MISSING_PARAM"),
        (b'{"notification": {"devices": [{"app_id": 5, "pushkey": "k"}]}}', "M_BAD_JSON"),
        (b'{"notification": {"devices": ["x"]}}', "M_BAD_JSON"),
        (b'{"notification": {"prio": "urgent", "devices": [{"app_id": "a", "pushkey": "k"}]}}', "M_BAD_JSON"),
        (
            b'{"notification": {"counts": {"unread": "2"}, "devices": [{"app_id": "a", "pushkey": "k"}]}}',
            "M_BAD_JSON",
        ),
        (b'{"notification": {"content": [], "devices": [{"app_id": "a", "pushkey": "k"}]}}', "M_BAD_JSON"),
        (b'{"notification": {"devices": [{"app_id": "a", "pushkey": "k", "data": 3}]}}', "M_BAD_JSON"),
    ],
)
def test_malformed_notify_bodies_get_400(body: bytes, errcode: str, gateway_only: ServerProcess) -> None:
    r = requests.post(gateway_only.url(NOTIFY), data=body, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["errcode"] == errcode


@pytest.fixture(scope="module")
def gateway_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server_process(
        tmp_path_factory.mktemp("gw"),
        {"plugins": [{"module": GATEWAY, "config": {"apps": {}, "max_body_size": "8K"}}]},
    )
    yield server
    server.stop()


def test_oversized_notify_body_gets_413(gateway_only: ServerProcess) -> None:
    devices = [{"app_id": "a", "pushkey": f"k{i}" * 20} for i in range(200)]
    r = notify(gateway_only, notification(devices))
    assert r.status_code == 413, r.text
    assert r.json()["errcode"] == "M_TOO_LARGE"


def test_notify_needs_post(gateway_only: ServerProcess) -> None:
    r = requests.get(gateway_only.url(NOTIFY), timeout=10)
    assert r.status_code in (404, 405)
    assert r.json()["errcode"] == "M_UNRECOGNIZED"


# Web Push -------------------------------------------------------------------------------


def webpush_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path, **extra: Any
) -> tuple[ServerProcess, str]:
    key_path, key = vapid_key_file(tmp_path)
    app = {
        "kind": "webpush",
        "vapid_private_key": str(key_path),
        "vapid_contact": "mailto:ops@example.test",
        **extra,
    }
    server = gateway_server(
        start_server,
        {"apps": {"im.example.web": app}, "outbound": {"ip_range_whitelist": ["127.0.0.1/32"]}},
    )
    return server, application_server_key(key)


def test_webpush_payload_decrypts_with_subscription_key_and_vapid_verifies(
    start_server: Callable[..., ServerProcess], push_service: WebPushService, tmp_path: Path
) -> None:
    server, public_key = webpush_server(start_server, tmp_path, ttl="2h", low_priority_ttl="10m")
    sub = push_service.subscribe()
    device = {
        "app_id": "im.example.web",
        "pushkey": sub.p256dh,
        "data": {**sub.pusher_data(), "default_payload": {"v": 1}},
    }
    r = notify(server, notification([device], room_name="Café ☕"))
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": []}
    assert not push_service.refused
    [delivery] = push_service.deliveries
    assert delivery.payload["event_id"] == "$3957tyerfgewrf384"
    assert delivery.payload["room_name"] == "Café ☕"
    assert delivery.payload["unread"] == 2
    assert delivery.payload["content"]["body"] == "I'm floating in a most peculiar way."
    assert delivery.payload["v"] == 1
    assert delivery.urgency == "high" and delivery.ttl == 7200
    assert delivery.vapid_claims["sub"] == "mailto:ops@example.test"
    assert delivery.vapid_key == public_key

    r = notify(
        server, notification([device], prio="low", type="m.room.encrypted", content={"ciphertext": "x"})
    )
    assert r.status_code == 200, r.text
    low = push_service.deliveries[1]
    assert low.urgency == "normal" and low.ttl == 600
    assert "content" not in low.payload


def test_web_clients_get_the_webpush_public_key_when_signed_in(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server, public_key = webpush_server(start_server, tmp_path)
    url = server.url("/_plugins/push_gateway/webpush")
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["errcode"] == "M_MISSING_TOKEN"
    token = server.register("webpushuser")["access_token"]
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "apps": [{"app_id": "im.example.web", "application_server_key": public_key}],
        "notify_path": "/_matrix/push/v1/notify",
    }


def test_webpush_gone_subscription_and_incomplete_pusher_are_rejected(
    start_server: Callable[..., ServerProcess], push_service: WebPushService, tmp_path: Path
) -> None:
    server, _ = webpush_server(start_server, tmp_path)
    live, expired, unknown = push_service.subscribe(), push_service.subscribe(), push_service.subscribe()
    push_service.gone.add(expired.endpoint.rsplit("/", 1)[1])  # 410
    del push_service.subscriptions[unknown.endpoint.rsplit("/", 1)[1]]  # 404
    devices = [
        {"app_id": "im.example.web", "pushkey": s.p256dh, "data": s.pusher_data()}
        for s in (live, expired, unknown)
    ]
    devices.append({"app_id": "im.example.web", "pushkey": "no-endpoint", "data": {}})
    r = notify(server, notification(devices))
    assert r.status_code == 200, r.text
    assert sorted(r.json()["rejected"]) == sorted([expired.p256dh, unknown.p256dh, "no-endpoint"])
    assert [d.subscription_id for d in push_service.deliveries] == [live.endpoint.rsplit("/", 1)[1]]


def test_webpush_endpoint_on_loopback_is_rejected_without_whitelist(
    start_server: Callable[..., ServerProcess], push_service: WebPushService, tmp_path: Path
) -> None:
    key_path, _ = vapid_key_file(tmp_path)
    app = {"kind": "webpush", "vapid_private_key": str(key_path), "vapid_contact": "mailto:ops@example.test"}
    server = gateway_server(start_server, {"apps": {"web": app}})
    sub = push_service.subscribe()
    r = notify(server, notification([{"app_id": "web", "pushkey": sub.p256dh, "data": sub.pusher_data()}]))
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": [sub.p256dh]}
    assert push_service.deliveries == []


# Forwarding -----------------------------------------------------------------------------


def test_forward_passes_notification_on_and_its_rejected_back(
    start_server: Callable[..., ServerProcess], fcm: tuple[GoogleOAuth, FcmV1, Path]
) -> None:
    _, endpoint, account = fcm
    upstream = gateway_server(
        start_server,
        {
            "apps": {
                "app.fcm": {
                    "kind": "fcm",
                    "service_account_file": str(account),
                    "endpoint": endpoint.base_url,
                }
            }
        },
    )
    forwarder = gateway_server(
        start_server,
        {
            "apps": {"app.fcm": {"kind": "forward", "url": upstream.url(NOTIFY)}},
            "outbound": {"ip_range_whitelist": ["127.0.0.1/32"]},
        },
    )
    endpoint.gone.add("gone-token")
    r = notify(
        forwarder,
        notification(
            [{"app_id": "app.fcm", "pushkey": "live-token"}, {"app_id": "app.fcm", "pushkey": "gone-token"}]
        ),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": ["gone-token"]}
    [message] = endpoint.messages
    assert message["token"] == "live-token" and message["data"]["room_name"] == "Mission Control"


def test_forward_to_loopback_refused_without_whitelist(start_server: Callable[..., ServerProcess]) -> None:
    upstream = gateway_server(start_server, {"apps": {}})
    forwarder = gateway_server(
        start_server, {"apps": {"fwd": {"kind": "forward", "url": upstream.url(NOTIFY)}}}
    )
    r = notify(forwarder, notification([{"app_id": "fwd", "pushkey": "k"}]))
    assert r.status_code == 502, r.text
    assert (
        "[push_gateway]" in forwarder.log_text()
        or "loopback" in forwarder.log_text()
        or "may not reach" in forwarder.log_text()
    )


def test_a_counts_only_badge_update_is_a_data_message_on_fcm_and_nothing_on_webpush(
    start_server: Callable[..., ServerProcess],
    fcm: tuple[GoogleOAuth, FcmV1, Path],
    push_service: WebPushService,
    tmp_path: Path,
) -> None:
    """A homeserver's badge update after a read receipt (docs/push.md "Badges"): no event,
    only counts. FCM: a data message with the count, normal priority, nothing to show
    (the app sets its badge). Web Push: not sent (each push must show a notification)."""
    _, endpoint, account = fcm
    key_path, _ = vapid_key_file(tmp_path)
    apps = {
        "im.example.android": {
            "kind": "fcm",
            "service_account_file": str(account),
            "endpoint": endpoint.base_url,
        },
        "im.example.web": {
            "kind": "webpush",
            "vapid_private_key": str(key_path),
            "vapid_contact": "mailto:ops@example.test",
        },
    }
    server = gateway_server(
        start_server, {"apps": apps, "outbound": {"ip_range_whitelist": ["127.0.0.1/32"]}}
    )
    sub = push_service.subscribe()
    devices = [
        {"app_id": "im.example.android", "pushkey": "token-live", "data": {}, "tweaks": {}},
        {"app_id": "im.example.web", "pushkey": sub.p256dh, "data": sub.pusher_data(), "tweaks": {}},
    ]
    r = notify(server, {"notification": {"prio": "low", "counts": {"unread": 0}, "devices": devices}})
    assert r.status_code == 200, r.text
    assert r.json() == {"rejected": []}
    [message] = endpoint.messages
    assert message["data"] == {"prio": "low", "unread": "0"}
    assert message["android"]["priority"].upper() == "NORMAL"
    assert "notification" not in message
    assert push_service.deliveries == [] and not push_service.refused
