"""The web client's notifications and installable app (docs/web-client.md, "Notifications").

In Chromium (tests/browser/web_push.mjs): the manifest, icon and service worker are served
with their types; the worker takes the page; "Notify me" registers a pusher for the
browser's subscription with the gateway's VAPID key; the chat menu's settings become push
rules; a push shows "New message in <chat>". At the end, with the server stopped, the same
browser profile opens the app from the service worker's cache (tests/browser/web_offline.mjs).

Then, with the browser gone (no device online to suppress pushes), the server's pushes
for the chats go through the push plugin and the push gateway to a local push endpoint
that checks the VAPID signature and decrypts the payload (tests/push_endpoints.py, as a
browser's push service would): nothing for the muted chat, only the mention in the
mentions-only chat, everything in a chat left at "All messages".

Chromium's real PushManager.subscribe needs Google's push service, which cannot be
reached here: the page gets the local endpoint's subscription from a stub instead.
Not in the fast tier; the browser part takes about 30 s.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from browser import built_web_client, run_browser_script
from conftest import ServerProcess
from push_endpoints import WebPushService, vapid_key_file

PASSWORD = "correct horse battery"
CLIENT = "/_matrix/client/v3"
APP_ID = "im.example.web"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture
def push_service() -> Iterator[WebPushService]:
    service = WebPushService()
    yield service
    service.close()


def call(server: ServerProcess, token: str, method: str, path: str, body: Any = None) -> Any:
    r = requests.request(
        method, server.url(CLIENT + path), json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()


def chat(server: ServerProcess, bob: str, alice_token: str, alice_id: str, name: str) -> str:
    room_id: str = call(server, bob, "POST", "/createRoom", {"name": name, "invite": [alice_id]})["room_id"]
    call(server, alice_token, "POST", f"/join/{quote(room_id)}", {})
    return room_id


def test_notifications_and_the_installable_app(
    start_server: Any, push_service: WebPushService, tmp_path: Path
) -> None:
    dist = built_web_client()
    key_path, _ = vapid_key_file(tmp_path)
    webpush = {
        "kind": "webpush",
        "vapid_private_key": str(key_path),
        "vapid_contact": "mailto:ops@example.test",
    }
    server: ServerProcess = start_server(
        {
            "web_client": {"enabled": True, "path": str(dist)},
            "pushers": {"allow_private_addresses": True},
            "plugins": [
                {"module": "plugins.push.PushPlugin", "config": {"ack_wait": "1s", "retry_min": "1s"}},
                {
                    "module": "plugins.push.gateway.PushGatewayPlugin",
                    "config": {
                        "apps": {APP_ID: webpush},
                        "outbound": {"ip_range_whitelist": ["127.0.0.1/32"]},
                    },
                },
            ],
        }
    )
    alice, bob = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
    alice_login = server.register(alice, PASSWORD)
    alice_id, alice_token = alice_login["user_id"], alice_login["access_token"]
    bob_token = server.register(bob, PASSWORD)["access_token"]
    muted = chat(server, bob_token, alice_token, alice_id, "Quiet please")
    mentions = chat(server, bob_token, alice_token, alice_id, "Only when named")
    loud = chat(server, bob_token, alice_token, alice_id, "Tell me everything")

    sub = push_service.subscribe()
    subscription = {"endpoint": sub.endpoint, "p256dh": sub.p256dh, **{"auth": sub.pusher_data()["auth"]}}
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    result = run_browser_script(
        "web_push.mjs",
        server.base_url,
        alice,
        PASSWORD,
        str(shots),
        str(tmp_path / "profile"),
        json.dumps(subscription),
        json.dumps({"muted": muted, "mentions": mentions}),
        timeout=150,
    )

    assert result["types"] == {
        "/manifest.webmanifest": "200 application/manifest+json",
        "/sw.js": "200 text/javascript; charset=utf-8",
        "/icon.svg": "200 image/svg+xml",
    }
    assert result["manifest"]["start_url"] == "/" and result["manifest"]["display"] == "standalone"
    assert result["controlled"] == server.url("/sw.js")
    assert result["enabled"] == "Notifications are on for this browser."
    assert result["subscribeKeyBytes"] == 65  # the gateway's uncompressed P-256 public key
    assert result["muted"] == "Saved: Mute" and result["mentions"] == "Saved: Mentions only"
    assert result["menuAfterEscape"] == {"open": False, "focus": "SUMMARY"}
    assert result["checkedAfterReload"] == "mentions"
    assert result["notifications"] == [
        {"title": "New message in Quiet please", "body": "Open the chat to read it.", "tag": muted}
    ]
    # The push's unread total becomes the app's badge.
    assert result["badgeCalls"] == [3]
    assert result["problems"] == []

    # The pusher the page registered, in the gateway's Web Push convention.
    [pusher] = call(server, alice_token, "GET", "/pushers")["pushers"]
    assert (pusher["kind"], pusher["app_id"], pusher["pushkey"]) == ("http", APP_ID, sub.p256dh)
    assert pusher["data"] == {
        "url": server.url("/_matrix/push/v1/notify"),
        "endpoint": sub.endpoint,
        "auth": subscription["auth"],
    }
    # The settings as push rules: an override rule muting one room, a room rule for the other.
    rules = call(server, alice_token, "GET", "/pushrules/")["global"]
    [mute_rule] = [r for r in rules["override"] if r["rule_id"] == muted]
    assert mute_rule["actions"] == [] and mute_rule["conditions"][0]["pattern"] == muted
    [room_rule] = [r for r in rules["room"] if r["rule_id"] == mentions]
    assert room_rule["actions"] == []

    def say(room_id: str, body: str, mention: bool = False) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if mention:
            content["m.mentions"] = {"user_ids": [alice_id]}
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(6)}"
        event_id: str = call(server, bob_token, "PUT", path, content)["event_id"]
        return event_id

    say(muted, "Nobody hears this")
    say(mentions, "Nor this")
    named = say(mentions, f"{alice}: this one is for you", mention=True)
    last = say(loud, "And this is heard")
    # One pusher's notifications arrive in order: once the last is there, none other comes.
    deadline = time.monotonic() + 30
    while not any(d.payload.get("event_id") == last for d in push_service.deliveries):
        assert time.monotonic() < deadline, f"no push for the last message; refused: {push_service.refused}"
        time.sleep(0.1)
    assert [(d.payload["event_id"], d.payload["room_id"]) for d in push_service.deliveries] == [
        (named, mentions),
        (last, loud),
    ]
    assert not push_service.refused

    # The server stopped: the same browser profile opens the app from the worker's cache and
    # the app runs (then waits, "Connecting…"). The only console errors are its requests to
    # the stopped server, which Chromium and the SDK log.
    base_url = server.base_url
    server.stop()
    offline = run_browser_script(
        "web_offline.mjs", base_url, str(tmp_path / "profile"), str(shots), timeout=90
    )
    assert offline["offline"] == {"title": "Chat", "styled": True, "text": "Connecting…"}
    assert all(
        p.startswith("[offline] console error:") and "fetch" in p.lower() for p in offline["problems"]
    ), offline["problems"]
