"""The simple REST API (/api/auth/*, docs/api.md) against a real server, and its
token sharing with the Matrix Client-Server API.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests
from conftest import ServerProcess

PASSWORD = "simple api passphrase"
WHOAMI = "/_matrix/client/v3/account/whoami"


def api(server: ServerProcess, path: str, body: Any = None, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(server.url("/api/auth" + path), json=body, headers=headers, timeout=10)


def whoami(server: ServerProcess, token: str) -> requests.Response:
    return requests.get(server.url(WHOAMI), headers={"Authorization": f"Bearer {token}"}, timeout=10)


def new_email() -> str:
    return f"simple.{secrets.token_hex(4)}@example.com"


def assert_error(r: requests.Response, status: int, errcode: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["errcode"] == errcode, body
    assert isinstance(body.get("error"), str), body
    return body


def register(server: ServerProcess, email: str) -> dict[str, Any]:
    r = api(server, "/register", {"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def login(server: ServerProcess, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = api(server, "/login", {"email": email, "password": password})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_register_creates_account_and_returns_token(any_server: ServerProcess) -> None:
    email = new_email()
    r = api(any_server, "/register", {"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"userId", "token"}
    localpart = email.split("@")[0]
    assert body["userId"] == f"@{localpart}:{any_server.server_name}"
    # The simple API's token is a Matrix access token.
    me = whoami(any_server, body["token"])
    assert me.status_code == 200
    assert me.json()["user_id"] == body["userId"]


def test_register_takes_a_free_localpart_when_the_natural_one_is_taken(server: ServerProcess) -> None:
    localpart = f"taken{secrets.token_hex(3)}"
    server.register(localpart, PASSWORD)
    body = register(server, f"{localpart}@example.net")
    assert body["userId"] != f"@{localpart}:{server.server_name}"
    assert body["userId"].startswith(f"@{localpart}.")


def test_register_duplicate_email_is_threepid_in_use(any_server: ServerProcess) -> None:
    email = new_email()
    register(any_server, email)
    r = api(any_server, "/register", {"email": email, "password": PASSWORD})
    assert_error(r, 400, "M_THREEPID_IN_USE")
    # Addresses are compared without case or surrounding spaces.
    r = api(any_server, "/register", {"email": f"  {email.upper()} ", "password": PASSWORD})
    assert_error(r, 400, "M_THREEPID_IN_USE")


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "two@@example.com", "spa ce@example.com", "@example.com"]
)
def test_register_invalid_email_is_rejected(server: ServerProcess, email: str) -> None:
    assert_error(api(server, "/register", {"email": email, "password": PASSWORD}), 400, "M_INVALID_PARAM")


def test_register_weak_password_is_rejected(server: ServerProcess) -> None:
    email = new_email()
    assert_error(api(server, "/register", {"email": email, "password": "short"}), 400, "M_WEAK_PASSWORD")
    # Nothing was created: the address is still free.
    register(server, email)


def test_login_returns_session_with_refresh_token(any_server: ServerProcess) -> None:
    email = new_email()
    user_id = register(any_server, email)["userId"]
    r = api(any_server, "/login", {"email": email.upper(), "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["userId"] == user_id
    assert body["token"] and body["deviceId"]
    assert body["refreshToken"].startswith("hsr_")
    assert isinstance(body["expiresInMs"], int) and 0 < body["expiresInMs"] <= 3_600_000
    me = whoami(any_server, body["token"]).json()
    assert me == {"user_id": user_id, "device_id": body["deviceId"], "is_guest": False}


def test_login_with_wrong_password_or_unknown_email_is_forbidden(server: ServerProcess) -> None:
    email = new_email()
    register(server, email)
    assert_error(api(server, "/login", {"email": email, "password": "wrong password"}), 403, "M_FORBIDDEN")
    # An unknown address gets the same answer: no way to tell which addresses exist.
    r = api(server, "/login", {"email": new_email(), "password": PASSWORD})
    assert_error(r, 403, "M_FORBIDDEN")


def test_matrix_token_works_on_simple_logout(server: ServerProcess) -> None:
    email = new_email()
    register(server, email)
    r = requests.post(
        server.url("/_matrix/client/v3/login"),
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": email},
            "password": PASSWORD,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    r = api(server, "/logout", token=token)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert_error(whoami(server, token), 401, "M_UNKNOWN_TOKEN")


def test_logout_revokes_the_token_and_only_that_one(any_server: ServerProcess) -> None:
    email = new_email()
    first = register(any_server, email)["token"]
    second = login(any_server, email)
    r = api(any_server, "/logout", token=second["token"])
    assert r.status_code == 200, r.text
    body = assert_error(whoami(any_server, second["token"]), 401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is False
    assert_error(api(any_server, "/logout", token=second["token"]), 401, "M_UNKNOWN_TOKEN")
    # Its refresh token went with it.
    assert_error(
        api(any_server, "/refresh", {"refreshToken": second["refreshToken"]}), 401, "M_UNKNOWN_TOKEN"
    )
    assert whoami(any_server, first).status_code == 200


def test_logout_without_token_is_missing_token(server: ServerProcess) -> None:
    assert_error(api(server, "/logout"), 401, "M_MISSING_TOKEN")


def test_refresh_works_once(any_server: ServerProcess) -> None:
    email = new_email()
    register(any_server, email)
    session = login(any_server, email)

    r = api(any_server, "/refresh", {"refreshToken": session["refreshToken"]})
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["userId"] == session["userId"] and new["deviceId"] == session["deviceId"]
    assert new["token"] != session["token"] and new["refreshToken"] != session["refreshToken"]
    assert isinstance(new["expiresInMs"], int) and new["expiresInMs"] > 0
    assert whoami(any_server, new["token"]).status_code == 200
    # The old pair is spent.
    assert_error(whoami(any_server, session["token"]), 401, "M_UNKNOWN_TOKEN")
    assert_error(
        api(any_server, "/refresh", {"refreshToken": session["refreshToken"]}), 401, "M_UNKNOWN_TOKEN"
    )
    # The new refresh token still works, once.
    assert api(any_server, "/refresh", {"refreshToken": new["refreshToken"]}).status_code == 200
    assert_error(api(any_server, "/refresh", {"refreshToken": new["refreshToken"]}), 401, "M_UNKNOWN_TOKEN")


def test_refresh_with_unknown_token_is_unknown_token(server: ServerProcess) -> None:
    assert_error(
        api(server, "/refresh", {"refreshToken": "hsr_" + secrets.token_urlsafe(32)}), 401, "M_UNKNOWN_TOKEN"
    )


def test_password_changed_through_matrix_applies_to_simple_login(server: ServerProcess) -> None:
    email = new_email()
    token = register(server, email)["token"]
    user_id = whoami(server, token).json()["user_id"]
    r = requests.post(
        server.url("/_matrix/client/v3/account/password"),
        json={
            "new_password": "a brand new passphrase",
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": PASSWORD,
            },
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert_error(api(server, "/login", {"email": email, "password": PASSWORD}), 403, "M_FORBIDDEN")
    assert login(server, email, "a brand new passphrase")["userId"] == user_id
