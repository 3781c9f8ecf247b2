"""GET /pushers and POST /pushers/set against a real server (spec: Client-Server API, "Push
Notifications"): creating, replacing, appending and deleting pushers, strict validation with
the spec's error codes, the per-user limit, refusal of URLs at non-public addresses, and
pushers leaving with their device or with a password change.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import requests
from conftest import VENV_BIN, ServerProcess

NOTIFY = "/_matrix/push/v1/notify"
GATEWAY = "https://push.example.org" + NOTIFY


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pusher(pushkey: str = "key-1", app_id: str = "org.example.app", **changes: Any) -> dict[str, Any]:
    body = {
        "kind": "http",
        "app_id": app_id,
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": GATEWAY, "format": "event_id_only"},
    }
    body.update(changes)
    return body


def set_pusher(server: ServerProcess, token: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        server.url("/_matrix/client/v3/pushers/set"), json=body, headers=auth(token), timeout=10
    )


def pushers_of(server: ServerProcess, token: str) -> list[dict[str, Any]]:
    r = requests.get(server.url("/_matrix/client/v3/pushers"), headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()["pushers"]
    return result


def test_a_pusher_is_listed_replaced_in_place_and_deleted(server: ServerProcess) -> None:
    token = server.register("pusher_owner")["access_token"]
    assert pushers_of(server, token) == []
    assert set_pusher(server, token, pusher(profile_tag="tag")).json() == {}
    assert pushers_of(server, token) == [
        {
            "app_id": "org.example.app",
            "pushkey": "key-1",
            "kind": "http",
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "profile_tag": "tag",
            "lang": "en",
            "data": {"url": GATEWAY, "format": "event_id_only"},
        }
    ]
    # The same app id and pushkey: replaced, not added.
    assert set_pusher(server, token, pusher(lang="de", data={"url": GATEWAY})).status_code == 200
    listed = pushers_of(server, token)
    assert [(p["lang"], p["data"]) for p in listed] == [("de", {"url": GATEWAY})]
    assert set_pusher(server, token, pusher(pushkey="key-2")).status_code == 200
    assert len(pushers_of(server, token)) == 2
    # kind null deletes.
    assert (
        set_pusher(server, token, {"app_id": "org.example.app", "pushkey": "key-1", "kind": None}).json()
        == {}
    )
    assert [p["pushkey"] for p in pushers_of(server, token)] == ["key-2"]


def test_without_append_the_same_pushkey_leaves_other_users(server: ServerProcess) -> None:
    first = server.register("shared_phone_1")["access_token"]
    second = server.register("shared_phone_2")["access_token"]
    third = server.register("shared_phone_3")["access_token"]
    assert set_pusher(server, first, pusher("shared-key")).status_code == 200
    assert set_pusher(server, second, pusher("shared-key", append=True)).status_code == 200
    assert len(pushers_of(server, first)) == 1  # append: both keep it
    assert set_pusher(server, third, pusher("shared-key")).status_code == 200
    assert pushers_of(server, first) == [] and pushers_of(server, second) == []
    assert len(pushers_of(server, third)) == 1


@pytest.mark.parametrize(
    ("change", "status", "errcode"),
    [
        ({"app_id": "a" * 65}, 400, "M_INVALID_PARAM"),
        ({"app_id": "é" * 33}, 400, "M_INVALID_PARAM"),  # 66 bytes in 33 characters
        ({"pushkey": "k" * 513}, 400, "M_INVALID_PARAM"),
        ({"kind": "sms"}, 400, "M_INVALID_PARAM"),
        ({"kind": 3}, 400, "M_BAD_JSON"),
        ({"app_display_name": None}, 400, "M_MISSING_PARAM"),
        ({"lang": None}, 400, "M_MISSING_PARAM"),
        ({"data": None}, 400, "M_MISSING_PARAM"),
        ({"data": "https://push.example.org"}, 400, "M_BAD_JSON"),
        ({"data": {}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "https://push.example.org/notify"}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "ftp://push.example.org" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "https://user:pw@push.example.org" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "https://push.example.org:99999" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": GATEWAY, "format": "full"}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": GATEWAY, "padding": "x" * 5000}}, 400, "M_INVALID_PARAM"),
        ({"append": "yes"}, 400, "M_BAD_JSON"),
        # Server-side request forgery: literal non-public addresses are refused at once.
        ({"data": {"url": "http://127.0.0.1:8080" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "http://10.1.2.3" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "http://169.254.169.254" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "http://[::1]:8080" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "http://[::ffff:192.168.0.1]" + NOTIFY}}, 400, "M_INVALID_PARAM"),
        ({"data": {"url": "http://0.0.0.0" + NOTIFY}}, 400, "M_INVALID_PARAM"),
    ],
)
def test_bad_pushers_are_refused_with_the_spec_error(
    server: ServerProcess, refused_owner: str, change: dict[str, Any], status: int, errcode: str
) -> None:
    token = refused_owner
    body = pusher(**change)
    for key, value in change.items():
        if value is None:
            del body[key]
    r = set_pusher(server, token, body)
    assert (r.status_code, r.json()["errcode"]) == (status, errcode), r.text
    assert all(
        p["app_id"] != body.get("app_id") or p["pushkey"] != body["pushkey"]
        for p in pushers_of(server, token)
    )


@pytest.fixture(scope="module")
def refused_owner(server: ServerProcess) -> str:
    token: str = server.register("refused_owner")["access_token"]
    return token


def test_missing_kind_and_no_token_are_refused(server: ServerProcess) -> None:
    token = server.register("pusher_kindless")["access_token"]
    body = pusher()
    del body["kind"]
    r = set_pusher(server, token, body)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = requests.post(server.url("/_matrix/client/v3/pushers/set"), json=pusher(), timeout=10)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = requests.get(server.url("/_matrix/client/v3/pushers"), timeout=10)
    assert r.status_code == 401


def test_a_user_may_have_only_so_many_pushers(start_server: Any) -> None:
    server = start_server({"pushers": {"max_per_user": 2}})
    token = server.register("many_phones")["access_token"]
    assert set_pusher(server, token, pusher("one")).status_code == 200
    assert set_pusher(server, token, pusher("two")).status_code == 200
    r = set_pusher(server, token, pusher("three"))
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert "2" in r.json()["error"]
    assert set_pusher(server, token, pusher("two", lang="fr")).status_code == 200  # an update is no new one
    assert (
        set_pusher(server, token, {"app_id": "org.example.app", "pushkey": "one", "kind": None}).status_code
        == 200
    )
    assert set_pusher(server, token, pusher("three")).status_code == 200


def test_private_addresses_are_allowed_when_the_config_says_so(start_server: Any) -> None:
    server = start_server({"pushers": {"allow_private_addresses": True}})
    token = server.register("lan_gateway")["access_token"]
    r = set_pusher(server, token, pusher(data={"url": "http://127.0.0.1:8080" + NOTIFY}))
    assert r.status_code == 200, r.text


def test_an_email_pusher_needs_a_validated_address_of_the_user(server: ServerProcess) -> None:
    subprocess.run(
        [str(VENV_BIN / "homeserver"), "admin", "create-user", "-c", str(server.config_path),
         "--email", "Mailer@Example.org", "--password", "correct horse battery", "--username", "mailer"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    token = server.login("mailer")["access_token"]
    email = pusher("someone.else@example.org", app_id="m.email", kind="email", data={})
    r = set_pusher(server, token, email)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_THREEPID_NOT_FOUND")
    r = set_pusher(server, token, {**email, "pushkey": "mailer@example.org"})
    assert r.status_code == 200, r.text
    assert [p["kind"] for p in pushers_of(server, token)] == ["email"]


def test_pushers_go_with_their_device_and_with_a_password_change(server: ServerProcess) -> None:
    phone = server.register("two_devices", device_id="PHONE")["access_token"]
    laptop = server.login("two_devices", device_id="LAPTOP")["access_token"]
    tablet = server.login("two_devices", device_id="TABLET")["access_token"]
    assert set_pusher(server, phone, pusher("phone")).status_code == 200
    assert set_pusher(server, laptop, pusher("laptop")).status_code == 200
    assert set_pusher(server, tablet, pusher("tablet")).status_code == 200

    r = requests.post(server.url("/_matrix/client/v3/logout"), headers=auth(laptop), timeout=10)
    assert r.status_code == 200
    assert sorted(p["pushkey"] for p in pushers_of(server, phone)) == ["phone", "tablet"]

    # The tablet changes the password without logging the others out: only its pusher stays.
    r = requests.post(
        server.url("/_matrix/client/v3/account/password"),
        json={
            "new_password": "a new good password",
            "logout_devices": False,
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "two_devices"},
                "password": "correct horse battery",
            },
        },
        headers=auth(tablet),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert [p["pushkey"] for p in pushers_of(server, phone)] == ["tablet"]
