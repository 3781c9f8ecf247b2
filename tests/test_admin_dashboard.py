"""The admin dashboard's server side on a real server process: the page at /_admin/ (its own
files only, with a strict Content-Security-Policy), the metrics route's numbers from real
traffic (both engines), and an admin's export of any user's data. Every new route is for
server admins only (401 without a token, 403 M_FORBIDDEN otherwise) and audited."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import ServerProcess, server_on_engine
from test_admin_api import Admin, q, upload
from test_history_visibility import Client

PLUGIN = "/_plugins/admin"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def dash_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    overrides: dict[str, Any] = {
        "plugins": [
            {"module": "plugins.admin.AdminPlugin", "config": {}},
            {"module": "plugins.media.MediaPlugin", "config": {}},
        ]
    }
    with server_on_engine(request, tmp_path_factory, request.param, overrides, "hs") as server:
        yield server


@pytest.fixture(scope="module")
def dash_admin(dash_server: ServerProcess) -> Admin:
    return Admin(dash_server)


def today(metrics: dict[str, Any]) -> dict[str, Any]:
    day: dict[str, Any] = metrics["days"][-1]
    assert day["date"] == time.strftime("%Y-%m-%d", time.gmtime())
    return day


def test_the_page_is_served_with_its_own_files_only(dash_server: ServerProcess) -> None:
    page = requests.get(dash_server.url("/_admin/"), timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="app.js">' in page.text
    for name, kind in (
        ("app.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        r = requests.get(dash_server.url(f"/_admin/{name}"), timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind), name
        # Nothing is fetched from elsewhere: no absolute URL but the SVG namespace.
        assert "http" not in r.text.replace("http://www.w3.org/2000/svg", ""), name
    for missing in ("/_admin/nope.js", "/_admin/..%2Fconfig.py", "/_admin/__init__.py"):
        r = requests.get(dash_server.url(missing), timeout=10)
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", missing


def test_new_routes_are_for_admins_only_and_audited(dash_server: ServerProcess, dash_admin: Admin) -> None:
    mallory = Client(dash_server, "mallory")
    routes = [
        ("GET", f"{PLUGIN}/metrics/daily"),
        ("POST", f"{PLUGIN}/users/{q(mallory.user_id)}/export"),
        ("GET", f"{PLUGIN}/users/{q(mallory.user_id)}/exports"),
        ("GET", f"{PLUGIN}/exports/someid"),
        ("GET", f"{PLUGIN}/exports/someid/download"),
    ]
    for method, path in routes:
        r = requests.request(method, dash_server.url(path), timeout=10)
        assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN", path
        r = mallory.request(method, path)
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", path
    # Nothing was started for mallory by mallory's own call.
    assert dash_admin.ok("GET", f"{PLUGIN}/users/{q(mallory.user_id)}/exports") == {"exports": []}
    refused = dash_admin.ok("GET", f"{PLUGIN}/audit_log?user_id={q(mallory.user_id)}&limit=100")["entries"]
    assert {(e["method"], e["route"], e["status"]) for e in refused} == {
        (method, route, 403)
        for method, route in (
            ("GET", f"{PLUGIN}/metrics/daily"),
            ("POST", f"{PLUGIN}/users/{{user_id}}/export"),
            ("GET", f"{PLUGIN}/users/{{user_id}}/exports"),
            ("GET", f"{PLUGIN}/exports/{{export_id}}"),
            ("GET", f"{PLUGIN}/exports/{{export_id}}/download"),
        )
    }


def test_metrics_route_rejects_bad_input(dash_server: ServerProcess, dash_admin: Admin) -> None:
    for days in ("0", "367", "-1", "abc", "1.5"):
        r = dash_admin.request("GET", f"{PLUGIN}/metrics/daily?days={days}")
        assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", (days, r.text)
    assert len(dash_admin.ok("GET", f"{PLUGIN}/metrics/daily?days=366")["days"]) == 366
    assert len(dash_admin.ok("GET", f"{PLUGIN}/metrics/daily?days=1")["days"]) == 1


def test_metrics_count_real_traffic(dash_server: ServerProcess, dash_admin: Admin) -> None:
    before = dash_admin.ok("GET", f"{PLUGIN}/metrics/daily?days=30")
    assert len(before["days"]) == 30
    alice, bob = Client(dash_server, "alice"), Client(dash_server, "bob")
    room = alice.create_room("shared")
    bob.ok("POST", f"/join/{room}", json={})
    for i in range(3):
        alice.send(room, f"hello {i}")
    bob.send(room, "hi")
    bob.send(room, "bye")
    call = {"call_id": "c1", "lifetime": 60000, "version": "1", "offer": {"type": "offer", "sdp": "v=0"}}
    alice.send(room, "", event_type="m.call.invite", **call)
    data = b"some picture bytes" * 50
    upload(dash_server, alice, data, "pic.txt")

    # A long-poll held open while the numbers are asked: it shows among the connections.
    since = bob.ok("GET", "/sync?timeout=0")["next_batch"]
    poll = threading.Thread(
        target=bob.request, args=("GET", f"/_matrix/client/v3/sync?since={since}&timeout=8000")
    )
    poll.start()
    deadline = time.monotonic() + 6
    while True:
        after = dash_admin.ok("GET", f"{PLUGIN}/metrics/daily?days=30")
        if after["connections"]["long_polls"] >= 1 or time.monotonic() > deadline:
            break
    assert after["connections"]["long_polls"] >= 1
    alice.send(room, "wake the poll")
    poll.join(timeout=20)

    t0, t1 = today(before), today(after)
    assert t1["signups"] - t0["signups"] == 2
    assert t1["messages"] - t0["messages"] == 5
    assert t1["active_users"] - t0["active_users"] == 2  # alice and bob sent events today
    assert t1["calls"] - t0["calls"] == 1
    assert after["accounts"] - before["accounts"] == 2
    assert after["daily_active_users"] >= 2 and after["monthly_active_users"] >= after["daily_active_users"]
    assert after["media"]["bytes"] - before["media"]["bytes"] == len(data)
    assert after["media"]["files"] - before["media"]["files"] == 1
    # Finished days are the same numbers as before (counted once, kept).
    assert after["days"][:-1] == before["days"][:-1]


def test_an_admin_exports_any_users_data(dash_server: ServerProcess, dash_admin: Admin) -> None:
    carol, dave = Client(dash_server, "carol"), Client(dash_server, "dave")
    room = carol.create_room("shared")
    carol.send(room, "carol's words")
    started = dash_admin.ok("POST", f"{PLUGIN}/users/{q(carol.user_id)}/export", status=202)
    export_id = started["export_id"]
    assert started["user_id"] == carol.user_id and started["state"] in ("running", "done")
    deadline = time.monotonic() + 30
    status = started
    while status["state"] == "running" and time.monotonic() < deadline:
        status = dash_admin.ok("GET", f"{PLUGIN}/exports/{export_id}")
    assert status["state"] == "done", status
    assert status["download"] == f"{PLUGIN}/exports/{export_id}/download"
    assert status["progress"]["done"] == status["progress"]["total"] > 0
    listed = dash_admin.ok("GET", f"{PLUGIN}/users/{q(carol.user_id)}/exports")["exports"]
    assert [e["export_id"] for e in listed] == [export_id]

    r = dash_admin.request("GET", status["download"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert r.headers["Content-Length"] == str(status["size"])
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        events = json.loads(z.read("events.json"))
        profile = json.loads(z.read("profile.json"))
    assert profile["user_id"] == carol.user_id
    assert any(e["content"].get("body") == "carol's words" for e in events)

    # The user sees the export the admin started among their own; nobody else does.
    assert [e["id"] for e in carol.request("GET", "/api/me/export").json()["exports"]] == [export_id]
    assert dave.request("GET", f"/api/me/export/{export_id}").status_code == 404
    assert dave.request("GET", f"{PLUGIN}/exports/{export_id}/download").status_code == 403
    # Unknown and remote users, unknown exports.
    for user, code, errcode in (
        ("@nobody_here:" + dash_server.server_name, 404, "M_NOT_FOUND"),
        ("@someone:elsewhere.example", 400, "M_INVALID_PARAM"),
    ):
        r = dash_admin.request("POST", f"{PLUGIN}/users/{q(user)}/export")
        assert r.status_code == code and r.json()["errcode"] == errcode, r.text
    for path in (f"{PLUGIN}/exports/nosuch", f"{PLUGIN}/exports/nosuch/download"):
        r = dash_admin.request("GET", path)
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
    # Audited with their targets.
    audit = dash_admin.ok("GET", f"{PLUGIN}/audit_log?target={export_id}")["entries"]
    assert {(e["route"], e["status"]) for e in audit} >= {
        (f"{PLUGIN}/exports/{{export_id}}/download", 200),
        (f"{PLUGIN}/exports/{{export_id}}", 200),
    }
    started_audit = dash_admin.ok("GET", f"{PLUGIN}/audit_log?target={q(carol.user_id)}")["entries"]
    assert any(
        e["route"] == f"{PLUGIN}/users/{{user_id}}/export" and e["status"] == 202 for e in started_audit
    )
