"""The admin plugin on a real server process, on both engines: Synapse's admin API as the
synapse-admin web UI calls it (its exact requests for login, the user list, a user's
details, the room list and the reports, answered in Synapse's shapes, field by field),
every route's authorisation (401 without a token, 403 M_FORBIDDEN for a non-admin), the
audit log, and what the admin's actions do to the users they touch."""

from __future__ import annotations

import secrets
import struct
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
import websocket
from conftest import VENV_BIN, ServerProcess, server_on_engine, start_server_process
from test_e2ee_api import assert_keys_gone, new_user, publish_all_keys
from test_history_visibility import CS, Client

ADMIN_PASSWORD = "admin password 42"
V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def admin_server(
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


class Admin:
    """A server admin made the operator's way (`homeserver admin create-user --admin`), logged in
    the way synapse-admin logs in."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.localpart = f"admin_{secrets.token_hex(4)}"
        made = subprocess.run(
            [str(VENV_BIN / "homeserver"), "admin", "create-user", "-c", str(server.config_path)]
            + ["--email", f"{self.localpart}@example.org", "--password", ADMIN_PASSWORD]
            + ["--username", self.localpart, "--admin"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        # synapse-admin's login: its body exactly (device_id null on the first login).
        r = requests.post(
            server.url("/_matrix/client/v3/login"),
            json={
                "device_id": None,
                "initial_device_display_name": "Synapse Admin",
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.localpart},
                "password": ADMIN_PASSWORD,
            },
            headers={"Accept": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        login = r.json()
        assert login["home_server"] == server.server_name
        self.user_id: str = login["user_id"]
        self.token: str = login["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 20)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        return requests.request(method, self.server.url(path), headers=headers, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()


def q(value: str) -> str:
    return quote(value, safe="")


@pytest.fixture(scope="module")
def admin(admin_server: ServerProcess) -> Admin:
    return Admin(admin_server)


# What synapse-admin asks, answered in Synapse's shapes --------------------------------------


USER_LIST_FIELDS = {
    "name", "user_type", "is_guest", "admin", "deactivated", "shadow_banned", "displayname",
    "avatar_url", "creation_ts", "approved", "erased", "last_seen_ts", "locked", "suspended",
}  # fmt: skip


def test_synapse_admin_login_page_and_cors(admin_server: ServerProcess) -> None:
    """What the login page asks before anyone logs in (the server's versions and login
    flows), and the browser's preflight for the admin routes it calls from its own origin."""
    versions = requests.get(admin_server.url("/_matrix/client/versions"), timeout=10).json()
    assert versions["versions"]
    flows = requests.get(admin_server.url("/_matrix/client/v3/login"), timeout=10).json()["flows"]
    assert {"type": "m.login.password"} in [{"type": f["type"]} for f in flows]
    preflight = requests.options(
        admin_server.url(f"{V2}/users/{q('@a:' + admin_server.server_name)}"),
        headers={
            "Origin": "https://admin.example.org",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_synapse_admin_user_list_and_details(admin_server: ServerProcess, admin: Admin) -> None:
    bob = Client(admin_server, "bob")
    bob.ok("PUT", f"/profile/{bob.user_id}/displayname", json={"displayname": "Bob the Builder"})
    # synapse-admin's identity check after login
    profile = admin.ok("GET", f"/_matrix/client/v3/profile/{admin.user_id}")
    assert "displayname" in profile

    # The user list as synapse-admin's default view asks it.
    listed = admin.ok(
        "GET",
        f"{V2}/users?from=0&limit=10&guests=true&deactivated=false&locked=false&order_by=name&dir=f",
    )
    assert isinstance(listed["total"], int) and listed["total"] >= 2
    names = [u["name"] for u in listed["users"]]
    assert names == sorted(names)
    mine = next(u for u in listed["users"] if u["name"] == admin.user_id) if admin.user_id in names else None
    for user in listed["users"]:
        assert set(user) == USER_LIST_FIELDS
    everyone = admin.ok("GET", f"{V2}/users?from=0&limit=1000&name={q(bob.user_id[1:8])}")
    entry = next(u for u in everyone["users"] if u["name"] == bob.user_id)
    assert entry["displayname"] == "Bob the Builder"
    assert (entry["is_guest"], entry["admin"], entry["deactivated"], entry["shadow_banned"]) == (0, 0, 0, 0)
    assert (entry["erased"], entry["locked"], entry["approved"], entry["user_type"]) == (
        False,
        False,
        True,
        None,
    )
    assert isinstance(entry["creation_ts"], int) and 1_600_000_000 < entry["creation_ts"] < 10_000_000_000
    assert isinstance(entry["last_seen_ts"], int)
    if mine is not None:
        assert mine["admin"] == 1

    # Paging: next_token is a string offset, absent on the last page.
    first = admin.ok("GET", f"{V2}/users?from=0&limit=1&order_by=creation_ts&dir=b")
    assert len(first["users"]) == 1 and first["next_token"] == "1"
    last = admin.ok("GET", f"{V2}/users?from={first['total'] - 1}&limit=1")
    assert len(last["users"]) == 1 and "next_token" not in last

    # A user's details, by the id synapse-admin puts in the path (encodeURIComponent).
    details = admin.ok("GET", f"{V2}/users/{q(bob.user_id)}")
    assert set(details) == USER_LIST_FIELDS | {
        "threepids", "appservice_id", "consent_server_notice_sent", "consent_version", "consent_ts",
        "external_ids",
    }  # fmt: skip
    assert details["name"] == bob.user_id and details["displayname"] == "Bob the Builder"
    assert details["threepids"] == [] and details["external_ids"] == []
    # ...and the tabs of its page: devices, connections (whois), rooms.
    devices = admin.ok("GET", f"{V2}/users/{q(bob.user_id)}/devices")
    assert devices["total"] == 1
    assert set(devices["devices"][0]) == {
        "device_id", "display_name", "last_seen_ip", "last_seen_ts", "last_seen_user_agent", "user_id",
    }  # fmt: skip
    whois = admin.ok("GET", f"{V1}/whois/{q(bob.user_id)}")
    assert whois["user_id"] == bob.user_id
    connections = whois["devices"][""]["sessions"][0]["connections"]
    assert connections and set(connections[0]) == {"ip", "last_seen", "user_agent"}
    assert connections[0]["ip"] == "127.0.0.1"
    room = bob.create_room("shared")
    joined = admin.ok("GET", f"{V1}/users/{q(bob.user_id)}/joined_rooms")
    assert joined == {"joined_rooms": [room], "total": 1}

    # An admin's own email shows as a threepid with both timestamps.
    own = admin.ok("GET", f"{V2}/users/{q(admin.user_id)}")
    assert own["admin"] == 1
    assert [(t["medium"], t["address"]) for t in own["threepids"]] == [
        ("email", f"{admin.localpart}@example.org")
    ]
    assert isinstance(own["threepids"][0]["added_at"], int)


ROOM_FIELDS = {
    "room_id", "name", "canonical_alias", "joined_members", "joined_local_members", "version",
    "creator", "encryption", "federatable", "public", "join_rules", "guest_access",
    "history_visibility", "state_events", "room_type",
}  # fmt: skip


def test_synapse_admin_room_list_and_room(admin_server: ServerProcess, admin: Admin) -> None:
    carol, dave = Client(admin_server, "carol"), Client(admin_server, "dave")
    tag = secrets.token_hex(3)
    room = carol.create_room("shared", name=f"Zebra {tag}", room_alias_name=f"zebra{tag}")
    carol.ok("PUT", f"/directory/list/room/{room}", json={"visibility": "public"})
    dave.join(room)
    other = carol.create_room("joined", name=f"Aardvark {tag}")

    listed = admin.ok("GET", f"{V1}/rooms?from=0&limit=10&order_by=name&dir=f&search_term={tag}")
    assert listed["total_rooms"] == 2 and listed["offset"] == 0
    assert "next_batch" not in listed and "prev_batch" not in listed
    assert [r["room_id"] for r in listed["rooms"]] == [other, room]
    entry = listed["rooms"][1]
    assert set(entry) == ROOM_FIELDS
    assert entry["name"] == f"Zebra {tag}"
    assert entry["canonical_alias"] == f"#zebra{tag}:{admin_server.server_name}"
    assert (entry["joined_members"], entry["joined_local_members"]) == (2, 2)
    assert entry["creator"] == carol.user_id and entry["version"] in ("10", "11")
    assert (entry["public"], entry["federatable"], entry["encryption"]) == (True, True, None)
    assert (entry["join_rules"], entry["history_visibility"]) == ("public", "shared")
    assert isinstance(entry["state_events"], int) and entry["state_events"] >= 6
    descending = admin.ok("GET", f"{V1}/rooms?order_by=joined_members&dir=b&search_term={tag}")
    assert [r["room_id"] for r in descending["rooms"]] == [room, other]
    paged = admin.ok("GET", f"{V1}/rooms?from=1&limit=1&order_by=name&search_term={tag}")
    assert [r["room_id"] for r in paged["rooms"]] == [room] and paged["prev_batch"] == 0

    details = admin.ok("GET", f"{V1}/rooms/{q(room)}")
    assert set(details) == ROOM_FIELDS | {"avatar", "topic", "joined_local_devices", "forgotten"}
    members = admin.ok("GET", f"{V1}/rooms/{q(room)}/members")
    assert members == {"members": sorted([carol.user_id, dave.user_id]), "total": 2}
    state = admin.ok("GET", f"{V1}/rooms/{q(room)}/state")["state"]
    assert {"m.room.create", "m.room.name", "m.room.canonical_alias", "m.room.member"} <= {
        e["type"] for e in state
    }
    assert all(
        {"event_id", "sender", "type", "state_key", "content", "origin_server_ts"} <= set(e) for e in state
    )
    assert admin.request("GET", f"{V1}/rooms/{q('!nope:' + admin_server.server_name)}").json()["errcode"] == (
        "M_NOT_FOUND"
    )
    sizes = admin.ok("GET", f"{V1}/statistics/database/rooms")["rooms"]
    assert {room, other} <= {r["room_id"] for r in sizes}
    assert all(isinstance(r["estimated_size"], int) and r["estimated_size"] > 0 for r in sizes)


REPORT_FIELDS = {
    "id", "received_ts", "room_id", "name", "event_id", "user_id", "reason", "score", "sender",
    "canonical_alias",
}  # fmt: skip


def test_synapse_admin_event_reports(admin_server: ServerProcess, admin: Admin) -> None:
    erin, mallory = Client(admin_server, "erin"), Client(admin_server, "mallory")
    room = erin.create_room("shared", name="Reported room")
    mallory.join(room)
    bad = mallory.send(room, "something offensive")
    worse = mallory.send(room, "something worse")
    erin.ok("POST", f"/rooms/{room}/report/{bad}", json={"reason": "abuse", "score": -100})
    erin.ok("POST", f"/rooms/{room}/report/{worse}", json={"reason": "worse"})

    # synapse-admin's report list: newest first.
    listed = admin.ok(
        "GET", f"{V1}/event_reports?from=0&limit=10&order_by=received_ts&dir=b&room_id={q(room)}"
    )
    assert listed["total"] == 2 and "next_token" not in listed
    newest, oldest = listed["event_reports"]
    for report in (newest, oldest):
        assert set(report) == REPORT_FIELDS
    assert (newest["event_id"], newest["reason"], newest["score"]) == (worse, "worse", None)
    assert (oldest["event_id"], oldest["reason"], oldest["score"]) == (bad, "abuse", -100)
    assert (oldest["room_id"], oldest["name"], oldest["user_id"], oldest["sender"]) == (
        room, "Reported room", erin.user_id, mallory.user_id,
    )  # fmt: skip
    assert newest["id"] > oldest["id"] and newest["received_ts"] >= oldest["received_ts"]
    first = admin.ok("GET", f"{V1}/event_reports?limit=1&dir=f&room_id={q(room)}")
    assert first["event_reports"][0]["id"] == oldest["id"] and first["next_token"] == 1

    one = admin.ok("GET", f"{V1}/event_reports/{oldest['id']}")
    assert set(one) == REPORT_FIELDS | {"event_json"}
    assert one["event_json"]["event_id" if "event_id" in one["event_json"] else "type"]
    assert one["event_json"]["content"]["body"] == "something offensive"
    assert one["event_json"]["sender"] == mallory.user_id

    # Dismissing: gone from the list, and a second dismissal is a 404.
    assert admin.ok("DELETE", f"{V1}/event_reports/{oldest['id']}") == {}
    assert admin.ok("GET", f"{V1}/event_reports?room_id={q(room)}")["total"] == 1
    again = admin.request("DELETE", f"{V1}/event_reports/{oldest['id']}")
    assert (again.status_code, again.json()["errcode"]) == (404, "M_NOT_FOUND")


def test_server_version_and_background_updates(admin: Admin) -> None:
    version = admin.ok("GET", f"{V1}/server_version")
    assert set(version) == {"server_version"} and version["server_version"]
    assert admin.ok("GET", f"{V1}/background_updates/status") == {"enabled": True, "current_updates": {}}
    assert admin.ok("GET", f"{V1}/background_updates/enabled") == {"enabled": True}


# Authorisation and the audit log --------------------------------------------------------


def every_route(user_id: str, room_id: str) -> list[tuple[str, str]]:
    u, r = q(user_id), q(room_id)
    return [
        ("GET", f"{V2}/users"),
        ("GET", f"{V2}/users/{u}"),
        ("PUT", f"{V2}/users/{u}"),
        ("GET", f"{V2}/users/{u}/devices"),
        ("GET", f"{V1}/users/{u}/joined_rooms"),
        ("GET", f"{V1}/whois/{u}"),
        ("POST", f"{V1}/reset_password/{u}"),
        ("POST", f"{V1}/deactivate/{u}"),
        ("POST", f"{V1}/users/{u}/shadow_ban"),
        ("DELETE", f"{V1}/users/{u}/shadow_ban"),
        ("PUT", f"{V1}/suspend/{u}"),
        ("GET", f"{V1}/users/{u}/media"),
        ("DELETE", f"{V1}/users/{u}/media"),
        ("POST", f"{V1}/media/quarantine/localhost/abc"),
        ("POST", f"{V1}/media/unquarantine/localhost/abc"),
        ("DELETE", f"{V1}/media/localhost/abc"),
        ("GET", f"{V1}/statistics/users/media"),
        ("GET", f"{V1}/rooms"),
        ("GET", f"{V1}/rooms/{r}"),
        ("GET", f"{V1}/rooms/{r}/members"),
        ("GET", f"{V1}/rooms/{r}/state"),
        ("GET", f"{V1}/rooms/{r}/block"),
        ("PUT", f"{V1}/rooms/{r}/block"),
        ("DELETE", f"{V1}/rooms/{r}"),
        ("DELETE", f"{V2}/rooms/{r}"),
        ("GET", f"{V2}/rooms/{r}/delete_status"),
        ("GET", f"{V2}/rooms/delete_status/abc"),
        ("GET", f"{V1}/event_reports"),
        ("GET", f"{V1}/event_reports/1"),
        ("DELETE", f"{V1}/event_reports/1"),
        ("GET", f"{V1}/registration_tokens"),
        ("POST", f"{V1}/registration_tokens/new"),
        ("GET", f"{V1}/registration_tokens/abc"),
        ("PUT", f"{V1}/registration_tokens/abc"),
        ("DELETE", f"{V1}/registration_tokens/abc"),
        ("GET", f"{V1}/server_version"),
        ("GET", f"{V1}/background_updates/status"),
        ("GET", f"{V1}/background_updates/enabled"),
        ("GET", f"{V1}/statistics/database/rooms"),
        ("GET", "/_plugins/admin/audit_log"),
    ]


def test_every_route_is_for_admins_only_and_audited(admin_server: ServerProcess, admin: Admin) -> None:
    frank = Client(admin_server, "frank")
    room = frank.create_room("shared")
    body = {
        "new_password": "a new password 1", "suspend": True, "displayname": "x", "admin": True,
        "block": True, "purge": True,
    }  # fmt: skip
    for method, path in every_route(frank.user_id, room):
        anonymous = requests.request(method, admin_server.url(path), json=body, timeout=10)
        assert (anonymous.status_code, anonymous.json()["errcode"]) == (401, "M_MISSING_TOKEN"), path
        refused = frank.request(method, path, json=body)
        assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN"), path
    # Nothing the refused calls asked for happened: frank is no admin, not suspended, same
    # name, his room neither blocked nor deleted.
    assert admin.ok("GET", f"{V2}/users/{q(frank.user_id)}")["admin"] == 0
    frank.send(room, "still allowed to send")
    assert admin.ok("GET", f"{V1}/rooms/{q(room)}/members")["members"] == [frank.user_id]
    assert admin.ok("GET", f"{V1}/rooms/{q(room)}/block") == {"block": False}

    # Every refusal is in the audit log, with who, what, on what, and the answer.
    log = admin.ok("GET", f"/_plugins/admin/audit_log?user_id={q(frank.user_id)}&limit=100")
    assert log["total"] == len(every_route(frank.user_id, room))
    assert all(e["status"] == 403 and e["user_id"] == frank.user_id for e in log["entries"])
    put_user = next(
        e for e in log["entries"] if e["method"] == "PUT" and e["route"] == f"{V2}/users/{{user_id}}"
    )
    assert put_user["target"] == frank.user_id and isinstance(put_user["ts"], int)

    # The admin's own calls are logged with their outcome, newest first.
    admin.ok("GET", f"{V2}/users/{q(frank.user_id)}")
    missing = admin.request("GET", f"{V2}/users/{q('@nobody:' + admin_server.server_name)}")
    assert missing.status_code == 404
    mine = admin.ok("GET", f"/_plugins/admin/audit_log?user_id={q(admin.user_id)}&limit=3")["entries"]
    assert [(e["method"], e["route"], e["target"], e["status"]) for e in mine[:2]] == [
        ("GET", f"{V2}/users/{{user_id}}", f"@nobody:{admin_server.server_name}", 404),
        ("GET", f"{V2}/users/{{user_id}}", frank.user_id, 200),
    ]


def test_a_deactivated_admin_is_no_admin(admin_server: ServerProcess, admin: Admin) -> None:
    other = Admin(admin_server)
    assert other.request("GET", f"{V2}/users").status_code == 200
    admin.ok("POST", f"{V1}/deactivate/{q(other.user_id)}", json={})
    # Deactivation logged the admin out: its token is gone.
    assert other.request("GET", f"{V2}/users").status_code == 401


# What the admin's actions do ---------------------------------------------------------------


def login_status(server: ServerProcess, localpart: str, password: str) -> tuple[int, str | None]:
    r = requests.post(
        server.url("/_matrix/client/v3/login"),
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        },
        timeout=10,
    )
    return r.status_code, r.json().get("errcode")


def test_user_types_in_the_user_list(admin_server: ServerProcess, admin: Admin) -> None:
    """The list shows each account's type, leaves out the types of `not_user_type` (given
    once or more; empty: accounts without a type) and orders by type, as Synapse's does."""
    tag = f"ut{secrets.token_hex(3)}"
    ids = {}
    for name, user_type in (("a", "support"), ("b", None), ("c", "bot")):
        user_id = f"@{tag}_{name}:{admin_server.server_name}"
        body = {"password": "long enough", "user_type": user_type}
        ids[user_id] = admin.ok("PUT", f"{V2}/users/{q(user_id)}", 201, json=body)["user_type"]
    assert list(ids.values()) == ["support", None, "bot"]

    def listed(query: str) -> list[tuple[str, str | None]]:
        users = admin.ok("GET", f"{V2}/users?name={tag}&{query}")["users"]
        return [(u["name"].split(":")[0][-1], u["user_type"]) for u in users]

    assert listed("order_by=name") == [("a", "support"), ("b", None), ("c", "bot")]
    assert listed("not_user_type=bot") == [("a", "support"), ("b", None)]
    assert listed("not_user_type=bot&not_user_type=support") == [("b", None)]
    assert listed("not_user_type=") == [("a", "support"), ("c", "bot")]
    assert listed("order_by=user_type") == [("b", None), ("c", "bot"), ("a", "support")]
    assert listed("order_by=user_type&dir=b") == [("a", "support"), ("c", "bot"), ("b", None)]


def test_create_modify_and_deactivate_a_user(admin_server: ServerProcess, admin: Admin) -> None:
    localpart = f"gina_{secrets.token_hex(3)}"
    user_id = f"@{localpart}:{admin_server.server_name}"
    created = admin.ok(
        "PUT", f"{V2}/users/{q(user_id)}", 201, json={"password": "gina's password", "displayname": "Gina"}
    )
    assert (created["name"], created["displayname"], created["admin"]) == (user_id, "Gina", 0)
    assert login_status(admin_server, localpart, "gina's password") == (200, None)

    changed = admin.ok("PUT", f"{V2}/users/{q(user_id)}", json={"displayname": "Gina G", "admin": True})
    assert (changed["displayname"], changed["admin"]) == ("Gina G", 1)
    # An unknown user_type is refused, and the rest of the request with it.
    refused = admin.request(
        "PUT", f"{V2}/users/{q(user_id)}", json={"displayname": "Not Gina", "user_type": "guest"}
    )
    assert (refused.status_code, refused.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert admin.ok("GET", f"{V2}/users/{q(user_id)}")["displayname"] == "Gina G"
    # Synapse's types are kept and shown; absent leaves the type as it is, null clears it.
    for user_type in ("bot", "support", None):
        same = admin.ok(
            "PUT", f"{V2}/users/{q(user_id)}", json={"displayname": "Gina G", "user_type": user_type}
        )
        assert (same["displayname"], same["user_type"]) == ("Gina G", user_type)
        assert admin.ok("GET", f"{V2}/users/{q(user_id)}")["user_type"] == user_type
        untouched = admin.ok("PUT", f"{V2}/users/{q(user_id)}", json={"displayname": "Gina G"})
        assert untouched["user_type"] == user_type
    # The change is the user's real profile, seen on the client API too.
    gina = admin.ok("GET", f"/_matrix/client/v3/profile/{q(user_id)}")
    assert gina["displayname"] == "Gina G"

    # Reset the password: the old one fails, the new one works, old sessions end.
    session = requests.post(
        admin_server.url("/_matrix/client/v3/login"),
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "gina's password",
        },
        timeout=10,
    ).json()["access_token"]
    assert (
        admin.ok("POST", f"{V1}/reset_password/{q(user_id)}", json={"new_password": "brand new pass"}) == {}
    )
    assert login_status(admin_server, localpart, "gina's password") == (403, "M_FORBIDDEN")
    assert login_status(admin_server, localpart, "brand new pass") == (200, None)
    whoami = requests.get(
        admin_server.url(f"{CS}/account/whoami"), headers={"Authorization": f"Bearer {session}"}, timeout=10
    )
    assert (whoami.status_code, whoami.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    # Deactivate, without erasing.
    assert admin.ok("POST", f"{V1}/deactivate/{q(user_id)}", json={"erase": False}) == {
        "id_server_unbind_result": "success"
    }
    assert login_status(admin_server, localpart, "brand new pass") == (403, "M_USER_DEACTIVATED")
    assert admin.ok("GET", f"{V2}/users/{q(user_id)}")["deactivated"] == 1
    hidden = admin.ok("GET", f"{V2}/users?limit=1000&user_id={q(localpart)}")
    assert hidden["users"] == []
    shown = admin.ok("GET", f"{V2}/users?limit=1000&user_id={q(localpart)}&deactivated=true")
    assert [u["name"] for u in shown["users"]] == [user_id]

    # Reactivation needs a password, then the account logs in again.
    refused = admin.request("PUT", f"{V2}/users/{q(user_id)}", json={"deactivated": False})
    assert refused.status_code == 400
    admin.ok("PUT", f"{V2}/users/{q(user_id)}", json={"deactivated": False, "password": "back again 1"})
    assert login_status(admin_server, localpart, "back again 1") == (200, None)


def test_locked_users_get_user_locked(admin_server: ServerProcess, admin: Admin) -> None:
    hank = Client(admin_server, "hank")
    admin.ok("PUT", f"{V2}/users/{q(hank.user_id)}", json={"locked": True})
    r = hank.request("GET", f"{CS}/account/whoami")
    assert (r.status_code, r.json()["errcode"], r.json()["soft_logout"]) == (401, "M_USER_LOCKED", True)
    assert admin.ok("GET", f"{V2}/users/{q(hank.user_id)}")["locked"] is True
    # Nor does the WebSocket stream take them: closed as any refused token (4401), with the code.
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{admin_server.port}/_homeserver/ws",
        header=[f"Authorization: {hank.session.headers['Authorization']}"],
        timeout=10,
    )
    opcode, frame = ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, frame.data)
    code, reason = struct.unpack("!H", frame.data[:2])[0], frame.data[2:].decode()
    assert code == 4401 and reason.startswith("M_USER_LOCKED"), (code, reason)
    # Synapse's list hides locked accounts unless asked.
    assert admin.ok("GET", f"{V2}/users?limit=1000&user_id={q(hank.user_id)}")["users"] == []
    assert admin.ok("GET", f"{V2}/users?limit=1000&locked=true&user_id={q(hank.user_id)}")["total"] == 1
    admin.ok("PUT", f"{V2}/users/{q(hank.user_id)}", json={"locked": False})
    assert hank.request("GET", f"{CS}/account/whoami").status_code == 200


def test_suspended_users_read_but_do_not_send(admin_server: ServerProcess, admin: Admin) -> None:
    ivy, jack = Client(admin_server, "ivy"), Client(admin_server, "jack")
    room = jack.create_room("shared")
    ivy.join(room)
    before = ivy.send(room, "before the suspension")
    assert admin.ok("PUT", f"{V1}/suspend/{q(ivy.user_id)}", json={"suspend": True}) == {
        f"user_{ivy.user_id}_suspended": True
    }
    other = jack.create_room("shared")
    message = {"msgtype": "m.text", "body": "x"}
    refused = [
        ivy.request("PUT", f"{CS}/rooms/{room}/send/m.room.message/s1", json=message),
        ivy.request("PUT", f"{CS}/rooms/{room}/state/m.room.topic/", json={"topic": "x"}),
        ivy.request("POST", f"{CS}/createRoom", json={}),
        ivy.request("POST", f"{CS}/join/{q(other)}", json={}),
        ivy.request("POST", f"{CS}/rooms/{room}/invite", json={"user_id": admin.user_id}),
    ]
    assert [(r.status_code, r.json()["errcode"]) for r in refused] == [(403, "M_USER_SUSPENDED")] * 5
    jack.send(room, "jack still talks")
    bodies = [e["content"].get("body") for e in ivy.messages(room)]
    assert "jack still talks" in bodies and "before the suspension" in bodies and before
    assert admin.ok("GET", f"{V2}/users/{q(ivy.user_id)}")["suspended"] is True
    admin.ok("PUT", f"{V1}/suspend/{q(ivy.user_id)}", json={"suspend": False})
    ivy.send(room, "after the suspension")


def test_shadow_banned_sends_reach_no_one(admin_server: ServerProcess, admin: Admin) -> None:
    kim, lee = Client(admin_server, "kim"), Client(admin_server, "lee")
    room = lee.create_room("shared")
    kim.join(room)
    assert admin.ok("POST", f"{V1}/users/{q(kim.user_id)}/shadow_ban") == {}
    assert admin.ok("GET", f"{V2}/users/{q(kim.user_id)}")["shadow_banned"] == 1
    ghost = kim.send(room, "spam spam spam")
    assert ghost.startswith("$")
    lee.send(room, "a real message")
    assert "spam spam spam" not in [e["content"].get("body") for e in lee.messages(room)]
    assert ghost not in lee.message_ids(room)
    assert admin.ok("DELETE", f"{V1}/users/{q(kim.user_id)}/shadow_ban") == {}
    seen = kim.send(room, "heard again")
    assert seen in lee.message_ids(room)


# Bad input: clear 4xx, never a 500 -----------------------------------------------------------


def test_bad_input_gets_clear_errors(admin_server: ServerProcess, admin: Admin) -> None:
    remote = q("@someone:elsewhere.example")
    unknown = q(f"@nobody_{secrets.token_hex(3)}:{admin_server.server_name}")
    cases: list[tuple[str, str, Any, int, str]] = [
        ("GET", f"{V2}/users?from=-1", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?limit=ten", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?limit=100000", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?dir=up", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?order_by=password_hash", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?deactivated=maybe", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?not_user_type=robot", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users?name=%25_%5C", None, 200, ""),
        ("GET", f"{V2}/users/not-a-user-id", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users/{remote}", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V2}/users/{unknown}", None, 404, "M_NOT_FOUND"),
        ("PUT", f"{V2}/users/{unknown}", {"admin": "yes", "password": "long enough"}, 400, "M_BAD_JSON"),
        ("PUT", f"{V2}/users/{unknown}", {"displayname": "no password"}, 400, "M_MISSING_PARAM"),
        ("PUT", f"{V2}/users/{unknown}", {"password": "x"}, 400, "M_WEAK_PASSWORD"),
        (
            "PUT",
            f"{V2}/users/{unknown}",
            {"password": "long enough", "avatar_url": "http://x"},
            400,
            "M_BAD_JSON",
        ),
        ("PUT", f"{V2}/users/{unknown}", [1, 2], 400, "M_BAD_JSON"),
        # Synapse's user types are null, "bot" and "support": anything else is refused.
        (
            "PUT",
            f"{V2}/users/{unknown}",
            {"password": "long enough", "user_type": "admin"},
            400,
            "M_INVALID_PARAM",
        ),
        ("PUT", f"{V2}/users/{q(admin.user_id)}", {"user_type": "Bot"}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{V2}/users/{q(admin.user_id)}", {"user_type": ""}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{V2}/users/{q(admin.user_id)}", {"user_type": 1}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{V2}/users/{q(admin.user_id)}", {"user_type": ["bot"]}, 400, "M_INVALID_PARAM"),
        ("POST", f"{V1}/reset_password/{unknown}", {"new_password": "long enough"}, 404, "M_NOT_FOUND"),
        ("POST", f"{V1}/reset_password/{q(admin.user_id)}", {}, 400, "M_MISSING_PARAM"),
        ("POST", f"{V1}/deactivate/{unknown}", {}, 404, "M_NOT_FOUND"),
        ("POST", f"{V1}/deactivate/{q(admin.user_id)}", {"erase": "yes"}, 400, "M_BAD_JSON"),
        ("PUT", f"{V1}/suspend/{q(admin.user_id)}", {"suspend": 1}, 400, "M_BAD_JSON"),
        ("POST", f"{V1}/users/{unknown}/shadow_ban", None, 404, "M_NOT_FOUND"),
        ("GET", f"{V1}/rooms?order_by=secret", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V1}/rooms?from=x", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V1}/rooms/{q('!unknown:x')}/members", None, 404, "M_NOT_FOUND"),
        ("GET", f"{V1}/rooms/{q('!unknown:x')}/state", None, 404, "M_NOT_FOUND"),
        ("GET", f"{V1}/event_reports/abc", None, 400, "M_INVALID_PARAM"),
        ("GET", f"{V1}/event_reports/99999999", None, 404, "M_NOT_FOUND"),
        ("GET", f"{V1}/event_reports?dir=sideways", None, 400, "M_INVALID_PARAM"),
        ("GET", "/_plugins/admin/audit_log?limit=5000", None, 400, "M_INVALID_PARAM"),
    ]
    for method, path, body, status, errcode in cases:
        r = admin.request(method, path, json=body) if body is not None else admin.request(method, path)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        if errcode:
            assert r.json()["errcode"] == errcode, f"{method} {path}: {r.text}"
    not_json = admin.request("PUT", f"{V2}/users/{unknown}", data=b"{not json")
    assert not_json.status_code == 400 and not_json.json()["errcode"] == "M_NOT_JSON"


def test_uses_allowed_past_32_bits_is_invalid_param(admin: Admin) -> None:
    """uses_allowed is a 32-bit column: 2**31 was a 500 on PostgreSQL (integer out of range)."""
    made = admin.ok("POST", f"{V1}/registration_tokens/new", json={"uses_allowed": 2**31 - 1})
    assert made["uses_allowed"] == 2**31 - 1
    for method, path in (
        ("POST", f"{V1}/registration_tokens/new"),
        ("PUT", f"{V1}/registration_tokens/{made['token']}"),
    ):
        r = admin.request(method, path, json={"uses_allowed": 2**31})
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), (method, r.text)
    assert admin.ok("GET", f"{V1}/registration_tokens/{made['token']}")["uses_allowed"] == 2**31 - 1


# Registration tokens ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server where signing up needs a registration token."""
    server = start_server_process(
        tmp_path_factory.mktemp("hs"),
        {
            "registration": {"enabled": True, "requires_token": True},
            "plugins": [{"module": "plugins.admin.AdminPlugin", "config": {}}],
        },
    )
    yield server
    server.stop()


def sign_up(server: ServerProcess, token: str | None) -> requests.Response:
    """Element's sign-up: learn the flows, then the password and the token stage."""
    base = {"username": f"new_{secrets.token_hex(4)}", "password": "a good password"}
    first = requests.post(server.url(f"{CS}/register"), json=base, timeout=10)
    assert first.status_code == 401
    assert first.json()["flows"] == [{"stages": ["m.login.registration_token"]}]
    auth = {"type": "m.login.registration_token", "token": token, "session": first.json()["session"]}
    return requests.post(server.url(f"{CS}/register"), json={**base, "auth": auth}, timeout=10)


TOKEN_FIELDS = {"token", "uses_allowed", "pending", "completed", "expiry_time"}


def test_registration_tokens(token_server: ServerProcess) -> None:
    admin = Admin(token_server)
    assert sign_up(token_server, "no-such-token").json()["errcode"] == "M_FORBIDDEN"

    made = admin.ok("POST", f"{V1}/registration_tokens/new", json={"uses_allowed": 1})
    assert set(made) == TOKEN_FIELDS and len(made["token"]) == 16
    assert (made["uses_allowed"], made["pending"], made["completed"], made["expiry_time"]) == (1, 0, 0, None)
    validity = f"/_matrix/client/v1/register/m.login.registration_token/validity?token={made['token']}"
    assert requests.get(token_server.url(validity), timeout=10).json() == {"valid": True}

    ok = sign_up(token_server, made["token"])
    assert ok.status_code == 200, ok.text
    after = admin.ok("GET", f"{V1}/registration_tokens/{made['token']}")
    assert (after["pending"], after["completed"]) == (0, 1)
    # Used up: the next sign-up is refused and the token lists as invalid.
    assert sign_up(token_server, made["token"]).json()["errcode"] == "M_FORBIDDEN"
    assert requests.get(token_server.url(validity), timeout=10).json() == {"valid": False}
    invalid = admin.ok("GET", f"{V1}/registration_tokens?valid=false")["registration_tokens"]
    assert made["token"] in [t["token"] for t in invalid]

    # Named, unlimited, then limited again and deleted.
    named = admin.ok("POST", f"{V1}/registration_tokens/new", json={"token": "friends.and~family-1"})
    assert named["token"] == "friends.and~family-1" and named["uses_allowed"] is None
    assert sign_up(token_server, "friends.and~family-1").status_code == 200
    assert sign_up(token_server, "friends.and~family-1").status_code == 200
    changed = admin.ok("PUT", f"{V1}/registration_tokens/friends.and~family-1", json={"uses_allowed": 2})
    assert (changed["uses_allowed"], changed["completed"]) == (2, 2)
    assert sign_up(token_server, "friends.and~family-1").json()["errcode"] == "M_FORBIDDEN"
    listed = admin.ok("GET", f"{V1}/registration_tokens")["registration_tokens"]
    assert all(set(t) == TOKEN_FIELDS for t in listed)
    assert admin.ok("DELETE", f"{V1}/registration_tokens/friends.and~family-1") == {}
    gone = admin.request("GET", f"{V1}/registration_tokens/friends.and~family-1")
    assert (gone.status_code, gone.json()["errcode"]) == (404, "M_NOT_FOUND")

    # Bad input: clear errors.
    for body in (
        {"token": "has space"},
        {"token": "x" * 65},
        {"length": 0},
        {"length": 65},
        {"uses_allowed": -1},
        {"uses_allowed": "3"},
        {"expiry_time": 1000},
        {"token": "a", "length": 3},
    ):
        r = admin.request("POST", f"{V1}/registration_tokens/new", json=body)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), body
    admin.ok("POST", f"{V1}/registration_tokens/new", json={"token": "dup"})
    again = admin.request("POST", f"{V1}/registration_tokens/new", json={"token": "dup"})
    assert (again.status_code, again.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert admin.request("PUT", f"{V1}/registration_tokens/nope", json={}).status_code == 404


# Deleting and blocking rooms -----------------------------------------------------------------


def test_delete_a_room_with_block_and_purge(admin_server: ServerProcess, admin: Admin) -> None:
    owner, member, invited = (Client(admin_server, n) for n in ("owner", "member", "invited"))
    tag = secrets.token_hex(3)
    room = owner.create_room("shared", name=f"Doomed {tag}", room_alias_name=f"doomed{tag}")
    owner.ok("PUT", f"/directory/list/room/{room}", json={"visibility": "public"})
    member.join(room)
    owner.member("invite", room, invited.user_id)
    secret = member.send(room, "a message that must go")
    since = member.ok("GET", "/sync", params={"timeout": "0"})["next_batch"]

    # synapse-admin's delete: DELETE /v2/rooms/{id} with {block}; purge defaults to true.
    started = admin.ok("DELETE", f"{V2}/rooms/{q(room)}", json={"block": True})
    status = admin.ok("GET", f"{V2}/rooms/delete_status/{started['delete_id']}")
    assert status["status"] == "complete"
    shutdown = status["shutdown_room"]
    assert sorted(shutdown["kicked_users"]) == sorted([owner.user_id, member.user_id, invited.user_id])
    assert shutdown["failed_to_kick_users"] == [] and shutdown["new_room_id"] is None
    assert shutdown["local_aliases"] == [f"#doomed{tag}:{admin_server.server_name}"]
    by_room = admin.ok("GET", f"{V2}/rooms/{q(room)}/delete_status")["results"]
    assert [r["delete_id"] for r in by_room] == [started["delete_id"]]

    # Everyone is out, as their own clients see it: the leave reaches an incremental sync.
    left = member.ok("GET", "/sync", params={"timeout": "0", "since": since})["rooms"]["leave"][room]
    leave = [e for e in left["timeline"]["events"] if e["type"] == "m.room.member"]
    assert leave and leave[-1]["content"]["membership"] == "leave"
    assert secret not in [e["event_id"] for e in left["timeline"]["events"]]
    for who in (owner, member):
        assert room not in who.ok("GET", "/joined_rooms")["joined_rooms"]
    sync = invited.ok("GET", "/sync", params={"timeout": "0"})
    assert room not in sync["rooms"].get("invite", {})
    # Blocked: nobody gets back in, not even by invite; the alias and the directory entry are gone.
    again = member.request("POST", f"{CS}/join/{q(room)}", json={})
    assert (again.status_code, again.json()["errcode"]) == (403, "M_FORBIDDEN")
    alias = owner.request("GET", f"{CS}/directory/room/{q(f'#doomed{tag}:{admin_server.server_name}')}")
    assert alias.status_code == 404
    public = owner.ok("GET", "/publicRooms")
    assert room not in [r["room_id"] for r in public["chunk"]]
    assert admin.ok("GET", f"{V1}/rooms/{q(room)}/block") == {"block": True, "user_id": admin.user_id}
    # Purged: the message is gone, even for a member who saw it; the room leaves the admin list.
    history = member.request("GET", f"{CS}/rooms/{q(room)}/messages", params={"dir": "b", "limit": "100"})
    assert history.status_code in (200, 403)
    if history.status_code == 200:
        assert secret not in [e["event_id"] for e in history.json()["chunk"]]
    gone = member.request("GET", f"{CS}/rooms/{q(room)}/event/{q(secret)}")
    assert gone.status_code == 404
    assert admin.request("GET", f"{V1}/rooms/{q(room)}").status_code == 404
    listed = admin.ok("GET", f"{V1}/rooms?search_term={tag}")
    assert listed["total_rooms"] == 0
    assert admin.request("DELETE", f"{V2}/rooms/{q(room)}", json={}).status_code == 404


def test_block_and_delete_without_purge(admin_server: ServerProcess, admin: Admin) -> None:
    owner, member = Client(admin_server, "owner"), Client(admin_server, "member")
    room = owner.create_room("shared")
    assert admin.ok("PUT", f"{V1}/rooms/{q(room)}/block", json={"block": True}) == {"block": True}
    refused = member.request("POST", f"{CS}/join/{q(room)}", json={})
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert admin.ok("PUT", f"{V1}/rooms/{q(room)}/block", json={"block": False}) == {"block": False}
    member.join(room)
    kept = owner.send(room, "kept for the record")

    # The older, synchronous delete, without purge: members leave, history stays.
    result = admin.ok("DELETE", f"{V1}/rooms/{q(room)}", json={"purge": False})
    assert sorted(result["kicked_users"]) == sorted([owner.user_id, member.user_id])
    assert kept in owner.message_ids(room)
    assert admin.ok("GET", f"{V1}/rooms/{q(room)}")["joined_members"] == 0
    member.join(room)  # not blocked: the room can be joined again

    for body in ({"block": "yes"}, {"purge": 1}, {"new_room_user_id": owner.user_id}):
        r = admin.request("DELETE", f"{V2}/rooms/{q(room)}", json=body)
        assert r.status_code == 400, body
    bad = admin.request("PUT", f"{V1}/rooms/not-a-room/block", json={"block": True})
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")


# Media ---------------------------------------------------------------------------------------


MEDIA_FIELDS = {
    "created_ts", "last_access_ts", "media_id", "media_length", "media_type", "quarantined_by",
    "safe_from_quarantine", "upload_name",
}  # fmt: skip


def upload(server: ServerProcess, client: Client, data: bytes, name: str) -> str:
    r = client.request(
        "POST", f"/_matrix/media/v3/upload?filename={name}", data=data, headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["content_uri"]).removeprefix(f"mxc://{server.server_name}/")


def test_a_purged_rooms_media_goes_with_its_messages(admin_server: ServerProcess, admin: Admin) -> None:
    owner = Client(admin_server, "owner")
    room = owner.create_room("private")
    media_id = upload(admin_server, owner, b"only in the doomed room", "doomed.txt")
    url = f"mxc://{admin_server.server_name}/{media_id}"
    owner.send(room, "doomed.txt", msgtype="m.file", url=url)
    download = f"/_matrix/client/v1/media/download/{admin_server.server_name}/{media_id}"
    assert owner.request("GET", download).status_code == 200

    admin.ok("DELETE", f"{V2}/rooms/{q(room)}", json={"purge": True})
    # The media plugin was told at once (not at a later retention run): the file is gone.
    gone = owner.request("GET", download)
    assert (gone.status_code, gone.json()["errcode"]) == (404, "M_NOT_FOUND")


def test_media_of_a_user_quarantine_and_delete(admin_server: ServerProcess, admin: Admin) -> None:
    uploader, viewer = Client(admin_server, "uploader"), Client(admin_server, "viewer")
    uploader.ok("PUT", f"/profile/{uploader.user_id}/displayname", json={"displayname": "Up Loader"})
    small = upload(admin_server, uploader, b"small file", "a.txt")
    large = upload(admin_server, uploader, b"a larger file" * 100, "b.txt")
    server = admin_server.server_name

    def download(media_id: str) -> int:
        path = f"/_matrix/client/v1/media/download/{server}/{media_id}"
        return uploader.request("GET", path).status_code

    listed = admin.ok(
        "GET", f"{V1}/users/{q(uploader.user_id)}/media?from=0&limit=10&order_by=media_length&dir=b"
    )
    assert listed["total"] == 2 and "next_token" not in listed
    assert [m["media_id"] for m in listed["media"]] == [large, small]
    first = listed["media"][1]
    assert set(first) == MEDIA_FIELDS
    assert (first["media_length"], first["media_type"], first["upload_name"]) == (10, "text/plain", "a.txt")
    assert (first["quarantined_by"], first["safe_from_quarantine"]) == (None, False)
    paged = admin.ok("GET", f"{V1}/users/{q(uploader.user_id)}/media?limit=1")
    assert paged["next_token"] == 1

    # Quarantined: nobody can download it, not even the uploader, until it is lifted.
    assert download(small) == 200
    assert admin.ok("POST", f"{V1}/media/quarantine/{server}/{small}") == {}
    assert download(small) == 404
    shown = admin.ok("GET", f"{V1}/users/{q(uploader.user_id)}/media?order_by=media_length")["media"][0]
    assert shown["quarantined_by"] == admin.user_id
    assert admin.ok("POST", f"{V1}/media/unquarantine/{server}/{small}") == {}
    audited = admin.ok("GET", f"/_plugins/admin/audit_log?target={small}")["entries"]
    assert [(e["method"], e["route"], e["status"]) for e in audited] == [
        ("POST", f"{V1}/media/unquarantine/{{server_name}}/{{media_id}}", 200),
        ("POST", f"{V1}/media/quarantine/{{server_name}}/{{media_id}}", 200),
    ]
    assert download(small) == 200

    # Statistics per uploader, with display names, filtered by search_term.
    stats = admin.ok(
        "GET", f"{V1}/statistics/users/media?order_by=media_length&dir=b&search_term=Up%20Loader"
    )
    assert stats["total"] == 1
    assert stats["users"] == [
        {"displayname": "Up Loader", "media_count": 2, "media_length": 10 + 1300, "user_id": uploader.user_id}
    ]
    everyone = admin.ok("GET", f"{V1}/statistics/users/media?limit=1000")
    assert uploader.user_id in [u["user_id"] for u in everyone["users"]]
    assert viewer.user_id not in [u["user_id"] for u in everyone["users"]]

    # Delete one, then all of the user's media.
    assert admin.ok("DELETE", f"{V1}/media/{server}/{large}") == {"deleted_media": [large], "total": 1}
    assert download(large) == 404
    third = upload(admin_server, uploader, b"third", "c.txt")
    deleted = admin.ok("DELETE", f"{V1}/users/{q(uploader.user_id)}/media")
    assert sorted(deleted["deleted_media"]) == sorted([small, third]) and deleted["total"] == 2
    assert admin.ok("GET", f"{V1}/users/{q(uploader.user_id)}/media")["total"] == 0

    # Bad input.
    for method, path, status in (
        ("POST", f"{V1}/media/quarantine/{server}/nonexistent", 404),
        ("DELETE", f"{V1}/media/{server}/nonexistent", 404),
        ("DELETE", f"{V1}/media/elsewhere.example/{small}", 400),
        ("GET", f"{V1}/users/{q(uploader.user_id)}/media?order_by=secret", 400),
        ("GET", f"{V1}/statistics/users/media?order_by=secret", 400),
        ("GET", f"{V1}/statistics/users/media?from_ts=-5", 400),
        ("GET", f"{V1}/users/{q('@ghost:' + server)}/media", 404),
    ):
        assert admin.request(method, path).status_code == status, path


def test_media_routes_without_a_media_plugin(token_server: ServerProcess) -> None:
    admin = Admin(token_server)
    r = admin.request("GET", f"{V1}/users/{q(admin.user_id)}/media")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")


def test_no_route_answers_500_to_odd_input(admin_server: ServerProcess, admin: Admin) -> None:
    victim = Client(admin_server, "victim")
    room = victim.create_room("shared")
    bodies: list[Any] = [
        None, [], "text", 12, {"a": 1}, {"password": 5, "admin": None, "locked": "x", "deactivated": 1},
        {"new_password": None, "logout_devices": "no"}, {"erase": None, "block": [], "purge": {}},
        {"suspend": None}, {"uses_allowed": 2**70, "expiry_time": 1e30, "length": 2.5, "token": None},
    ]  # fmt: skip
    queries = ["", "?from=99999999999999999&limit=0", "?dir=&order_by=&from=&limit=", "?from=%00"]
    for method, path in every_route(victim.user_id, room):
        tries = [(query, None) for query in queries] if method == "GET" else [("", body) for body in bodies]
        for query, body in tries:
            r = (
                admin.request(method, path + query, json=body)
                if body is not None
                else admin.request(method, path + query)
            )
            assert r.status_code < 500, f"{method} {path}{query} {body!r}: {r.status_code} {r.text}"
            if r.status_code >= 400:
                assert r.json()["errcode"].startswith("M_"), r.text


def test_synapse_admin_saves_a_user_record(admin_server: ServerProcess, admin: Admin) -> None:
    """synapse-admin's edit form PUTs the whole record back (nulls dropped, flags as booleans):
    what did not change changes nothing (no new member events in the user's rooms), and
    its email list replaces the account's addresses."""
    nora, other = Client(admin_server, "nora"), Client(admin_server, "other")
    room = nora.create_room("shared")
    members_before = [e for e in nora.messages(room) if e["type"] == "m.room.member"]
    record = admin.ok("GET", f"{V2}/users/{q(nora.user_id)}")
    edited = {k: v for k, v in record.items() if v is not None}
    edited.update({"admin": False, "deactivated": False, "is_guest": False, "id": nora.user_id})
    edited["threepids"] = [{"medium": "email", "address": "Nora@Example.org"}]
    saved = admin.ok("PUT", f"{V2}/users/{q(nora.user_id)}", json=edited)
    assert [t["address"] for t in saved["threepids"]] == ["nora@example.org"]
    assert saved["displayname"] == record["displayname"]
    assert [e for e in nora.messages(room) if e["type"] == "m.room.member"] == members_before
    # The address now logs in, as a validated one.
    login = requests.post(
        admin_server.url(f"{CS}/login"),
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "nora@example.org"},
            "password": "correct horse battery",
        },
        timeout=10,
    )
    assert login.status_code == 200, login.text

    taken = admin.request(
        "PUT",
        f"{V2}/users/{q(other.user_id)}",
        json={"threepids": [{"medium": "email", "address": "nora@example.org"}]},
    )
    assert (taken.status_code, taken.json()["errcode"]) == (400, "M_THREEPID_IN_USE")
    for bad in ([{"medium": "msisdn", "address": "123"}], [{"medium": "email", "address": "nope"}], "x"):
        r = admin.request(
            "PUT", f"{V2}/users/{q(other.user_id)}", json={"threepids": bad, "displayname": "Changed"}
        )
        assert r.status_code == 400, bad
    # Nothing of a refused request was applied.
    assert admin.ok("GET", f"{V2}/users/{q(other.user_id)}")["displayname"] != "Changed"
    cleared = admin.ok("PUT", f"{V2}/users/{q(nora.user_id)}", json={"threepids": []})
    assert cleared["threepids"] == []


def test_admin_deactivation_deletes_the_users_keys(admin_server: ServerProcess, admin: Admin) -> None:
    """Deactivating through the admin API (POST /v1/deactivate, and PUT /v2/users with
    `deactivated`) takes the account's end-to-end keys and key backup with it, as the
    user's own deactivation does."""
    viewer = new_user(admin_server, "viewer")
    for deactivate in (
        lambda user_id: admin.ok("POST", f"{V1}/deactivate/{q(user_id)}", json={"erase": False}),
        lambda user_id: admin.ok("PUT", f"{V2}/users/{q(user_id)}", json={"deactivated": True}),
    ):
        owner = new_user(admin_server, "keyowner")
        publish_all_keys(owner)
        device_ids = [d["device_id"] for d in owner.request("GET", "/devices").json()["devices"]]
        assert owner.user_id in viewer.query([owner.user_id])["master_keys"]
        deactivate(owner.user_id)
        assert_keys_gone(owner, viewer, device_ids)


def test_synapse_admin_delete_erases_the_user(admin_server: ServerProcess, admin: Admin) -> None:
    """synapse-admin's delete of a user: POST /v1/deactivate with erase: true (core/erasure.py)."""
    olga, peer = Client(admin_server, "olga"), Client(admin_server, "peer")
    olga.ok("PUT", f"/profile/{olga.user_id}/displayname", json={"displayname": "Olga"})
    room = peer.create_room("shared")
    olga.join(room)
    said = olga.send(room, "something personal")
    assert admin.ok("POST", f"{V1}/deactivate/{q(olga.user_id)}", json={"erase": True}) == {
        "id_server_unbind_result": "success"
    }
    record = admin.ok("GET", f"{V2}/users/{q(olga.user_id)}")
    assert (record["deactivated"], record["erased"], record["displayname"]) == (1, True, None)
    assert olga.request("GET", f"{CS}/account/whoami").status_code == 401
    assert admin.ok("GET", f"{V1}/rooms/{q(room)}/members")["members"] == [peer.user_id]
    seen = next(e for e in peer.messages(room) if e["event_id"] == said)
    assert "something personal" not in str(seen["content"])
    listed = admin.ok("GET", f"{V2}/users?deactivated=true&limit=1000&user_id={q(olga.user_id)}")
    assert [u["erased"] for u in listed["users"]] == [True]
