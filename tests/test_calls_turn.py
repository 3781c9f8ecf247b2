"""GET /voip/turnServer from the calls plugin (plugins/calls), on a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
import requests

CLIENT = "/_matrix/client/v3"
URIS = ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp", "turns:127.0.0.1:5349"]


def calls_plugin(turn: dict[str, Any]) -> dict[str, Any]:
    return {"plugins": [{"module": "plugins.calls.CallsPlugin", "config": {"turn": turn}}]}


def test_a_user_gets_credentials_for_themselves(start_server: Any) -> None:
    server = start_server(calls_plugin({"uris": URIS, "shared_secret": "s3cret", "ttl": "10m"}))
    user = server.register("caller")
    before = int(time.time())
    r = requests.get(
        server.url(f"{CLIENT}/voip/turnServer"),
        headers={"Authorization": f"Bearer {user['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    expiry, _, name = body["username"].partition(":")
    assert name == user["user_id"]
    assert before + 600 <= int(expiry) <= int(time.time()) + 600
    assert (
        body["password"]
        == base64.b64encode(hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()).decode()
    )
    assert body["uris"] == URIS and body["ttl"] == 600

    anonymous = requests.get(server.url(f"{CLIENT}/voip/turnServer"), timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["errcode"] == "M_MISSING_TOKEN"


def test_without_uris_the_answer_is_empty(start_server: Any) -> None:
    server = start_server(calls_plugin({}))
    user = server.register("caller")
    r = requests.get(
        server.url(f"{CLIENT}/voip/turnServer"),
        headers={"Authorization": f"Bearer {user['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 200 and r.json() == {}


def test_a_bad_calls_config_stops_start_up(start_server: Any) -> None:
    with pytest.raises(RuntimeError, match="shared_secret"):
        start_server(calls_plugin({"uris": URIS}))


def test_the_livekit_focus_is_advertised_in_well_known(start_server: Any) -> None:
    url = "https://lk-jwt.example.org"
    server = start_server(
        {
            "plugins": [
                {
                    "module": "plugins.calls.CallsPlugin",
                    "config": {"group_calls": {"livekit_service_url": url}},
                }
            ]
        }
    )
    body = requests.get(server.url("/.well-known/matrix/client"), timeout=10).json()
    assert body["m.homeserver"]["base_url"] == server.config["public_baseurl"]
    assert body["org.matrix.msc4143.rtc_foci"] == [{"type": "livekit", "livekit_service_url": url}]
    # An SFU's JWT service checks who a user is with an OpenID token from the homeserver.
    user = server.register("grouper")
    r = requests.post(
        server.url(f"/_matrix/client/v3/user/{user['user_id']}/openid/request_token"),
        json={},
        headers={"Authorization": f"Bearer {user['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["matrix_server_name"] == server.server_name
    plain = start_server(calls_plugin({}))
    assert (
        "org.matrix.msc4143.rtc_foci"
        not in requests.get(plain.url("/.well-known/matrix/client"), timeout=10).json()
    )
