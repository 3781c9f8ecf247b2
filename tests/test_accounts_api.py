"""The Matrix Client-Server account API as a client sees it: a real server over HTTP.

Discovery, registration (user-interactive auth), login, logout, devices,
passwords, refresh tokens, capabilities, profiles, deactivation and CORS. The
tests that matter most run on both storage engines (`any_server`).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests
from conftest import ServerProcess

PASSWORD = "correct horse battery"
V3 = "/_matrix/client/v3"


def new_name(prefix: str = "user") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(server: ServerProcess, path: str, token: str | None = None, **kw: Any) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.get(server.url(V3 + path), headers=headers, timeout=10, **kw)


def post(server: ServerProcess, path: str, body: Any = None, token: str | None = None) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.post(server.url(V3 + path), json=body, headers=headers, timeout=10)


def put(server: ServerProcess, path: str, body: Any, token: str | None = None) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.put(server.url(V3 + path), json=body, headers=headers, timeout=10)


def delete(server: ServerProcess, path: str, body: Any = None, token: str | None = None) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.delete(server.url(V3 + path), json=body, headers=headers, timeout=10)


def new_user(server: ServerProcess, prefix: str = "user") -> dict[str, Any]:
    """Register a fresh account; the answer plus its `username`."""
    username = new_name(prefix)
    body = server.register(username, PASSWORD)
    body["username"] = username
    return body


def password_auth(user_id: str, password: str = PASSWORD, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth


def assert_error(r: requests.Response, status: int, errcode: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["errcode"] == errcode, body
    assert isinstance(body.get("error"), str), body
    return body


def assert_token_revoked(server: ServerProcess, token: str) -> None:
    body = assert_error(get(server, "/account/whoami", token), 401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is False


def assert_uia_401(r: requests.Response, stages: list[str]) -> dict[str, Any]:
    """A user-interactive-auth challenge offering exactly `stages` as one flow."""
    assert r.status_code == 401, r.text
    body: dict[str, Any] = r.json()
    assert {"stages": stages} in body["flows"], body
    assert isinstance(body["session"], str) and body["session"], body
    assert isinstance(body["params"], dict), body
    return body


# Discovery --------------------------------------------------------------------


def test_versions_lists_supported_spec_versions(any_server: ServerProcess) -> None:
    r = requests.get(any_server.url("/_matrix/client/versions"), timeout=10)
    assert r.status_code == 200
    body = r.json()
    # Only versions whose endpoints are all routed (tests/test_compat.py checks each one).
    assert body["versions"][0] == "r0.6.1"
    assert all(isinstance(v, str) for v in body["versions"])
    assert isinstance(body.get("unstable_features", {}), dict)


def test_well_known_client_points_at_public_base_url(server: ServerProcess) -> None:
    r = requests.get(server.url("/.well-known/matrix/client"), timeout=10)
    assert r.status_code == 200
    assert r.json()["m.homeserver"]["base_url"] == server.config["public_baseurl"]


def test_login_flows_offer_password_login(server: ServerProcess) -> None:
    r = get(server, "/login")
    assert r.status_code == 200
    assert {"type": "m.login.password"} in r.json()["flows"]


# Registration -------------------------------------------------------------------


def test_register_challenges_with_dummy_flow_then_creates_account(any_server: ServerProcess) -> None:
    username = new_name("reg")
    body = {"username": username, "password": PASSWORD, "initial_device_display_name": "Laptop"}
    challenge = assert_uia_401(post(any_server, "/register", body), ["m.login.dummy"])
    assert "errcode" not in challenge

    r = post(
        any_server, "/register", {**body, "auth": {"type": "m.login.dummy", "session": challenge["session"]}}
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["user_id"] == f"@{username}:{any_server.server_name}"
    assert result["access_token"] and result["device_id"]
    assert "refresh_token" not in result

    me = get(any_server, "/account/whoami", result["access_token"])
    assert me.status_code == 200
    assert me.json() == {"user_id": result["user_id"], "device_id": result["device_id"], "is_guest": False}
    device = get(any_server, f"/devices/{result['device_id']}", result["access_token"]).json()
    assert device["display_name"] == "Laptop"


def test_register_with_an_empty_body_offers_the_flows_for_a_sign_up_form(any_server: ServerProcess) -> None:
    # Sign-up forms (matrix-js-sdk's, so Element and Cinny) first send {} to learn the flows.
    challenge = assert_uia_401(post(any_server, "/register", {}), ["m.login.dummy"])
    assert "errcode" not in challenge

    # Then the user's name and password, with the stage, in the same session.
    username = new_name("form")
    auth = {"type": "m.login.dummy", "session": challenge["session"]}
    r = post(any_server, "/register", {"username": username, "password": PASSWORD, "auth": auth})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == f"@{username}:{any_server.server_name}"
    assert any_server.login(username)["user_id"] == r.json()["user_id"]


def test_register_completing_a_stage_without_a_password_creates_nothing(server: ServerProcess) -> None:
    username = new_name("nopw")
    challenge = assert_uia_401(post(server, "/register", {"username": username}), ["m.login.dummy"])
    auth = {"type": "m.login.dummy", "session": challenge["session"]}
    assert_error(post(server, "/register", {"username": username, "auth": auth}), 400, "M_MISSING_PARAM")
    assert get(server, "/register/available", params={"username": username}).json() == {"available": True}
    # The session was not used up: the same stage with the password finishes it.
    r = post(server, "/register", {"username": username, "password": PASSWORD, "auth": auth})
    assert r.status_code == 200, r.text


def test_register_with_inhibit_login_returns_no_session(server: ServerProcess) -> None:
    username = new_name("inhibit")
    r = post(
        server,
        "/register",
        {
            "username": username,
            "password": PASSWORD,
            "inhibit_login": True,
            "auth": {"type": "m.login.dummy"},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == f"@{username}:{server.server_name}"
    assert "access_token" not in body and "device_id" not in body
    # The account exists all the same.
    assert server.login(username)["user_id"] == body["user_id"]


def test_register_without_username_generates_one(server: ServerProcess) -> None:
    r = post(server, "/register", {"password": PASSWORD, "auth": {"type": "m.login.dummy"}})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"].endswith(":" + server.server_name)


def test_register_taken_username_is_user_in_use(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    r = post(
        any_server,
        "/register",
        {"username": user["username"], "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert_error(r, 400, "M_USER_IN_USE")
    # Case does not make a new name.
    r = post(any_server, "/register", {"username": user["username"].upper(), "password": PASSWORD})
    assert_error(r, 400, "M_USER_IN_USE")


@pytest.mark.parametrize("username", ["has space", "émile", "semi;colon", "at@sign", "x" * 300])
def test_register_invalid_username_is_rejected(server: ServerProcess, username: str) -> None:
    r = post(
        server, "/register", {"username": username, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    )
    assert_error(r, 400, "M_INVALID_USERNAME")


def test_register_short_password_is_weak(server: ServerProcess) -> None:
    r = post(
        server, "/register", {"username": new_name(), "password": "short", "auth": {"type": "m.login.dummy"}}
    )
    assert_error(r, 400, "M_WEAK_PASSWORD")


def test_register_as_guest_is_forbidden(server: ServerProcess) -> None:
    r = requests.post(
        server.url(V3 + "/register?kind=guest"),
        json={"password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        timeout=10,
    )
    assert_error(r, 403, "M_GUEST_ACCESS_FORBIDDEN")


def test_register_when_registration_disabled_is_forbidden(start_server: Any) -> None:
    closed = start_server({"registration": {"enabled": False}})
    r = post(
        closed, "/register", {"username": new_name(), "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    )
    assert_error(r, 403, "M_FORBIDDEN")
    r = requests.post(
        closed.url("/api/auth/register"),
        json={"email": "closed@example.com", "password": PASSWORD},
        timeout=10,
    )
    assert_error(r, 403, "M_FORBIDDEN")


def test_registration_token_wrong_is_rejected_and_right_is_accepted(start_server: Any) -> None:
    gated = start_server({"registration": {"tokens": ["let-me-in-42"]}})
    username = new_name("gated")
    body = {"username": username, "password": PASSWORD}
    challenge = assert_uia_401(post(gated, "/register", body), ["m.login.registration_token"])
    session = challenge["session"]

    # Skipping the token stage with a dummy one does not work.
    r = post(gated, "/register", {**body, "auth": {"type": "m.login.dummy", "session": session}})
    assert r.status_code == 401, r.text
    assert "errcode" in r.json()

    wrong = {"type": "m.login.registration_token", "token": "let-me-in-43", "session": session}
    r = post(gated, "/register", {**body, "auth": wrong})
    failed = assert_uia_401(r, ["m.login.registration_token"])
    assert failed["errcode"] == "M_FORBIDDEN"
    assert "m.login.registration_token" not in failed.get("completed", [])
    assert get(gated, "/register/available", params={"username": username}).json() == {"available": True}

    right = {"type": "m.login.registration_token", "token": "let-me-in-42", "session": session}
    r = post(gated, "/register", {**body, "auth": right})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == f"@{username}:{gated.server_name}"
    # The simple API has no token stage, so it does not let anyone in around it.
    r = requests.post(
        gated.url("/api/auth/register"), json={"email": "gated@example.com", "password": PASSWORD}, timeout=10
    )
    assert_error(r, 403, "M_FORBIDDEN")


def test_register_available_answers_true_taken_and_invalid(any_server: ServerProcess) -> None:
    r = get(any_server, "/register/available", params={"username": new_name("free")})
    assert r.status_code == 200
    assert r.json() == {"available": True}

    user = new_user(any_server)
    r = get(any_server, "/register/available", params={"username": user["username"]})
    assert_error(r, 400, "M_USER_IN_USE")

    r = get(any_server, "/register/available", params={"username": "no spaces please"})
    assert_error(r, 400, "M_INVALID_USERNAME")


# Login, whoami, logout ----------------------------------------------------------


def test_login_by_user_localpart(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    r = post(
        any_server,
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user["username"]},
            "password": PASSWORD,
            "initial_device_display_name": "Phone",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user["user_id"]
    assert body["access_token"] and body["device_id"]
    assert body["device_id"] != user["device_id"]
    assert body["well_known"]["m.homeserver"]["base_url"] == any_server.config["public_baseurl"]
    assert "refresh_token" not in body
    assert get(any_server, "/account/whoami", body["access_token"]).json()["user_id"] == user["user_id"]


def test_login_by_full_user_id(server: ServerProcess) -> None:
    user = new_user(server)
    body = server.login(user["user_id"])
    assert body["user_id"] == user["user_id"]


def test_login_with_deprecated_top_level_user_field(server: ServerProcess) -> None:
    user = new_user(server)
    r = post(server, "/login", {"type": "m.login.password", "user": user["username"], "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == user["user_id"]


def test_login_by_email_address(any_server: ServerProcess) -> None:
    email = f"{new_name('mail')}@example.com"
    r = requests.post(
        any_server.url("/api/auth/register"), json={"email": email, "password": PASSWORD}, timeout=10
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["userId"]
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": email.upper()},
        "password": PASSWORD,
    }
    r = post(any_server, "/login", login)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == user_id

    r = post(any_server, "/login", {**login, "password": "not the password"})
    assert_error(r, 403, "M_FORBIDDEN")


def test_login_with_wrong_password_or_unknown_user_is_forbidden(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    for who, password in ((user["username"], "wrong password"), (new_name("nobody"), PASSWORD)):
        r = post(
            any_server,
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": who},
                "password": password,
            },
        )
        assert_error(r, 403, "M_FORBIDDEN")


def test_login_with_given_device_id_keeps_that_id(server: ServerProcess) -> None:
    user = new_user(server)
    body = server.login(user["username"], device_id="MYPHONE", initial_device_display_name="My phone")
    assert body["device_id"] == "MYPHONE"
    devices = get(server, "/devices", body["access_token"]).json()["devices"]
    assert {"MYPHONE", user["device_id"]} == {d["device_id"] for d in devices}


def test_whoami_without_token_is_missing_token(server: ServerProcess) -> None:
    assert_error(get(server, "/account/whoami"), 401, "M_MISSING_TOKEN")


def test_logout_revokes_only_that_token(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    other = any_server.login(user["username"])
    r = post(any_server, "/logout", {}, user["access_token"])
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert_token_revoked(any_server, user["access_token"])
    assert get(any_server, "/account/whoami", other["access_token"]).status_code == 200
    devices = get(any_server, "/devices", other["access_token"]).json()["devices"]
    assert [d["device_id"] for d in devices] == [other["device_id"]]


def test_logout_all_revokes_every_device(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    second = any_server.login(user["username"])
    stranger = new_user(any_server)
    r = post(any_server, "/logout/all", {}, second["access_token"])
    assert r.status_code == 200, r.text
    assert_token_revoked(any_server, user["access_token"])
    assert_token_revoked(any_server, second["access_token"])
    # Only that user's devices.
    assert get(any_server, "/account/whoami", stranger["access_token"]).status_code == 200
    # Logging in again works.
    assert any_server.login(user["username"])["user_id"] == user["user_id"]


def test_token_in_query_string_still_accepted(server: ServerProcess) -> None:
    user = new_user(server)
    r = get(server, "/account/whoami", params={"access_token": user["access_token"]})
    assert r.status_code == 200
    assert r.json()["user_id"] == user["user_id"]


# Devices --------------------------------------------------------------------------


def test_devices_list_get_and_rename(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    tablet = any_server.login(user["username"], initial_device_display_name="Tablet")
    token = user["access_token"]

    r = get(any_server, "/devices", token)
    assert r.status_code == 200
    devices = {d["device_id"]: d for d in r.json()["devices"]}
    assert set(devices) == {user["device_id"], tablet["device_id"]}
    assert devices[tablet["device_id"]]["display_name"] == "Tablet"
    assert "display_name" not in devices[user["device_id"]]  # never named: absent, not null

    r = get(any_server, f"/devices/{tablet['device_id']}", token)
    assert r.status_code == 200
    assert r.json()["device_id"] == tablet["device_id"]
    assert r.json()["display_name"] == "Tablet"
    assert isinstance(r.json().get("last_seen_ts"), int)

    r = put(any_server, f"/devices/{tablet['device_id']}", {"display_name": "Kitchen tablet"}, token)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert (
        get(any_server, f"/devices/{tablet['device_id']}", token).json()["display_name"] == "Kitchen tablet"
    )


def test_unknown_or_foreign_device_is_not_found(server: ServerProcess) -> None:
    alice, bob = new_user(server, "alice"), new_user(server, "bob")
    token = alice["access_token"]
    assert_error(get(server, "/devices/NOSUCHDEVICE", token), 404, "M_NOT_FOUND")
    assert_error(put(server, "/devices/NOSUCHDEVICE", {"display_name": "x"}, token), 404, "M_NOT_FOUND")
    # Another user's device is invisible, and cannot be renamed or deleted.
    assert_error(get(server, f"/devices/{bob['device_id']}", token), 404, "M_NOT_FOUND")
    assert_error(
        put(server, f"/devices/{bob['device_id']}", {"display_name": "x"}, token), 404, "M_NOT_FOUND"
    )
    r = delete(server, f"/devices/{bob['device_id']}", {"auth": password_auth(alice["user_id"])}, token)
    assert_error(r, 404, "M_NOT_FOUND")
    assert get(server, "/account/whoami", bob["access_token"]).status_code == 200


def test_delete_device_needs_password_auth(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    old = any_server.login(user["username"])
    token, path = user["access_token"], f"/devices/{old['device_id']}"

    challenge = assert_uia_401(delete(any_server, path, None, token), ["m.login.password"])
    session = challenge["session"]

    wrong = delete(
        any_server, path, {"auth": password_auth(user["user_id"], "wrong password", session)}, token
    )
    failed = assert_uia_401(wrong, ["m.login.password"])
    assert failed["errcode"] == "M_FORBIDDEN"
    assert get(any_server, "/account/whoami", old["access_token"]).status_code == 200

    r = delete(any_server, path, {"auth": password_auth(user["user_id"], PASSWORD, session)}, token)
    assert r.status_code == 200, r.text
    assert_token_revoked(any_server, old["access_token"])
    assert_error(get(any_server, path, token), 404, "M_NOT_FOUND")
    assert get(any_server, "/account/whoami", token).status_code == 200


def test_delete_device_password_must_be_the_requesters(server: ServerProcess) -> None:
    alice, mallory = new_user(server, "alice"), new_user(server, "mallory")
    path = f"/devices/{alice['device_id']}"
    # Mallory's token, Mallory's password is fine, but for Alice's account it must be Alice's.
    r = delete(server, path, {"auth": password_auth(mallory["user_id"])}, alice["access_token"])
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_FORBIDDEN"
    assert get(server, "/account/whoami", alice["access_token"]).status_code == 200


def test_delete_devices_in_bulk(server: ServerProcess) -> None:
    user = new_user(server)
    one, two = server.login(user["username"]), server.login(user["username"])
    token = user["access_token"]
    body: dict[str, Any] = {"devices": [one["device_id"], two["device_id"]]}

    challenge = assert_uia_401(post(server, "/delete_devices", body, token), ["m.login.password"])
    r = post(
        server,
        "/delete_devices",
        {**body, "auth": password_auth(user["user_id"], PASSWORD, challenge["session"])},
        token,
    )
    assert r.status_code == 200, r.text
    assert_token_revoked(server, one["access_token"])
    assert_token_revoked(server, two["access_token"])
    devices = get(server, "/devices", token).json()["devices"]
    assert [d["device_id"] for d in devices] == [user["device_id"]]


# Passwords ------------------------------------------------------------------------


def test_change_password_logs_out_other_devices(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    other = any_server.login(user["username"])
    token = user["access_token"]
    new_password = "a much better passphrase"

    challenge = assert_uia_401(
        post(any_server, "/account/password", {"new_password": new_password}, token), ["m.login.password"]
    )
    body = {
        "new_password": new_password,
        "auth": password_auth(user["user_id"], PASSWORD, challenge["session"]),
    }
    r = post(any_server, "/account/password", body, token)
    assert r.status_code == 200, r.text

    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user["username"]}}
    assert_error(post(any_server, "/login", {**login, "password": PASSWORD}), 403, "M_FORBIDDEN")
    assert post(any_server, "/login", {**login, "password": new_password}).status_code == 200
    assert_token_revoked(any_server, other["access_token"])
    assert get(any_server, "/account/whoami", token).status_code == 200


def test_change_password_can_keep_other_devices(server: ServerProcess) -> None:
    user = new_user(server)
    other = server.login(user["username"])
    body = {
        "new_password": "another good passphrase",
        "logout_devices": False,
        "auth": password_auth(user["user_id"]),
    }
    assert post(server, "/account/password", body, user["access_token"]).status_code == 200
    assert get(server, "/account/whoami", other["access_token"]).status_code == 200


def test_change_password_with_wrong_current_password_changes_nothing(server: ServerProcess) -> None:
    user = new_user(server)
    body = {"new_password": "whatever passphrase", "auth": password_auth(user["user_id"], "not it")}
    r = post(server, "/account/password", body, user["access_token"])
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_FORBIDDEN"
    assert server.login(user["username"], PASSWORD)["user_id"] == user["user_id"]


def test_change_password_to_weak_one_is_rejected(server: ServerProcess) -> None:
    user = new_user(server)
    body = {"new_password": "short", "auth": password_auth(user["user_id"])}
    assert_error(post(server, "/account/password", body, user["access_token"]), 400, "M_WEAK_PASSWORD")
    assert server.login(user["username"], PASSWORD)["user_id"] == user["user_id"]


# Refresh tokens ---------------------------------------------------------------------


def test_refresh_token_rotates_and_works_once(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    first = any_server.login(user["username"], refresh_token=True)
    assert first["refresh_token"]
    assert isinstance(first["expires_in_ms"], int)
    assert 0 < first["expires_in_ms"] <= 3_600_000

    r = post(any_server, "/refresh", {"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert isinstance(second["expires_in_ms"], int) and second["expires_in_ms"] > 0

    me = get(any_server, "/account/whoami", second["access_token"]).json()
    assert me["user_id"] == user["user_id"] and me["device_id"] == first["device_id"]
    assert_token_revoked(any_server, first["access_token"])

    r = post(any_server, "/refresh", {"refresh_token": first["refresh_token"]})
    assert_error(r, 401, "M_UNKNOWN_TOKEN")
    # The new refresh token is unaffected, on the v1 path too.
    r = requests.post(
        any_server.url("/_matrix/client/v1/refresh"),
        json={"refresh_token": second["refresh_token"]},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def test_refresh_with_unknown_token_is_unknown_token(server: ServerProcess) -> None:
    assert_error(post(server, "/refresh", {"refresh_token": "hsr_made_up"}), 401, "M_UNKNOWN_TOKEN")


def test_logout_revokes_refresh_token(server: ServerProcess) -> None:
    user = new_user(server)
    session = server.login(user["username"], refresh_token=True)
    assert post(server, "/logout", {}, session["access_token"]).status_code == 200
    assert_error(
        post(server, "/refresh", {"refresh_token": session["refresh_token"]}), 401, "M_UNKNOWN_TOKEN"
    )


# Capabilities -----------------------------------------------------------------------


def test_capabilities_advertise_password_change_and_room_versions(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    r = get(any_server, "/capabilities", user["access_token"])
    assert r.status_code == 200
    caps = r.json()["capabilities"]
    assert caps["m.change_password"] == {"enabled": True}
    rooms = caps["m.room_versions"]
    assert rooms["default"] == "10"
    assert rooms["available"][rooms["default"]] == "stable"
    assert_error(get(any_server, "/capabilities"), 401, "M_MISSING_TOKEN")


# Profiles ---------------------------------------------------------------------------


def test_profile_set_and_get(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    uid, token = user["user_id"], user["access_token"]
    # A new account's display name is its localpart.
    assert get(any_server, f"/profile/{uid}").json() == {"displayname": user["username"]}

    assert put(any_server, f"/profile/{uid}/displayname", {"displayname": "Zoë"}, token).status_code == 200
    avatar = "mxc://example.org/SEsfnsuifSDFSSEF"
    assert put(any_server, f"/profile/{uid}/avatar_url", {"avatar_url": avatar}, token).status_code == 200

    # Reading needs no token.
    r = get(any_server, f"/profile/{uid}")
    assert r.status_code == 200
    assert r.json() == {"displayname": "Zoë", "avatar_url": avatar}
    assert get(any_server, f"/profile/{uid}/displayname").json() == {"displayname": "Zoë"}
    assert get(any_server, f"/profile/{uid}/avatar_url").json() == {"avatar_url": avatar}


def test_profile_of_unknown_user_is_not_found(server: ServerProcess) -> None:
    r = get(server, f"/profile/@{new_name('ghost')}:{server.server_name}")
    assert_error(r, 404, "M_NOT_FOUND")


def test_cannot_set_someone_elses_profile(server: ServerProcess) -> None:
    alice, bob = new_user(server, "alice"), new_user(server, "bob")
    r = put(server, f"/profile/{bob['user_id']}/displayname", {"displayname": "Pwned"}, alice["access_token"])
    assert_error(r, 403, "M_FORBIDDEN")
    assert get(server, f"/profile/{bob['user_id']}").json()["displayname"] == bob["username"]
    r = put(server, f"/profile/{alice['user_id']}/displayname", {"displayname": "x"})
    assert_error(r, 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("avatar_url", "https://example.org/cat.png"),
        ("avatar_url", 42),
        ("displayname", ["not", "a", "string"]),
        ("displayname", "x" * 300),
    ],
)
def test_bad_profile_values_are_rejected(server: ServerProcess, field: str, value: Any) -> None:
    user = new_user(server)
    r = put(server, f"/profile/{user['user_id']}/{field}", {field: value}, user["access_token"])
    assert r.status_code == 400, r.text
    assert r.json()["errcode"].startswith("M_")
    assert get(server, f"/profile/{user['user_id']}").json() == {"displayname": user["username"]}


# Deactivation -----------------------------------------------------------------------


def test_deactivate_account(any_server: ServerProcess) -> None:
    user = new_user(any_server)
    other = any_server.login(user["username"])
    token = user["access_token"]

    challenge = assert_uia_401(post(any_server, "/account/deactivate", {}, token), ["m.login.password"])
    r = post(
        any_server,
        "/account/deactivate",
        {"auth": password_auth(user["user_id"], "wrong!", challenge["session"])},
        token,
    )
    assert r.status_code == 401 and r.json()["errcode"] == "M_FORBIDDEN"
    assert get(any_server, "/account/whoami", token).status_code == 200

    r = post(
        any_server,
        "/account/deactivate",
        {"auth": password_auth(user["user_id"], PASSWORD, challenge["session"])},
        token,
    )
    assert r.status_code == 200, r.text
    assert r.json()["id_server_unbind_result"] in ("success", "no-support")

    assert_token_revoked(any_server, token)
    assert_token_revoked(any_server, other["access_token"])
    r = post(
        any_server,
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user["username"]},
            "password": PASSWORD,
        },
    )
    assert_error(r, 403, "M_USER_DEACTIVATED")
    # The user id is never handed out again.
    r = get(any_server, "/register/available", params={"username": user["username"]})
    assert_error(r, 400, "M_USER_IN_USE")


# CORS ----------------------------------------------------------------------------------


def test_responses_carry_cors_headers(server: ServerProcess) -> None:
    for r in (
        requests.get(server.url("/_matrix/client/versions"), timeout=10),
        get(server, "/account/whoami"),  # an error
        requests.get(server.url("/no/such/path"), timeout=10),
    ):
        assert r.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "path", ["/_matrix/client/v3/login", "/_matrix/client/v3/devices/ABC", "/anything/at/all"]
)
def test_options_preflight_answers_with_cors(server: ServerProcess, path: str) -> None:
    r = requests.options(
        server.url(path),
        headers={
            "Origin": "https://app.example.org",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    methods = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PUT", "DELETE", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
