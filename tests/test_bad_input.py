"""Hostile and broken requests against a real server: bad bodies, malformed query
parameters, sizes, paths, methods, missing or forged tokens, password guessing,
and what ends up in the log.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml
from conftest import ServerProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
V3 = "/_matrix/client/v3"
PASSWORD = "bad-input-Pa55word-" + secrets.token_hex(4)

# Every token and password this module sends; the last test looks for them in the log.
USED_SECRETS: set[str] = {PASSWORD}


def new_user(server: ServerProcess) -> dict[str, Any]:
    username = f"bad{secrets.token_hex(4)}"
    body = server.register(username, PASSWORD)
    body["username"] = username
    USED_SECRETS.add(body["access_token"])
    return body


def bearer(token: str) -> dict[str, str]:
    USED_SECRETS.add(token)
    return {"Authorization": f"Bearer {token}"}


def raw(
    server: ServerProcess, method: str, path: str, data: Any, token: str | None = None
) -> requests.Response:
    headers = {"Content-Type": "application/json", **(bearer(token) if token else {})}
    return requests.request(method, server.url(path), data=data, headers=headers, timeout=10)


def call(
    server: ServerProcess, method: str, path: str, body: Any = None, token: str | None = None
) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.request(method, server.url(path), json=body, headers=headers, timeout=10)


def assert_error(r: requests.Response, status: int, errcode: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert body["errcode"] == errcode, body
    assert isinstance(body.get("error"), str), body
    return body


def password_login(user: Any, password: str) -> dict[str, Any]:
    USED_SECRETS.add(password)
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }


@pytest.fixture(scope="module")
def user(server: ServerProcess) -> dict[str, Any]:
    return new_user(server)


# Bodies that are not JSON objects -------------------------------------------------

JSON_ENDPOINTS = [
    ("POST", V3 + "/login"),
    ("POST", V3 + "/register"),
    ("POST", V3 + "/refresh"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/register"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize("data", [b"{not json", b"", b"   ", b'{"a": 1', b"\xff\xfe{}", b"NaNa"])
def test_malformed_json_is_not_json(server: ServerProcess, method: str, path: str, data: bytes) -> None:
    assert_error(raw(server, method, path, data), 400, "M_NOT_JSON")


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize(
    "data", [b"[]", b'[{"type": "m.login.password"}]', b'"text"', b"42", b"null", b"true"]
)
def test_json_that_is_not_an_object_is_bad_json(
    server: ServerProcess, method: str, path: str, data: bytes
) -> None:
    assert_error(raw(server, method, path, data), 400, "M_BAD_JSON")


def test_authenticated_endpoints_check_bodies_too(server: ServerProcess, user: dict[str, Any]) -> None:
    token = user["access_token"]
    path = f"{V3}/devices/{user['device_id']}"
    assert_error(raw(server, "PUT", path, b"{oops", token), 400, "M_NOT_JSON")
    assert_error(raw(server, "PUT", path, b"[1, 2]", token), 400, "M_BAD_JSON")
    assert_error(raw(server, "POST", V3 + "/account/password", b"{oops", token), 400, "M_NOT_JSON")
    uid = user["user_id"]
    assert_error(raw(server, "PUT", f"{V3}/profile/{uid}/displayname", b"[]", token), 400, "M_BAD_JSON")


# Fields of the wrong type -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}, "password": 12345678},
        {"type": "m.login.password", "identifier": "@someone:example.org", "password": "x"},
        {"type": "m.login.password", "identifier": ["m.id.user"], "password": "x"},
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": 7}, "password": "x"},
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": ""}, "password": "x"},
        {"type": 1, "identifier": {"type": "m.id.user", "user": "x"}, "password": "x"},
    ],
)
def test_login_fields_of_wrong_type_are_bad_json(server: ServerProcess, body: dict[str, Any]) -> None:
    assert_error(call(server, "POST", V3 + "/login", body), 400, "M_BAD_JSON")


@pytest.mark.parametrize(
    "extra", [{"refresh_token": "yes"}, {"device_id": 5}, {"initial_device_display_name": ["Phone"]}]
)
def test_login_options_of_wrong_type_are_bad_json_and_make_no_device(
    server: ServerProcess, user: dict[str, Any], extra: dict[str, Any]
) -> None:
    body = {**password_login(user["username"], PASSWORD), **extra}
    assert_error(call(server, "POST", V3 + "/login", body), 400, "M_BAD_JSON")
    devices = call(server, "GET", V3 + "/devices", token=user["access_token"]).json()["devices"]
    assert [d["device_id"] for d in devices] == [user["device_id"]]


@pytest.mark.parametrize(
    "extra",
    [
        {"username": 42},
        {"password": ["a", "list"]},
        {"auth": "m.login.dummy"},
        {"inhibit_login": "yes"},
        {"refresh_token": 1},
        {"device_id": {"id": "X"}},
        {"initial_device_display_name": 3},
    ],
)
def test_register_fields_of_wrong_type_are_bad_json_and_create_nothing(
    server: ServerProcess, extra: dict[str, Any]
) -> None:
    username = f"typed{secrets.token_hex(4)}"
    body = {"username": username, "password": PASSWORD, "auth": {"type": "m.login.dummy"}, **extra}
    assert_error(call(server, "POST", V3 + "/register", body), 400, "M_BAD_JSON")
    # A rejected request leaves no account behind, so the client can retry it fixed.
    r = requests.get(server.url(V3 + "/register/available"), params={"username": username}, timeout=10)
    assert r.json() == {"available": True}


def test_other_fields_of_wrong_type_are_bad_json(server: ServerProcess, user: dict[str, Any]) -> None:
    token, uid = user["access_token"], user["user_id"]
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": uid},
        "password": PASSWORD,
    }
    cases: list[tuple[str, str, Any]] = [
        ("PUT", f"{V3}/devices/{user['device_id']}", {"display_name": 5}),
        ("POST", V3 + "/delete_devices", {"devices": "ABC"}),
        ("POST", V3 + "/delete_devices", {"devices": [1, 2]}),
        ("POST", V3 + "/account/password", {"new_password": 123456789}),
        (
            "POST",
            V3 + "/account/password",
            {"new_password": "long enough pw", "logout_devices": "no", "auth": auth},
        ),
        ("POST", V3 + "/account/deactivate", {"auth": "password"}),
        ("PUT", f"{V3}/profile/{uid}/displayname", {"displayname": 5}),
        ("POST", "/api/auth/register", {"email": ["a@example.com"], "password": PASSWORD}),
        ("POST", "/api/auth/login", {"email": "a@example.com", "password": 5}),
        ("POST", "/api/auth/refresh", {"refreshToken": 5}),
    ]
    for method, path, body in cases:
        r = call(server, method, path, body, token)
        assert_error(r, 400, "M_BAD_JSON")
    # Nothing above changed the password or the account.
    assert server.login(user["username"], PASSWORD)["user_id"] == uid


# Missing parameters ---------------------------------------------------------------------


def test_missing_parameters_are_missing_param(server: ServerProcess, user: dict[str, Any]) -> None:
    token = user["access_token"]
    cases: list[tuple[str, str, Any]] = [
        ("POST", V3 + "/login", {"identifier": {"type": "m.id.user", "user": "x"}, "password": "x"}),
        (
            "POST",
            V3 + "/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}},
        ),
        ("POST", V3 + "/login", {"type": "m.login.password", "password": "x"}),
        ("POST", V3 + "/register", {"username": "nopassword", "auth": {"type": "m.login.dummy"}}),
        ("POST", V3 + "/refresh", {}),
        ("POST", V3 + "/account/password", {}),
        ("POST", V3 + "/delete_devices", {}),
        ("POST", "/api/auth/register", {"password": PASSWORD}),
        ("POST", "/api/auth/register", {"email": "someone@example.com"}),
        ("POST", "/api/auth/login", {"email": "someone@example.com"}),
        ("POST", "/api/auth/refresh", {}),
    ]
    for method, path, body in cases:
        assert_error(call(server, method, path, body, token), 400, "M_MISSING_PARAM")
    r = requests.get(server.url(V3 + "/register/available"), timeout=10)
    assert_error(r, 400, "M_MISSING_PARAM")


def test_unknown_login_type_is_rejected(server: ServerProcess) -> None:
    r = call(server, "POST", V3 + "/login", {"type": "m.login.magic", "password": "x"})
    assert r.status_code in (400, 403)
    assert r.json()["errcode"] in ("M_UNKNOWN", "M_FORBIDDEN")


# Sizes ----------------------------------------------------------------------------------


def test_oversized_bodies_are_too_large(start_server: Any) -> None:
    small = start_server({"limits": {"max_request_body_size": "1K"}})
    big = json.dumps({"type": "m.login.password", "password": "x" * 10_240}).encode()

    # Announced with Content-Length.
    assert_error(raw(small, "POST", V3 + "/login", big), 413, "M_TOO_LARGE")
    assert_error(raw(small, "POST", "/api/auth/register", big), 413, "M_TOO_LARGE")

    # Streamed without a length (chunked): caught while it arrives.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    r = requests.post(
        small.url(V3 + "/login"), data=chunks(), headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_error(r, 413, "M_TOO_LARGE")

    # Under the cap the same endpoint answers as usual.
    r = call(small, "POST", V3 + "/login", {"type": "m.login.password", "password": "x"})
    assert_error(r, 400, "M_MISSING_PARAM")
    assert requests.get(small.url("/_matrix/client/versions"), timeout=10).status_code == 200


# Paths and methods ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", V3 + "/no_such_endpoint"),
        ("POST", V3 + "/no_such_endpoint"),
        ("GET", "/_matrix/client/v9/login"),
        ("GET", "/_matrix/client/v3/login/extra"),
        ("GET", "/"),
        ("DELETE", "/totally/unknown"),
    ],
)
def test_unknown_endpoint_is_unrecognized_404(server: ServerProcess, method: str, path: str) -> None:
    assert_error(call(server, method, path), 404, "M_UNRECOGNIZED")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", V3 + "/logout"),
        ("DELETE", V3 + "/login"),
        ("PUT", V3 + "/register"),
        ("POST", V3 + "/account/whoami"),
        ("POST", "/_matrix/client/versions"),
        ("GET", "/api/auth/login"),
    ],
)
def test_wrong_method_is_unrecognized_405(server: ServerProcess, method: str, path: str) -> None:
    assert_error(call(server, method, path), 405, "M_UNRECOGNIZED")


def test_head_on_a_get_endpoint_works(server: ServerProcess) -> None:
    r = requests.head(server.url("/_matrix/client/versions"), timeout=10)
    assert r.status_code == 200
    assert r.content == b""


# Tokens ---------------------------------------------------------------------------------------

AUTHENTICATED = [
    ("GET", V3 + "/account/whoami"),
    ("GET", V3 + "/devices"),
    ("GET", V3 + "/capabilities"),
    ("POST", V3 + "/logout"),
    ("POST", V3 + "/logout/all"),
    ("POST", "/api/auth/logout"),
]


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
def test_missing_token_is_missing_token(server: ServerProcess, method: str, path: str) -> None:
    assert_error(call(server, method, path, {}), 401, "M_MISSING_TOKEN")


def test_non_bearer_authorization_is_missing_token(server: ServerProcess, user: dict[str, Any]) -> None:
    for header in (f"Basic {user['access_token']}", "Bearer ", "Bearer"):
        r = requests.get(server.url(V3 + "/account/whoami"), headers={"Authorization": header}, timeout=10)
        assert_error(r, 401, "M_MISSING_TOKEN")


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def server_secret(server: ServerProcess) -> bytes:
    return (server.data_dir / "jwt.secret").read_text().strip().encode()


def assert_unknown_token(server: ServerProcess, token: str, soft_logout: bool) -> None:
    body = assert_error(call(server, "GET", V3 + "/account/whoami", token=token), 401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is soft_logout, body


def test_forged_tokens_are_unknown_token(server: ServerProcess) -> None:
    victim, attacker = new_user(server), new_user(server)
    real = victim["access_token"]
    claims = claims_of(real)
    now = int(time.time())
    assert claims["sub"] == victim["user_id"] and claims["iss"] == server.server_name

    header, _, signature = real.split(".")
    attacker_claims = claims_of(attacker["access_token"])
    forged = {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.",
        "alg None": f"{b64({'alg': 'None', 'typ': 'JWT'})}.{b64(claims)}.",
        "wrong key": jwt.encode(claims, "not the server's secret but long enough", algorithm="HS256"),
        "HS512 wrong key": jwt.encode(claims, "x" * 64, algorithm="HS512"),
        # The victim's claims under the attacker's (genuine) signature, and the other way round.
        "tampered sub": f"{header}.{b64({**attacker_claims, 'sub': victim['user_id']})}.{attacker['access_token'].split('.')[2]}",
        "tampered exp": f"{header}.{b64({**claims, 'exp': now + 10**8})}.{signature}",
        "garbage": secrets.token_urlsafe(40),
        "three dots": "a.b.c",
        "empty parts": "..",
        "jwt-ish garbage": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bm90IGEgc2lnbmF0dXJl",
        "unicode": "tøkén",
    }
    for name, token in forged.items():
        body = assert_error(call(server, "GET", V3 + "/account/whoami", token=token), 401, "M_UNKNOWN_TOKEN")
        assert body["soft_logout"] is False, (name, body)

    # The real tokens were not disturbed.
    assert call(server, "GET", V3 + "/account/whoami", token=real).json()["user_id"] == victim["user_id"]
    assert call(server, "GET", V3 + "/account/whoami", token=attacker["access_token"]).status_code == 200


def test_genuinely_signed_tokens_still_need_a_live_session(server: ServerProcess) -> None:
    victim, attacker = new_user(server), new_user(server)
    secret = server_secret(server)
    claims, attacker_claims = claims_of(victim["access_token"]), claims_of(attacker["access_token"])

    def sign(c: dict[str, Any]) -> str:
        return jwt.encode(c, secret, algorithm="HS256")

    # Expired: the client may refresh or log in again (soft logout).
    expired = sign({**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})
    assert_unknown_token(server, expired, soft_logout=True)

    # The rest are hard failures: no such session, or a session of someone else.
    assert_unknown_token(server, sign({**claims, "jti": secrets.token_urlsafe(16)}), soft_logout=False)
    assert_unknown_token(server, sign({**attacker_claims, "sub": victim["user_id"]}), soft_logout=False)
    assert_unknown_token(server, sign({**attacker_claims, "did": victim["device_id"]}), soft_logout=False)
    assert_unknown_token(server, sign({**claims, "iss": "evil.example.org"}), soft_logout=False)
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    assert_unknown_token(server, sign(no_exp), soft_logout=False)

    # A logged-out session stays dead even though its token is correctly signed and unexpired.
    session = server.login(victim["username"], PASSWORD)
    USED_SECRETS.add(session["access_token"])
    assert call(server, "POST", V3 + "/logout", {}, session["access_token"]).status_code == 200
    assert_unknown_token(server, session["access_token"], soft_logout=False)
    assert_unknown_token(server, sign(claims_of(session["access_token"])), soft_logout=False)

    assert call(server, "GET", V3 + "/account/whoami", token=victim["access_token"]).status_code == 200


# Rate limits -------------------------------------------------------------------------------------


def default_rate_limits() -> dict[str, Any]:
    """The shipped config's limits (the test fixtures relax them)."""
    limits: dict[str, Any] = yaml.safe_load((ROOT / "config" / "homeserver.yaml").read_text())["rate_limits"]
    return limits


def assert_limited(r: requests.Response) -> None:
    body = assert_error(r, 429, "M_LIMIT_EXCEEDED")
    assert isinstance(body["retry_after_ms"], int) and not isinstance(body["retry_after_ms"], bool)
    assert body["retry_after_ms"] > 0
    assert int(r.headers["Retry-After"]) >= 1


def test_repeated_wrong_passwords_lock_that_account_only(start_server: Any) -> None:
    limits = default_rate_limits()
    burst = limits["login_failures_per_account"]["burst"]
    assert burst + 5 <= limits["login_per_ip"]["burst"], "the IP limit would hit first"
    limited = start_server({"rate_limits": limits})
    alice, bob = new_user(limited), new_user(limited)
    login = V3 + "/login"

    for _ in range(burst):
        assert_error(
            call(limited, "POST", login, password_login(alice["username"], "wrong guess")), 403, "M_FORBIDDEN"
        )
    assert_limited(call(limited, "POST", login, password_login(alice["username"], "wrong guess")))
    # Locked: even the right password waits, so guessing cannot go on.
    assert_limited(call(limited, "POST", login, password_login(alice["username"], PASSWORD)))
    # The same account by its full id is the same account.
    assert_limited(call(limited, "POST", login, password_login(alice["user_id"], "wrong guess")))

    # Another account from the same IP is not locked by Alice's failures.
    assert call(limited, "POST", login, password_login(bob["username"], PASSWORD)).status_code == 200
    assert_error(
        call(limited, "POST", login, password_login(bob["username"], "wrong guess")), 403, "M_FORBIDDEN"
    )
    # Alice's existing session is unaffected.
    assert call(limited, "GET", V3 + "/account/whoami", token=alice["access_token"]).status_code == 200
    assert PASSWORD not in limited.log_text()


def test_login_and_registration_are_limited_per_ip(start_server: Any) -> None:
    limits = default_rate_limits()
    limited = start_server({"rate_limits": limits})
    login_burst = limits["login_per_ip"]["burst"]
    register_burst = limits["register_per_ip"]["burst"]

    users = [new_user(limited) for _ in range(register_burst)]
    r = call(
        limited,
        "POST",
        V3 + "/register",
        {"username": f"one{secrets.token_hex(3)}", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert_limited(r)
    r = call(limited, "POST", "/api/auth/register", {"email": "late@example.com", "password": PASSWORD})
    assert_limited(r)

    # Successful logins count against the IP too (spread over accounts so none is locked).
    for i in range(login_burst):
        r = call(limited, "POST", V3 + "/login", password_login(users[i % len(users)]["username"], PASSWORD))
        assert r.status_code == 200, r.text
        USED_SECRETS.add(r.json()["access_token"])
    assert_limited(call(limited, "POST", V3 + "/login", password_login(users[0]["username"], PASSWORD)))
    assert_limited(call(limited, "POST", "/api/auth/login", {"email": "x@example.com", "password": PASSWORD}))
    # Other endpoints are not limited.
    assert call(limited, "GET", V3 + "/account/whoami", token=users[0]["access_token"]).status_code == 200


def post_from(ip: str, server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST from another loopback address (all of 127.0.0.0/8 reaches 127.0.0.1)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(ip, 0))
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_guesses_spread_over_many_ips_still_lock_the_account(start_server: Any) -> None:
    limits = default_rate_limits()
    burst = limits["login_failures_per_account"]["burst"]
    limited = start_server({"rate_limits": limits})
    alice = new_user(limited)
    login = V3 + "/login"

    for i in range(burst):
        status, body = post_from(
            f"127.0.0.{10 + i}", limited, login, password_login(alice["username"], "guess")
        )
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = post_from("127.0.0.99", limited, login, password_login(alice["username"], "guess"))
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0
    # The requests really came from different addresses.
    log = limited.wait_for_log("127.0.0.10 POST", "127.0.0.99 POST")
    assert "127.0.0.10 POST" in log and "127.0.0.99 POST" in log


def test_ip_limit_is_per_address(start_server: Any) -> None:
    limits = default_rate_limits()
    limited = start_server({"rate_limits": limits})
    users = [new_user(limited) for _ in range(2)]
    login = V3 + "/login"
    for i in range(limits["login_per_ip"]["burst"]):
        status, _ = post_from("127.0.0.2", limited, login, password_login(users[i % 2]["username"], PASSWORD))
        assert status == 200
    status, body = post_from("127.0.0.2", limited, login, password_login(users[0]["username"], PASSWORD))
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    # Another address is not held back by the first one's requests.
    status, body = post_from("127.0.0.3", limited, login, password_login(users[0]["username"], PASSWORD))
    assert status == 200
    USED_SECRETS.add(body["access_token"])


# Malformed parameters of every route: a 4xx with a Matrix error code, never a 500 -------------

DEEP_JSON = "[" * 5000 + "]" * 5000
HUGE = "9" * 30  # past any 64-bit integer column
ODD_DIGITS = "²"  # str.isdigit() says yes, int() says no


@pytest.fixture(scope="module")
def places(server: ServerProcess, user: dict[str, Any]) -> dict[str, str]:
    return room_with_a_message(server, user)


def room_with_a_message(server: ServerProcess, user: dict[str, Any]) -> dict[str, str]:
    """A room with one message, for the paths that need them."""
    token = user["access_token"]
    room = call(server, "POST", V3 + "/createRoom", {}, token).json()["room_id"]
    r = call(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/places", {"body": "x"}, token)
    return {"room": room, "event": r.json()["event_id"], "user": user["user_id"]}


# (path, query parameters, status, errcode); {room}, {event} and {user} are filled in.
BAD_QUERIES: list[tuple[str, dict[str, str], int, str]] = [
    (V3 + "/publicRooms", {"limit": "abc"}, 400, "M_INVALID_PARAM"),
    (V3 + "/publicRooms", {"limit": "1e3"}, 400, "M_INVALID_PARAM"),
    (V3 + "/publicRooms", {"limit": HUGE}, 400, "M_INVALID_PARAM"),
    (V3 + "/publicRooms", {"since": "n" + ODD_DIGITS}, 400, "M_INVALID_PARAM"),
    (V3 + "/publicRooms", {"since": "n" + "9" * 5000}, 400, "M_INVALID_PARAM"),
    (V3 + "/publicRooms", {"since": "garbage"}, 400, "M_INVALID_PARAM"),
    (V3 + "/sync", {"timeout": "soon"}, 400, "M_INVALID_PARAM"),
    (V3 + "/sync", {"filter": ODD_DIGITS}, 400, "M_INVALID_PARAM"),
    (V3 + "/sync", {"filter": HUGE}, 400, "M_INVALID_PARAM"),
    (V3 + "/sync", {"filter": "{" + '"a":{' * 3000}, 400, "M_BAD_JSON"),
    (V3 + "/sync", {"since": "s" + HUGE}, 400, "M_INVALID_PARAM"),
    (V3 + "/rooms/{room}/messages", {"from": "p" + ODD_DIGITS}, 400, "M_INVALID_PARAM"),
    (V3 + "/rooms/{room}/messages", {"to": "p" + HUGE}, 400, "M_INVALID_PARAM"),
    (V3 + "/rooms/{room}/messages", {"to": "s" + HUGE}, 400, "M_INVALID_PARAM"),
    (V3 + "/rooms/{room}/messages", {"filter": DEEP_JSON}, 400, "M_BAD_JSON"),
    (V3 + "/rooms/{room}/messages", {"limit": "ten"}, 400, "M_INVALID_PARAM"),
    (V3 + "/rooms/{room}/messages", {"dir": "sideways"}, 400, "M_INVALID_PARAM"),
    (V3 + "/rooms/{room}/context/{event}", {"limit": "1.5"}, 400, "M_INVALID_PARAM"),
    ("/_matrix/client/v1/rooms/{room}/relations/{event}", {"from": "p" + HUGE}, 400, "M_INVALID_PARAM"),
    ("/_matrix/client/v1/rooms/{room}/relations/{event}", {"limit": "-"}, 400, "M_INVALID_PARAM"),
    (V3 + "/keys/changes", {"from": "s1", "to": "s" + HUGE}, 400, "M_INVALID_PARAM"),
    ("/api/messages/{room}", {"before": "p" + ODD_DIGITS}, 400, "M_INVALID_PARAM"),
    ("/api/messages/{room}", {"limit": "many"}, 400, "M_INVALID_PARAM"),
    (V3 + "/room_keys/keys", {"version": ODD_DIGITS}, 404, "M_NOT_FOUND"),
    (V3 + "/room_keys/keys", {"version": HUGE}, 404, "M_NOT_FOUND"),
    (V3 + "/user/{user}/filter/" + ODD_DIGITS, {}, 404, "M_NOT_FOUND"),
    (V3 + "/user/{user}/filter/" + HUGE, {}, 404, "M_NOT_FOUND"),
    (V3 + "/room_keys/version/" + ODD_DIGITS, {}, 404, "M_NOT_FOUND"),
    (V3 + "/room_keys/version/" + HUGE, {}, 404, "M_NOT_FOUND"),
]


@pytest.mark.parametrize(("path", "params", "status", "errcode"), BAD_QUERIES)
def test_malformed_query_parameters_are_client_errors(
    server: ServerProcess,
    user: dict[str, Any],
    places: dict[str, str],
    path: str,
    params: dict[str, str],
    status: int,
    errcode: str,
) -> None:
    r = requests.get(
        server.url(path.format(**places)), params=params, headers=bearer(user["access_token"]), timeout=10
    )
    assert_error(r, status, errcode)


# (method, path, body, status, errcode)
BAD_BODIES: list[tuple[str, str, Any, int, str]] = [
    ("POST", V3 + "/createRoom", {"preset": ["private_chat"]}, 400, "M_BAD_JSON"),
    ("POST", V3 + "/createRoom", {"preset": {"a": 1}}, 400, "M_BAD_JSON"),
    ("POST", V3 + "/createRoom", {"preset": "party"}, 400, "M_INVALID_PARAM"),
    (
        "POST",
        V3 + "/createRoom",
        {"initial_state": [{"type": "m.x", "state_key": {"a": 1}, "content": {}}]},
        400,
        "M_BAD_JSON",
    ),
    ("POST", V3 + "/publicRooms", {"filter": "rooms"}, 400, "M_BAD_JSON"),
    ("POST", V3 + "/publicRooms", {"filter": {"generic_search_term": 5}}, 400, "M_BAD_JSON"),
    ("POST", V3 + "/publicRooms", {"limit": "10"}, 400, "M_BAD_JSON"),
    ("POST", V3 + "/publicRooms", {"since": "n" + ODD_DIGITS}, 400, "M_INVALID_PARAM"),
    (
        "POST",
        V3 + "/register",
        {"password": PASSWORD, "auth": {"type": ["m.login.dummy"]}},
        400,
        "M_BAD_JSON",
    ),
    ("POST", V3 + "/account/password", {"new_password": PASSWORD, "auth": {"type": {}}}, 400, "M_BAD_JSON"),
    (
        "POST",
        V3 + "/register/email/requestToken",
        {"client_secret": "abc", "email": "a@example.com", "send_attempt": 2**70},
        400,
        "M_BAD_JSON",
    ),
    ("PUT", V3 + "/rooms/{room}/state/m.room.canonical_alias", {"alt_aliases": 5}, 400, "M_BAD_JSON"),
    ("PUT", V3 + "/rooms/{room}/typing/{user}", {"typing": True, "timeout": 2**60}, 400, "M_BAD_JSON"),
    (
        "POST",
        V3 + "/keys/device_signing/upload",
        {"master_key": {"user_id": "{user}", "usage": 5, "keys": {"ed25519:a": "a"}}},
        400,
        "M_INVALID_PARAM",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "errcode"), BAD_BODIES)
def test_malformed_body_fields_are_client_errors(
    server: ServerProcess,
    user: dict[str, Any],
    places: dict[str, str],
    method: str,
    path: str,
    body: Any,
    status: int,
    errcode: str,
) -> None:
    body = json.loads(json.dumps(body).replace("{user}", places["user"]))
    assert_error(call(server, method, path.format(**places), body, user["access_token"]), status, errcode)


def test_nul_characters_are_refused_on_both_engines(any_server: ServerProcess) -> None:
    """PostgreSQL cannot store U+0000: every engine refuses it in paths, queries and bodies alike."""
    alice = new_user(any_server)
    token, uid = alice["access_token"], alice["user_id"]
    room = call(any_server, "POST", V3 + "/createRoom", {}, token).json()["room_id"]
    nul = "a\u0000b"
    bodies: list[tuple[str, str, Any]] = [
        ("PUT", f"{V3}/profile/{uid}/displayname", {"displayname": nul}),
        ("PUT", f"{V3}/devices/{alice['device_id']}", {"display_name": nul}),
        ("PUT", f"{V3}/rooms/{room}/send/m.room.message/n1", {"body": nul}),
        ("POST", V3 + "/createRoom", {"room_alias_name": nul}),
        ("PUT", f"{V3}/presence/{uid}/status", {"presence": "online", "status_msg": nul}),
        ("POST", "/api/auth/register", {"email": "a\u0000b@example.com", "password": PASSWORD}),
        ("POST", V3 + "/keys/query", {"device_keys": {nul: []}}),
        ("POST", "/api/messages/send", {"chatId": room, "content": "x", "clientMessageId": nul}),
    ]
    for method, path, body in bodies:
        assert_error(call(any_server, method, path, body, token), 400, "M_BAD_JSON")
    for method, path in [
        ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t%00"),
        ("PUT", f"{V3}/user/{uid}/account_data/m.x%00"),
        ("GET", f"{V3}/directory/room/%23a%00b:{any_server.server_name}"),
        ("GET", f"{V3}/devices/a%00"),
        ("GET", f"{V3}/profile/@a%00:x"),
    ]:
        assert_error(call(any_server, method, path, {"body": "x"}, token), 400, "M_INVALID_PARAM")
    r = requests.get(
        any_server.url("/_homeserver/email/validate"),
        params={"sid": nul, "client_secret": "x", "token": "y"},
        timeout=10,
    )
    assert_error(r, 400, "M_INVALID_PARAM")
    # Nothing was stored, and the account still works.
    assert call(any_server, "GET", f"{V3}/profile/{uid}", token=token).json() == {
        "displayname": alice["user_id"][1:].split(":")[0]
    }
    assert "Traceback" not in any_server.log_text()


def test_a_send_attempt_past_32_bits_is_invalid_param_on_both_engines(any_server: ServerProcess) -> None:
    """`send_attempt` is stored in a 32-bit column: 2**31 was a 500 on PostgreSQL (integer
    out of range), and that without a token."""
    for path in (V3 + "/register/email/requestToken", V3 + "/account/password/email/requestToken"):
        for attempt in (2**31, 2**53 - 1, -(2**31) - 1):
            body = {"client_secret": "abc", "email": "big@example.com", "send_attempt": attempt}
            assert_error(call(any_server, "POST", path, body), 400, "M_INVALID_PARAM")
    body = {"client_secret": "abc", "email": "big@example.com", "send_attempt": 2**31 - 1}
    r = call(any_server, "POST", V3 + "/register/email/requestToken", body)
    assert r.status_code == 200, r.text
    assert "Traceback" not in any_server.log_text()


# Any JSON in the fields each route reads: never a server error ------------------------------

FUZZED_ROUTES: list[tuple[str, str, list[str]]] = [
    (
        "POST",
        V3 + "/createRoom",
        [
            "preset",
            "visibility",
            "room_version",
            "invite",
            "initial_state",
            "creation_content",
            "power_level_content_override",
            "name",
            "topic",
            "room_alias_name",
            "is_direct",
        ],
    ),
    ("POST", V3 + "/publicRooms", ["limit", "since", "filter"]),
    (
        "POST",
        V3 + "/register",
        [
            "username",
            "password",
            "auth",
            "device_id",
            "inhibit_login",
            "initial_device_display_name",
            "refresh_token",
        ],
    ),
    ("POST", V3 + "/login", ["type", "identifier", "password", "user", "medium", "address", "device_id"]),
    ("POST", V3 + "/register/email/requestToken", ["client_secret", "email", "send_attempt"]),
    ("POST", V3 + "/rooms/{room}/invite", ["user_id", "reason"]),
    ("POST", V3 + "/rooms/{room}/read_markers", ["m.fully_read", "m.read", "m.read.private"]),
    ("PUT", V3 + "/rooms/{room}/typing/{user}", ["typing", "timeout"]),
    ("PUT", V3 + "/rooms/{room}/state/m.room.power_levels", ["users", "events", "users_default", "ban"]),
    ("PUT", V3 + "/rooms/{room}/state/m.room.canonical_alias", ["alias", "alt_aliases"]),
    ("PUT", V3 + "/rooms/{room}/send/m.reaction/{txn}", ["m.relates_to"]),
    ("PUT", V3 + "/rooms/{room}/redact/{event}/{txn}", ["reason"]),
    ("POST", V3 + "/user/{user}/filter", ["room", "presence", "account_data", "event_fields"]),
    ("POST", V3 + "/keys/upload", ["device_keys", "one_time_keys", "fallback_keys"]),
    ("POST", V3 + "/keys/query", ["device_keys"]),
    ("POST", V3 + "/keys/claim", ["one_time_keys"]),
    ("POST", V3 + "/keys/device_signing/upload", ["master_key", "self_signing_key", "user_signing_key"]),
    ("PUT", V3 + "/sendToDevice/m.test/{txn}", ["messages"]),
    ("POST", V3 + "/room_keys/version", ["algorithm", "auth_data"]),
    ("PUT", V3 + "/room_keys/keys/{room}?version=1", ["sessions"]),
    ("POST", "/api/messages/send", ["chatId", "receiverId", "content", "clientMessageId", "encrypted"]),
    ("POST", "/api/groups", ["name", "members", "encrypted"]),
    ("PUT", "/api/messages/{room}/{event}", ["content"]),
    ("POST", "/api/messages/{room}/read", ["messageId"]),
    ("PUT", "/api/groups/{room}/name", ["name"]),
    ("PUT", "/api/profile", ["displayName", "avatarContentUri"]),
]
_fuzz_txn = itertools.count()


def json_values(words: list[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=12),
        st.sampled_from(words),
    )
    keys = st.one_of(st.text(max_size=6), st.sampled_from(words))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
        max_leaves=6,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=st.sampled_from(FUZZED_ROUTES), data=st.data())
def test_no_json_in_any_field_makes_a_server_error(
    server: ServerProcess, user: dict[str, Any], places: dict[str, str], route: Any, data: Any
) -> None:
    any_json_in_fields(server, user, places, route, data)


@pytest.fixture(scope="module")
def pg_user_and_places(pg_server: ServerProcess) -> tuple[dict[str, Any], dict[str, str]]:
    user = new_user(pg_server)
    return user, room_with_a_message(pg_server, user)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=st.sampled_from(FUZZED_ROUTES), data=st.data())
def test_no_json_in_any_field_makes_a_server_error_on_postgres(
    pg_server: ServerProcess, pg_user_and_places: tuple[dict[str, Any], dict[str, str]], route: Any, data: Any
) -> None:
    """PostgreSQL's columns are typed (a 32-bit one took 2**31 with a 500, where SQLite stores it)."""
    any_json_in_fields(pg_server, *pg_user_and_places, route, data)


def any_json_in_fields(
    server: ServerProcess, user: dict[str, Any], places: dict[str, str], route: Any, data: Any
) -> None:
    method, path, fields = route
    words = [*places.values(), "", "*", "m.annotation", "type", "user_id", "keys", "usage", "rooms", "limit"]
    names = data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    body = {name: data.draw(json_values(words)) for name in names}
    url = path.format(**places, txn=f"fuzz{next(_fuzz_txn)}")
    r = call(server, method, url, body, user["access_token"])
    assert r.status_code < 500, (method, url, body, r.text)
    if r.status_code >= 400 and r.status_code != 401:
        assert isinstance(r.json().get("errcode"), str), (method, url, body, r.text)


# Last: the server survived all of the above and logged no secret -----------------------------------


def test_server_still_healthy_and_log_holds_no_secrets(server: ServerProcess) -> None:
    # Secrets in places a careless server might log them: query string, failed bodies, refresh.
    fresh = new_user(server)
    session = server.login(fresh["username"], PASSWORD, refresh_token=True)
    USED_SECRETS.update((session["access_token"], session["refresh_token"]))
    r = requests.get(
        server.url(V3 + "/account/whoami"), params={"access_token": session["access_token"]}, timeout=10
    )
    assert r.status_code == 200
    refreshed = call(server, "POST", V3 + "/refresh", {"refresh_token": session["refresh_token"]}).json()
    USED_SECRETS.update((refreshed["access_token"], refreshed["refresh_token"]))
    call(server, "POST", V3 + "/refresh", {"refresh_token": session["refresh_token"]})
    call(server, "POST", V3 + "/login", password_login(fresh["username"], "wrong-" + PASSWORD))
    raw(server, "POST", V3 + "/login", f'{{"password": "{PASSWORD}", oops'.encode())

    assert requests.get(server.url("/_matrix/client/versions"), timeout=10).status_code == 200
    assert server.login(fresh["username"], PASSWORD)["user_id"] == fresh["user_id"]
    assert server.process.poll() is None

    log = server.log_text()
    assert "POST /_matrix/client/v3/login" in log  # the access log is on, so there was something to leak
    leaked = sorted(s for s in USED_SECRETS if s and s in log)
    assert not leaked, f"secrets in the server log: {leaked}"
    assert "Traceback" not in log


# Values canonical JSON forbids ----------------------------------------------------------


def test_floats_and_unsafe_integers_in_events_are_bad_json(
    server: ServerProcess, user: dict[str, Any]
) -> None:
    token = user["access_token"]
    r = call(server, "POST", V3 + "/createRoom", {}, token)
    assert r.status_code == 200, r.text
    room = r.json()["room_id"]
    bad_contents: list[Any] = [
        {"msgtype": "m.text", "body": "x", "n": 1.5},
        {"msgtype": "m.text", "body": "x", "n": 2**60},
        {"msgtype": "m.text", "body": "x", "deep": {"list": [1, {"f": 0.25}]}},
    ]
    for i, content in enumerate(bad_contents):
        r = call(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/float{i}", content, token)
        assert_error(r, 400, "M_BAD_JSON")
    r = call(server, "PUT", f"{V3}/rooms/{room}/state/org.example.state/", {"n": 1e3}, token)
    assert_error(r, 400, "M_BAD_JSON")
    # Nothing was stored; the largest safe integer is fine.
    r = call(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/ok", {"body": "x", "n": 2**53 - 1}, token)
    assert r.status_code == 200, r.text
    r = requests.get(
        server.url(f"{V3}/rooms/{room}/messages"),
        params={"dir": "b", "limit": "50"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    sent = [e["content"] for e in r.json()["chunk"] if e["type"] in ("m.room.message", "org.example.state")]
    assert sent == [{"body": "x", "n": 2**53 - 1}]
