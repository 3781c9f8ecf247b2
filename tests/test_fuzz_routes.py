"""Random requests to the routes added for sliding sync, threads, tags, spaces, upgrades,
knocks, jump to date, the user directory, search, reports, the admin plugin, the data
export, registration tokens and metrics, against one real server process: odd path
segments, odd query strings, any JSON in the body, as a user, as an admin and with no
token. None may answer a server error, and every JSON error carries an errcode.

The seed and the example count are fixed, so a failure repeats. FUZZ_EXAMPLES raises the
count for a longer hunt (the suite's default keeps this module well under a minute).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests
from conftest import VENV_BIN, ServerProcess, server_on_engine
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
ADMIN = "/_synapse/admin"
PASSWORD = "fuzz routes passphrase 42"
METRICS_SECRET = "fuzz-metrics-secret-" + secrets.token_hex(8)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))

# (method, path template) of every operation this module fuzzes. Path parameters are
# filled from PLACES or with odd values; admin routes act on victims, not on the callers.
ROUTES: list[tuple[str, str]] = [
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"),
    ("GET", V1 + "/rooms/{room_id}/threads"),
    ("GET", V3 + "/user/{me}/rooms/{room_id}/tags"),
    ("PUT", V3 + "/user/{me}/rooms/{room_id}/tags/{tag}"),
    ("DELETE", V3 + "/user/{me}/rooms/{room_id}/tags/{tag}"),
    ("GET", V1 + "/rooms/{room_id}/hierarchy"),
    ("GET", V1 + "/room_summary/{room_id}"),
    ("POST", V3 + "/rooms/{room_id}/upgrade"),
    ("POST", V3 + "/knock/{room_id}"),
    ("GET", V1 + "/rooms/{room_id}/timestamp_to_event"),
    ("PUT", V3 + "/rooms/{room_id}/state/m.room.retention"),
    ("PUT", V3 + "/rooms/{room_id}/state/m.space.child/{room_id}"),
    ("POST", V3 + "/user_directory/search"),
    ("POST", V3 + "/search"),
    ("POST", V3 + "/rooms/{room_id}/report/{event_id}"),
    ("POST", V3 + "/rooms/{room_id}/report"),
    ("POST", V3 + "/users/{user_id}/report"),
    ("POST", "/api/me/export"),
    ("GET", "/api/me/export"),
    ("GET", "/api/me/export/{export_id}"),
    ("GET", "/api/me/export/{export_id}/download"),
    ("GET", V1 + "/register/m.login.registration_token/validity"),
    ("GET", "/_homeserver/metrics"),
    ("GET", "/_plugins/admin/audit_log"),
    ("GET", "/_plugins/admin/metrics/daily"),
    ("POST", "/_plugins/admin/users/{victim}/export"),
    ("GET", "/_plugins/admin/users/{victim}/exports"),
    ("GET", "/_plugins/admin/exports/{export_id}"),
    ("GET", "/_plugins/admin/exports/{export_id}/download"),
    ("GET", "/_admin/"),
    ("GET", "/_admin/{file}"),
    ("GET", ADMIN + "/v1/server_version"),
    ("GET", ADMIN + "/v1/background_updates/enabled"),
    ("GET", ADMIN + "/v1/background_updates/status"),
    ("GET", ADMIN + "/v1/event_reports"),
    ("GET", ADMIN + "/v1/event_reports/{report_id}"),
    ("DELETE", ADMIN + "/v1/event_reports/{report_id}"),
    ("GET", ADMIN + "/v1/registration_tokens"),
    ("POST", ADMIN + "/v1/registration_tokens/new"),
    ("GET", ADMIN + "/v1/registration_tokens/{token}"),
    ("PUT", ADMIN + "/v1/registration_tokens/{token}"),
    ("DELETE", ADMIN + "/v1/registration_tokens/{token}"),
    ("GET", ADMIN + "/v1/rooms"),
    ("GET", ADMIN + "/v1/rooms/{victim_room}"),
    ("GET", ADMIN + "/v1/rooms/{victim_room}/members"),
    ("GET", ADMIN + "/v1/rooms/{victim_room}/state"),
    ("GET", ADMIN + "/v1/rooms/{victim_room}/block"),
    ("PUT", ADMIN + "/v1/rooms/{victim_room}/block"),
    ("DELETE", ADMIN + "/v1/rooms/{victim_room}"),
    ("DELETE", ADMIN + "/v2/rooms/{victim_room}"),
    ("GET", ADMIN + "/v2/rooms/{victim_room}/delete_status"),
    ("GET", ADMIN + "/v2/rooms/delete_status/{delete_id}"),
    ("GET", ADMIN + "/v1/statistics/database/rooms"),
    ("GET", ADMIN + "/v1/statistics/users/media"),
    ("GET", ADMIN + "/v2/users"),
    ("GET", ADMIN + "/v2/users/{victim}"),
    ("PUT", ADMIN + "/v2/users/{victim}"),
    ("GET", ADMIN + "/v2/users/{victim}/devices"),
    ("GET", ADMIN + "/v1/users/{victim}/joined_rooms"),
    ("GET", ADMIN + "/v1/users/{victim}/media"),
    ("DELETE", ADMIN + "/v1/users/{victim}/media"),
    ("GET", ADMIN + "/v1/whois/{victim}"),
    ("POST", ADMIN + "/v1/deactivate/{victim}"),
    ("POST", ADMIN + "/v1/reset_password/{victim}"),
    ("PUT", ADMIN + "/v1/suspend/{victim}"),
    ("POST", ADMIN + "/v1/users/{victim}/shadow_ban"),
    ("DELETE", ADMIN + "/v1/users/{victim}/shadow_ban"),
    ("DELETE", ADMIN + "/v1/media/{server_name}/{media_id}"),
    ("POST", ADMIN + "/v1/media/quarantine/{server_name}/{media_id}"),
    ("POST", ADMIN + "/v1/media/unquarantine/{server_name}/{media_id}"),
]

# Names the handlers read, from bodies and query strings alike.
WORDS = [
    "limit", "from", "to", "dir", "ts", "since", "timeout", "include", "order_by", "search_term",
    "pos", "max_depth", "suggested_only", "lists", "ranges", "timeline_limit", "required_state",
    "filters", "is_dm", "is_invite", "tags", "not_tags", "room_subscriptions", "extensions",
    "conn_id", "search_categories", "room_events", "search_term", "keys", "filter", "order_by",
    "event_context", "groupings", "reason", "score", "new_version", "via", "server_name",
    "uses_allowed", "expiry_time", "length", "token", "block", "purge", "new_room_user_id",
    "erase", "deactivated", "admin", "password", "displayname", "threepids", "suspend",
    "logout_devices", "guests", "name", "user_id", "valid", "from_ts", "until_ts", "target",
    "method", "room_id", "enabled", "order", "emails", "order_by", "dir", "days",
]  # fmt: skip
ODD_SEGMENTS = ["", " ", "é☃", "x" * 3000, "@x", "!x:y", "$x", "..", "a/b", "%", "-1", "9" * 30]
ODD_QUERY_VALUES = [
    "", "-1", "0", "1", "f", "b", "true", "false", "9" * 20, "1e3", "1.5", "ÿ", "{", "[]",
    '{"limit": 1}', "x" * 3000, "m.room.message", "%", "rank", "recent", "s1", "t1-1",
]  # fmt: skip

SPEC = OpenAPI.from_file_path(str(Path(__file__).resolve().parent / "matrix-spec" / "client-server.json"))
SPEC_PATHS = (V3 + "/knock/", V3 + "/rooms/", V3 + "/search", V3 + "/user", V3 + "/users/", V1 + "/r")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    overrides: dict[str, Any] = {
        "plugins": [
            {"module": "plugins.admin.AdminPlugin", "config": {}},
            {"module": "plugins.media.MediaPlugin", "config": {}},
        ],
        "metrics": {"bearer_secret": METRICS_SECRET},
    }
    with server_on_engine(request, tmp_path_factory, request.param, overrides, "fuzz") as server:
        yield server


def register(server: ServerProcess, prefix: str) -> dict[str, Any]:
    return server.register(f"{prefix}{secrets.token_hex(4)}", PASSWORD)


def call(server: ServerProcess, method: str, path: str, token: str | None, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, server.url(path), headers=headers, timeout=20, **kw)


def ok(server: ServerProcess, method: str, path: str, token: str | None, **kw: Any) -> Any:
    r = call(server, method, path, token, **kw)
    assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> dict[str, Any]:
    """Callers (a user, an admin), victims for the admin routes, and real ids for every path."""
    localpart = f"admin{secrets.token_hex(4)}"
    made = subprocess.run(
        [str(VENV_BIN / "homeserver"), "admin", "create-user", "-c", str(server.config_path)]
        + ["--email", f"{localpart}@example.org", "--password", PASSWORD]
        + ["--username", localpart, "--admin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    admin = server.login(localpart, PASSWORD)
    alice, bob, victim = register(server, "alice"), register(server, "bob"), register(server, "victim")
    token = alice["access_token"]
    room = ok(server, "POST", V3 + "/createRoom", token, json={"preset": "public_chat"})["room_id"]
    ok(server, "POST", f"{V3}/join/{room}", bob["access_token"], json={})
    root = ok(
        server,
        "PUT",
        f"{V3}/rooms/{room}/send/m.room.message/r1",
        token,
        json={"msgtype": "m.text", "body": "hi"},
    )["event_id"]
    reply = {
        "msgtype": "m.text",
        "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root},
    }
    ok(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/r2", token, json=reply)
    space = ok(server, "POST", V3 + "/createRoom", token, json={"creation_content": {"type": "m.space"}})
    ok(server, "PUT", f"{V3}/rooms/{space['room_id']}/state/m.space.child/{room}", token, json={"via": ["x"]})
    knockable = ok(
        server, "POST", V3 + "/createRoom", bob["access_token"], json={"initial_state": [
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ]},
    )["room_id"]  # fmt: skip
    victim_room = ok(server, "POST", V3 + "/createRoom", victim["access_token"], json={})["room_id"]
    ok(server, "POST", f"{V3}/rooms/{room}/report/{root}", bob["access_token"], json={"reason": "x"})
    export = call(server, "POST", "/api/me/export", token, json={})
    assert export.status_code == 202, export.text
    export_id = export.json()["id"]
    reg_token = ok(server, "POST", ADMIN + "/v1/registration_tokens/new", admin["access_token"], json={})
    upload = requests.post(
        server.url("/_matrix/media/v3/upload"),
        data=b"fuzz",
        headers={"Authorization": f"Bearer {victim['access_token']}", "Content-Type": "text/plain"},
        timeout=20,
    )
    media_id = upload.json()["content_uri"].rsplit("/", 1)[1] if upload.status_code == 200 else "m1"
    places = {
        "me": [alice["user_id"], bob["user_id"]],
        "room_id": [room, space["room_id"], knockable, victim_room],
        "event_id": [root],
        "user_id": [bob["user_id"], victim["user_id"]],
        "tag": ["u.work", "m.favourite"],
        "export_id": [export_id],
        "report_id": ["1", "2"],
        "token": [reg_token["token"]],
        "victim_room": [victim_room],
        "delete_id": ["d1"],
        "victim": [victim["user_id"]],
        "server_name": [server.server_name],
        "media_id": [media_id],
        "file": ["index.html", "app.js", "style.css", "../__init__.py", "static/../../config.py"],
    }
    return {
        "places": places,
        "bases": base_requests(places),
        "tokens": [token, admin["access_token"], bob["access_token"]],
        "alice": alice,
        "admin": admin,
    }


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.sampled_from(WORDS + ODD_QUERY_VALUES[:12]),
    )
    keys = st.one_of(st.text(max_size=6), st.sampled_from(WORDS))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
        max_leaves=10,
    )


def base_requests(places: dict[str, list[str]]) -> dict[tuple[str, str], tuple[dict[str, str], Any]]:
    """A valid query and body for routes that take them: mutated one field at a time, they
    reach the rules behind the parsers, where random bodies rarely get."""
    room, me, server_name = places["room_id"][0], places["me"][0], places["server_name"][0]
    sliding = {
        "lists": {
            "all": {
                "ranges": [[0, 10]],
                "timeline_limit": 5,
                "required_state": [["*", "*"], ["m.room.member", "$LAZY"]],
                "filters": {
                    "is_dm": False,
                    "is_invite": False,
                    "tags": ["u.work"],
                    "not_tags": ["m.lowpriority"],
                },
            }
        },
        "room_subscriptions": {room: {"timeline_limit": 2, "required_state": [["m.room.name", ""]]}},
        "extensions": {
            name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")
        },
        "conn_id": "fuzz",
    }
    search = {
        "search_categories": {
            "room_events": {
                "search_term": "hi",
                "keys": ["content.body"],
                "order_by": "rank",
                "filter": {"limit": 5, "rooms": [room]},
                "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": True},
                "groupings": {"group_by": [{"key": "room_id"}]},
                "include_state": True,
            }
        }
    }
    page = {"from": "0", "limit": "5", "dir": "b"}
    return {
        ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"): ({"timeout": "0"}, sliding),
        ("GET", V1 + "/rooms/{room_id}/threads"): ({"include": "participated", "limit": "5"}, None),
        ("PUT", V3 + "/user/{me}/rooms/{room_id}/tags/{tag}"): ({}, {"order": 0.5}),
        ("GET", V1 + "/rooms/{room_id}/hierarchy"): (
            {"limit": "5", "max_depth": "2", "suggested_only": "false"},
            None,
        ),
        ("GET", V1 + "/room_summary/{room_id}"): ({"via": server_name}, None),
        ("POST", V3 + "/rooms/{room_id}/upgrade"): ({}, {"new_version": "11"}),
        ("POST", V3 + "/knock/{room_id}"): ({"via": server_name}, {"reason": "let me in"}),
        ("GET", V1 + "/rooms/{room_id}/timestamp_to_event"): ({"ts": "1800000000000", "dir": "b"}, None),
        ("PUT", V3 + "/rooms/{room_id}/state/m.room.retention"): (
            {},
            {"max_lifetime": 86_400_000, "min_lifetime": 3_600_000},
        ),
        ("PUT", V3 + "/rooms/{room_id}/state/m.space.child/{room_id}"): (
            {},
            {"via": [server_name], "order": "a", "suggested": True},
        ),
        ("POST", V3 + "/user_directory/search"): ({}, {"search_term": "ali", "limit": 5}),
        ("POST", V3 + "/search"): ({}, search),
        ("POST", V3 + "/rooms/{room_id}/report/{event_id}"): ({}, {"reason": "spam", "score": -100}),
        ("POST", V3 + "/rooms/{room_id}/report"): ({}, {"reason": "spam"}),
        ("POST", V3 + "/users/{user_id}/report"): ({}, {"reason": "spam"}),
        ("GET", V1 + "/register/m.login.registration_token/validity"): ({"token": places["token"][0]}, None),
        ("GET", "/_plugins/admin/audit_log"): ({**page, "user_id": me, "target": room}, None),
        ("GET", "/_plugins/admin/metrics/daily"): ({"days": "7"}, None),
        ("GET", ADMIN + "/v1/event_reports"): ({**page, "room_id": room, "user_id": me}, None),
        ("GET", ADMIN + "/v1/registration_tokens"): ({"valid": "true"}, None),
        ("POST", ADMIN + "/v1/registration_tokens/new"): (
            {},
            {"uses_allowed": 3, "expiry_time": 1_900_000_000_000, "length": 16},
        ),
        ("PUT", ADMIN + "/v1/registration_tokens/{token}"): ({}, {"uses_allowed": 5, "expiry_time": None}),
        ("GET", ADMIN + "/v1/rooms"): ({**page, "order_by": "joined_members", "search_term": "a"}, None),
        ("PUT", ADMIN + "/v1/rooms/{victim_room}/block"): ({}, {"block": True}),
        ("DELETE", ADMIN + "/v1/rooms/{victim_room}"): ({}, {"block": False, "purge": True}),
        ("DELETE", ADMIN + "/v2/rooms/{victim_room}"): ({}, {"block": False, "purge": False}),
        ("GET", ADMIN + "/v1/statistics/users/media"): (
            {**page, "order_by": "media_length", "from_ts": "0", "until_ts": "9", "search_term": "v"},
            None,
        ),
        ("GET", ADMIN + "/v2/users"): (
            {**page, "guests": "false", "name": "v", "deactivated": "true", "order_by": "creation_ts"},
            None,
        ),
        ("PUT", ADMIN + "/v2/users/{victim}"): (
            {},
            {
                "displayname": "Victim",
                "admin": False,
                "deactivated": False,
                "threepids": [{"medium": "email", "address": "victim@example.org"}],
                "password": "a new victim passphrase",
                "logout_devices": False,
            },
        ),
        ("GET", ADMIN + "/v1/users/{victim}/media"): ({**page, "order_by": "media_length"}, None),
        ("POST", ADMIN + "/v1/deactivate/{victim}"): ({}, {"erase": False}),
        ("POST", ADMIN + "/v1/reset_password/{victim}"): (
            {},
            {"new_password": "x" * 12, "logout_devices": False},
        ),
        ("PUT", ADMIN + "/v1/suspend/{victim}"): ({}, {"suspend": True}),
        ("POST", ADMIN + "/v1/users/{victim}/shadow_ban"): ({}, None),
    }


def mutate(value: Any, data: Any, depth: int = 0) -> Any:
    """`value` with one part replaced, dropped or added somewhere inside it."""
    if depth > 4 or not isinstance(value, (dict, list)) or not value:
        return data.draw(json_values(), label="replacement")
    action = data.draw(st.sampled_from(["descend", "descend", "replace", "drop", "add"]), label="action")
    if action == "replace":
        return data.draw(json_values(), label="replacement")
    if isinstance(value, dict):
        key = data.draw(st.sampled_from(sorted(value)), label="key")
        if action == "drop":
            return {k: v for k, v in value.items() if k != key}
        if action == "add":
            return {**value, data.draw(st.sampled_from(WORDS), label="new key"): data.draw(json_values())}
        return {**value, key: mutate(value[key], data, depth + 1)}
    index = data.draw(st.integers(0, len(value) - 1), label="index")
    if action == "drop":
        return value[:index] + value[index + 1 :]
    if action == "add":
        return [*value, data.draw(json_values(), label="new item")]
    return [*value[:index], mutate(value[index], data, depth + 1), *value[index + 1 :]]


def fill(template: str, places: dict[str, list[str]], data: Any) -> str:
    """The path with each parameter a real id, mostly, or an odd segment."""
    path = template
    while "{" in path:
        name = path[path.index("{") + 1 : path.index("}")]
        odd = data.draw(st.integers(0, 4), label=f"{name} odd") == 0
        value = data.draw(st.sampled_from(ODD_SEGMENTS if odd else places[name]), label=name)
        path = path.replace("{" + name + "}", quote(value, safe=""), 1)
    return path


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(20261206)
@given(route=st.sampled_from(ROUTES), data=st.data())
def test_no_odd_request_makes_a_server_error(
    server: ServerProcess, world: dict[str, Any], route: tuple[str, str], data: Any
) -> None:
    method, template = route
    path = fill(template, world["places"], data)
    base_query, base_body = world["bases"].get(route, ({}, None))
    odd_query = data.draw(
        st.dictionaries(
            st.sampled_from(WORDS), st.sampled_from(ODD_QUERY_VALUES) | st.text(max_size=8), max_size=3
        ),
        label="query",
    )
    query = data.draw(
        st.sampled_from([base_query, {**base_query, **odd_query}, odd_query]), label="query kind"
    )
    alice, admin, bob = world["tokens"]
    callers = (
        [admin, admin, admin, alice] if template.startswith(ADMIN) else [alice, alice, alice, admin, bob]
    )
    token = data.draw(st.sampled_from([*callers, None]), label="token")
    kw: dict[str, Any] = {"params": query}
    if method != "GET":
        odd_body = data.draw(st.dictionaries(st.sampled_from(WORDS), json_values(), max_size=4), label="body")
        if base_body is not None:
            kw["json"] = data.draw(
                st.sampled_from([mutate(base_body, data), base_body, odd_body]), label="body"
            )
        elif method != "DELETE" or data.draw(st.booleans(), label="delete body"):
            kw["json"] = odd_body
    if template == "/_homeserver/metrics":
        token = data.draw(st.sampled_from([METRICS_SECRET, "wrong", None]), label="secret")
    r = call(server, method, path, token, **kw)
    what = f"{method} {path} {query} {kw.get('json')!r}: {r.status_code} {r.text[:500]}"
    assert r.status_code < 500, what
    if path.startswith(SPEC_PATHS):
        check_against_spec(method, r)
    if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith("application/json"):
        body = r.json()
        assert isinstance(body.get("errcode"), str) or "flows" in body, what


def check_against_spec(method: str, r: requests.Response) -> None:
    """The answer matches the operation's response in the spec, where it lists that status."""
    u = urlsplit(r.url)
    request = MockRequest(f"{u.scheme}://{u.netloc}", method.lower(), unquote(u.path))
    response = MockResponse(r.content, r.status_code, content_type=r.headers.get("Content-Type", ""))
    try:
        SPEC.validate_response(request, response)
    except ResponseNotFound:
        pass  # the spec's common errors (M_MISSING_TOKEN...) are listed by few operations
    except PathError:
        pass  # an odd segment ("..", "a/b") made a path the spec does not have


# Each field of a valid request in turn takes each of these (a longer list found nothing more;
# 2**31, past a 32-bit column, found a 500 on PostgreSQL).
NASTY: list[Any] = [None, -1, 2**31, 2**63, 0.5, "", "é\U0001f600", [[[]]], {"a": {"b": 1}}]
NASTY_QUERY = ["", "0", "-1", "9" * 20, "é"]


def leaves(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place inside a JSON value, outermost first."""
    if at:
        yield at
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from leaves(inner, (*at, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from leaves(inner, (*at, index))


def replaced(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    if not at:
        return new
    head, rest = at[0], at[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [*value[:head], replaced(value[head], rest, new), *value[head + 1 :]]


def test_every_field_of_a_valid_request_takes_odd_values(
    server: ServerProcess, world: dict[str, Any]
) -> None:
    """Each field of each valid body and query, in turn, set to each odd value."""
    alice, admin, _ = world["tokens"]
    places = {name: values[0] for name, values in world["places"].items()}
    for (method, template), (query, body) in world["bases"].items():
        token = admin if template.startswith((ADMIN, "/_plugins/admin")) else alice
        path = template.format(**{k: quote(v, safe="") for k, v in places.items()})
        tried: list[tuple[dict[str, Any], Any]] = []
        for at in leaves(body):
            tried += [(query, replaced(body, at, value)) for value in NASTY]
        for name in query:
            tried += [({**query, name: value}, body) for value in NASTY_QUERY]
        for params, sent in tried:
            r = call(server, method, path, token, params=params, json=sent)
            what = f"{method} {path} {params} {str(sent)[:300]}: {r.status_code} {r.text[:300]}"
            assert r.status_code < 500, what
            if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith("application/json"):
                assert isinstance(r.json().get("errcode"), str), what


# Broken HTTP on the same routes: split anywhere, odd framing headers, bad chunks ------------

RAW_PATHS = [
    b"/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
    b"/_matrix/client/v3/search",
    b"/_matrix/client/v3/user_directory/search",
    b"/api/me/export",
    b"/_synapse/admin/v2/users/%40a%3Ax",
    b"/_synapse/admin/v1/registration_tokens/new",
]
RAW_HEADER_NAMES = [
    b"Content-Length",
    b"Transfer-Encoding",
    b"Authorization",
    b"Expect",
    b"Connection",
    b"X-Big",
]
RAW_HEADER_VALUES = [
    b"chunked", b" chunked", b"chunked, chunked", b"identity", b"0", b"5", b"-1", b"0x10", b"1e3",
    b"9" * 17, b"100-continue", b"close", b"Bearer x", b"a" * 70_000,
]  # fmt: skip
RAW_BODY_PARTS = [
    b"5\r\n{\"a\":\r\n", b"0\r\n\r\n", b"ffffffffffffffff\r\n", b"3;ext=1\r\n{}}\r\n", b"1\r\n",
    b"\r\n", b"{}", b'{"search_term": 1}', b"0\r\nX-T: 1\r\n\r\n", b"z\r\n",
]  # fmt: skip


def exchange(server: ServerProcess, pieces: list[bytes]) -> bytes:
    """Send `pieces` one by one, end the sending side, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early (431, 413) and closed
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes still queued: the answer came before
        return answer


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(20261206)
@given(
    method=st.sampled_from([b"POST", b"PUT", b"GET", b"DELETE"]),
    path=st.sampled_from(RAW_PATHS),
    headers=st.lists(
        st.tuples(
            st.sampled_from(RAW_HEADER_NAMES), st.sampled_from(RAW_HEADER_VALUES) | st.binary(max_size=8)
        ),
        max_size=4,
    ),
    body=st.lists(st.sampled_from(RAW_BODY_PARTS) | st.binary(max_size=30), max_size=4),
    split=st.integers(1, 64),
)
def test_broken_http_gets_a_client_error_or_a_close(
    server: ServerProcess,
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: list[bytes],
    split: int,
) -> None:
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, path, b"".join(b"%s: %s\r\n" % h for h in headers))
    request = head + b"".join(body)
    pieces = (
        [request[i : i + split] for i in range(0, len(request), split)] if len(request) < 4096 else [request]
    )
    answer = exchange(server, pieces)
    if answer:  # nothing at all: the server waited for a body that never came, then saw the close
        status = int(answer.split(b" ", 2)[1])
        assert status < 500 or status == 501, (request[:300], answer[:300])  # 501: a coding it lacks


def test_server_survived_the_fuzzing(server: ServerProcess, world: dict[str, Any]) -> None:
    """Last: the callers still work and no handler raised past its error handling."""
    ok(server, "GET", V3 + "/account/whoami", world["alice"]["access_token"])
    ok(server, "GET", ADMIN + "/v1/server_version", world["admin"]["access_token"])
    assert "Traceback" not in server.log_text()
