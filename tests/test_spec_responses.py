"""Real responses checked against the Matrix spec's OpenAPI definitions (openapi-core).

The definitions are vendored in tests/matrix-spec/ (its README names the spec version),
so this module runs wherever the project is cloned and never skips.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
from conftest import ServerProcess
from openapi_core import OpenAPI
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse

SPEC = Path(__file__).resolve().parent / "matrix-spec" / "client-server.json"

PASSWORD = "spec responses passphrase"
V3 = "/_matrix/client/v3"


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC))


class Client:
    """Sends requests to a server and checks every response against the spec."""

    def __init__(self, spec: OpenAPI, server: ServerProcess) -> None:
        self.spec = spec
        self.server = server

    def __call__(
        self, method: str, path: str, body: Any = None, token: str | None = None, **kw: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = requests.request(method, self.server.url(path), json=body, headers=headers, timeout=10, **kw)
        u = urlsplit(r.url)
        request = MockRequest(f"{u.scheme}://{u.netloc}", method.lower(), unquote(u.path))
        response = MockResponse(r.content, r.status_code, content_type=r.headers.get("Content-Type", ""))
        self.spec.validate_response(request, response)
        return r


@pytest.fixture
def client(spec: OpenAPI, any_server: ServerProcess) -> Client:
    return Client(spec, any_server)


def register(client: Client) -> dict[str, Any]:
    username = f"spec{secrets.token_hex(4)}"
    body = {"username": username, "password": PASSWORD, "initial_device_display_name": "Spec test"}
    challenge = client("POST", V3 + "/register", body)
    assert challenge.status_code == 401
    session = challenge.json()["session"]
    r = client("POST", V3 + "/register", {**body, "auth": {"type": "m.login.dummy", "session": session}})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    result["username"] = username
    return result


def test_discovery_matches_spec(client: Client) -> None:
    assert client("GET", "/_matrix/client/versions").status_code == 200
    assert client("GET", "/.well-known/matrix/client").status_code == 200
    assert client("GET", V3 + "/login").status_code == 200


def test_register_responses_match_spec(client: Client) -> None:
    user = register(client)  # the 401 challenge and the 200 are both checked
    r = client("GET", V3 + "/register/available", params={"username": f"free{secrets.token_hex(4)}"})
    assert r.status_code == 200
    r = client("GET", V3 + "/register/available", params={"username": user["username"]})
    assert r.status_code == 400
    body = {"username": user["username"], "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    assert client("POST", V3 + "/register", body).status_code == 400
    body = {"username": f"spec{secrets.token_hex(4)}", "password": PASSWORD, "inhibit_login": True}
    assert client("POST", V3 + "/register", {**body, "auth": {"type": "m.login.dummy"}}).status_code == 200
    r = client("POST", V3 + "/register?kind=guest", {"password": PASSWORD})
    assert r.status_code == 403


def test_login_responses_match_spec(client: Client) -> None:
    user = register(client)
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user["username"]},
        "password": PASSWORD,
    }
    assert client("POST", V3 + "/login", login).status_code == 200
    r = client("POST", V3 + "/login", {**login, "refresh_token": True})
    assert r.status_code == 200
    assert client("POST", V3 + "/refresh", {"refresh_token": r.json()["refresh_token"]}).status_code == 200
    assert client("POST", V3 + "/login", {**login, "password": "wrong password"}).status_code == 403
    assert client("POST", V3 + "/login", {"type": "m.login.password"}).status_code == 400


def test_account_and_device_responses_match_spec(client: Client) -> None:
    user = register(client)
    token = user["access_token"]
    assert client("GET", V3 + "/account/whoami", token=token).status_code == 200
    assert client("GET", V3 + "/capabilities", token=token).status_code == 200

    # One device with a display name, one without (the spec says: absent, not null).
    bare = client(
        "POST",
        V3 + "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user["username"]},
            "password": PASSWORD,
        },
    ).json()
    devices = client("GET", V3 + "/devices", token=token)
    assert devices.status_code == 200
    assert len(devices.json()["devices"]) == 2
    assert client("GET", f"{V3}/devices/{user['device_id']}", token=token).status_code == 200
    assert client("GET", f"{V3}/devices/{bare['device_id']}", token=token).status_code == 200
    assert client("GET", f"{V3}/devices/NOSUCHDEVICE", token=token).status_code == 404
    r = client("PUT", f"{V3}/devices/{bare['device_id']}", {"display_name": "Renamed"}, token=token)
    assert r.status_code == 200

    challenge = client("DELETE", f"{V3}/devices/{bare['device_id']}", token=token)
    assert challenge.status_code == 401
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user["user_id"]},
        "password": PASSWORD,
        "session": challenge.json()["session"],
    }
    r = client("DELETE", f"{V3}/devices/{bare['device_id']}", {"auth": auth}, token=token)
    assert r.status_code == 200


def test_profile_responses_match_spec(client: Client) -> None:
    user = register(client)
    uid, token = user["user_id"], user["access_token"]
    assert (
        client("PUT", f"{V3}/profile/{uid}/displayname", {"displayname": "Spec"}, token=token).status_code
        == 200
    )
    avatar = {"avatar_url": "mxc://example.org/abc"}
    assert client("PUT", f"{V3}/profile/{uid}/avatar_url", avatar, token=token).status_code == 200
    assert client("GET", f"{V3}/profile/{uid}").status_code == 200
    assert client("GET", f"{V3}/profile/{uid}/displayname").status_code == 200
    assert client("GET", f"{V3}/profile/{uid}/avatar_url").status_code == 200
    assert (
        client("GET", f"{V3}/profile/@nobody{secrets.token_hex(3)}:{client.server.server_name}").status_code
        == 404
    )


def test_errors_not_listed_by_an_operation_still_have_the_error_shape(client: Client) -> None:
    """The spec's common errors (M_MISSING_TOKEN...) apply everywhere but few operations list them."""
    with pytest.raises(ResponseNotFound):
        client("GET", V3 + "/devices")
    r = requests.get(client.server.url(V3 + "/devices"), timeout=10)
    assert r.status_code == 401
    assert set(r.json()) == {"errcode", "error"}
