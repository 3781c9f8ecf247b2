"""The admin dashboard in Chromium (tests/browser/admin_dashboard.mjs): on a server with
real traffic made here (two users, messages, a call invite, an upload, a report), a non-admin
is refused at log-in; an admin sees the metrics with these numbers, finds a user and
deactivates them (checked through the API: they can no longer log in) and dismisses the
report (the API lists none). Set ADMIN_DASHBOARD_SCREENSHOT=path to keep the metrics view's
screenshot (docs/admin-dashboard.png is made so)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from browser import run_browser_script
from conftest import ServerProcess, start_server_process
from test_admin_api import ADMIN_PASSWORD, Admin, upload
from test_history_visibility import Client

PASSWORD = "correct horse battery"  # ServerProcess.register's


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides: dict[str, Any] = {
        "plugins": [
            {"module": "plugins.admin.AdminPlugin", "config": {}},
            {"module": "plugins.media.MediaPlugin", "config": {}},
        ]
    }
    server = start_server_process(tmp_path_factory.mktemp("hs"), overrides)
    yield server
    server.stop()


def login(server: ServerProcess, user_id: str) -> requests.Response:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": PASSWORD,
    }
    return requests.post(server.url("/_matrix/client/v3/login"), json=body, timeout=10)


def test_an_admin_uses_the_dashboard_in_chromium(server: ServerProcess, tmp_path: Any) -> None:
    admin = Admin(server)
    alice, bob = Client(server, "alice"), Client(server, "bob")
    room = alice.create_room("shared", name="Town square")
    bob.ok("POST", f"/join/{room}", json={})
    for i in range(3):
        alice.send(room, f"hello {i}")
    reported = bob.send(room, "buy cheap watches")
    call = {"call_id": "c1", "lifetime": 60000, "version": "1", "offer": {"type": "offer", "sdp": "v=0"}}
    alice.send(room, "", event_type="m.call.invite", **call)
    data = b"a picture" * 100
    upload(server, alice, data, "pic.txt")
    alice.ok("POST", f"/rooms/{room}/report/{reported}", json={"reason": "spam"})
    carol = Client(server, "carol")
    backroom = carol.create_room("shared", name="Back room")
    alice.ok("POST", f"/join/{backroom}", json={})
    report_id = admin.ok("GET", "/_synapse/admin/v1/event_reports")["event_reports"][0]["id"]
    bob_token = bob.session.headers["Authorization"]
    assert login(server, bob.user_id).status_code == 200

    args = {
        "admin": {"user": admin.localpart, "password": ADMIN_PASSWORD},
        "nonAdmin": {"user": alice.user_id, "password": PASSWORD},
        "target": {"userId": bob.user_id, "search": bob.user_id.split(":")[0].lstrip("@")},
        "other": {"userId": carol.user_id, "newPassword": "a new password 42"},
        "room": {"roomId": backroom, "search": "back"},
        "reportId": str(report_id),
        "reportedText": "buy cheap watches",
        "screenshot": os.environ.get("ADMIN_DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png"),
    }
    result = run_browser_script("admin_dashboard.mjs", server.base_url, json.dumps(args))

    # The non-admin was refused and kept nothing.
    assert "not a server admin" in result["refusal"]
    assert result["tokenKeptForNonAdmin"] is False and result["navShownToNonAdmin"] is False
    assert result["failedResponses"] == ["403 /_synapse/admin/v1/server_version"]
    # The metrics: the admin, alice, bob and carol signed up; 4 messages and 1 call; the upload.
    m = result["metrics"]
    assert m["accounts"] == 4 and m["signups"] == 4
    assert m["messages"] == 4 and m["calls"] == 1
    assert m["dau"] >= 3 and m["mau"] >= m["dau"]
    assert m["mediaBytes"] == len(data) and m["mediaShown"] == "900 B"
    charts = {c["title"]: c for c in result["charts"]}
    assert charts["Messages per day"]["total"] == 4 and charts["Messages per day"]["todayBar"] == 4
    assert charts["Sign-ups per day"]["todayBar"] == 4
    assert charts["Active users per day"]["todayBar"] == 3
    assert charts["Calls per day"]["todayBar"] == 1
    assert all(c["bars"] == 30 for c in charts.values())
    # The token is in sessionStorage (not localStorage, gone with the tab).
    assert "hs-admin-token" in result["tokenInSessionStorage"]
    assert result["usersFound"] == [bob.user_id]

    # Bob is deactivated: his token is dead and he cannot log in again.
    r = requests.get(
        server.url("/_matrix/client/v3/account/whoami"), headers={"Authorization": bob_token}, timeout=10
    )
    assert r.status_code == 401
    r = login(server, bob.user_id)
    assert r.status_code in (401, 403), r.text
    assert admin.ok("GET", f"/_synapse/admin/v2/users/{bob.user_id}")["deactivated"] == 1

    # Carol was locked and unlocked, suspended, given a new password; her data exported.
    assert (result["lockedShown"], result["unlockedShown"], result["suspendedShown"]) == ("yes", "no", "yes")
    assert login(server, carol.user_id).status_code == 403  # the old password
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": carol.user_id}}
    r = requests.post(
        server.url("/_matrix/client/v3/login"), json={**body, "password": "a new password 42"}, timeout=10
    )
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = requests.put(
        server.url(f"/_matrix/client/v3/rooms/{backroom}/send/m.room.message/t1"),
        json={"msgtype": "m.text", "body": "suspended?"},
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 403 and r.json()["errcode"] == "M_USER_SUSPENDED"
    exports = admin.ok("GET", f"/_plugins/admin/users/{carol.user_id}/exports")["exports"]
    assert len(exports) == 1 and exports[0]["state"] == "done"
    assert result["exportFileName"] == f"export-{exports[0]['export_id']}.zip"
    assert result["exportBytes"] == exports[0]["size"] > 0
    # The room was found, its members shown, and it was deleted and blocked.
    assert result["roomsFound"] == [backroom]
    assert carol.user_id in result["roomMembersShown"] and alice.user_id in result["roomMembersShown"]
    assert admin.ok("GET", f"/_synapse/admin/v1/rooms/{backroom}/block")["block"] is True
    assert backroom not in alice.ok("GET", "/joined_rooms")["joined_rooms"]

    # The report was shown with its event and dismissed.
    assert result["reportsListed"] == [str(report_id)] and result["reportedEventShown"] is True
    assert admin.ok("GET", "/_synapse/admin/v1/event_reports")["total"] == 0
    # What the page did is in the audit log, as the admin's.
    audit = admin.ok("GET", f"/_plugins/admin/audit_log?user_id={admin.user_id}&limit=200")["entries"]
    done = {(e["method"], e["route"], e["status"]) for e in audit}
    assert ("POST", "/_synapse/admin/v1/deactivate/{user_id}", 200) in done
    assert ("DELETE", "/_synapse/admin/v1/event_reports/{report_id}", 200) in done
    assert ("GET", "/_plugins/admin/metrics/daily", 200) in done
