"""The same request from one user many times at once, as a client retrying or a double tap
sends it, on both engines. Each of these read, then wrote: on PostgreSQL two transactions
read the same state and the second write failed on a unique key, a 500 (and for a display
name, a traceback and a stale user directory). None may fail now, and the state is as if
the requests came one after the other."""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import VENV_BIN, ServerProcess, server_on_engine

V3 = "/_matrix/client/v3"
PASSWORD = "concurrent requests passphrase 42"
AT_ONCE = 20
GENEROUS = {"per_second": 100_000, "burst": 1_000_000}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    limits = {name: GENEROUS for name in ("create_room_per_user", "profile_update_per_user", "login_per_ip")}
    overrides = {"rate_limits": limits, "plugins": [{"module": "plugins.admin.AdminPlugin", "config": {}}]}
    with server_on_engine(request, tmp_path_factory, request.param, overrides, "race") as s:
        yield s


@pytest.fixture
def user(server: ServerProcess) -> dict[str, Any]:
    username = f"race{secrets.token_hex(4)}"
    return {**server.register(username, PASSWORD), "username": username}


def at_once(send: Callable[[int], requests.Response]) -> list[requests.Response]:
    """`send(i)` for each i, all released together."""
    start = threading.Barrier(AT_ONCE)
    answers: list[requests.Response] = []

    def run(i: int) -> None:
        start.wait()
        answers.append(send(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(AT_ONCE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def statuses(answers: list[requests.Response]) -> list[int]:
    return sorted(r.status_code for r in answers)


def auth(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['access_token']}"}


def test_backup_versions_made_at_once_are_all_made(server: ServerProcess, user: dict[str, Any]) -> None:
    body = {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "x"}}
    url = server.url(V3 + "/room_keys/version")
    answers = at_once(lambda _: requests.post(url, json=body, headers=auth(user), timeout=30))
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    versions = {r.json()["version"] for r in answers}
    assert len(versions) == AT_ONCE
    newest = requests.get(url, headers=auth(user), timeout=10).json()["version"]
    assert newest == max(versions, key=int)
    assert "Traceback" not in server.log_text()


def test_one_time_keys_uploaded_twice_at_once_are_kept_once(
    server: ServerProcess, user: dict[str, Any]
) -> None:
    url = server.url(V3 + "/keys/upload")
    for round_ in range(3):
        keys = {
            f"signed_curve25519:R{round_}K{i}": {"key": f"k{round_}{i}", "signatures": {}} for i in range(3)
        }
        answers = at_once(
            lambda _, keys=keys: requests.post(
                url, json={"one_time_keys": keys}, headers=auth(user), timeout=30
            )
        )
        assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    counts = requests.post(url, json={}, headers=auth(user), timeout=10).json()["one_time_key_counts"]
    assert counts == {"signed_curve25519": 9}
    assert "Traceback" not in server.log_text()


def test_filters_pushers_and_logins_at_once(server: ServerProcess, user: dict[str, Any]) -> None:
    user_id = user["user_id"]
    filter_url = server.url(f"{V3}/user/{user_id}/filter")
    answers = at_once(
        lambda i: requests.post(
            filter_url, json={"room": {"timeline": {"limit": i}}}, headers=auth(user), timeout=30
        )
    )
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    assert len({r.json()["filter_id"] for r in answers}) == AT_ONCE

    pusher = {
        "kind": "http", "app_id": "org.example.app", "pushkey": "key1", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example/_matrix/push/v1/notify"},
    }  # fmt: skip
    url = server.url(V3 + "/pushers/set")
    answers = at_once(lambda _: requests.post(url, json=pusher, headers=auth(user), timeout=30))
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    listed = requests.get(server.url(V3 + "/pushers"), headers=auth(user), timeout=10).json()["pushers"]
    assert [p["pushkey"] for p in listed] == ["key1"]

    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user["username"]},
        "password": PASSWORD,
        "device_id": "SAMEDEVICE",
    }
    answers = at_once(lambda _: requests.post(server.url(V3 + "/login"), json=login, timeout=30))
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    devices = requests.get(server.url(V3 + "/devices"), headers=auth(user), timeout=10).json()["devices"]
    assert sorted(d["device_id"] for d in devices) == sorted({user["device_id"], "SAMEDEVICE"})
    assert "Traceback" not in server.log_text()


def test_one_alias_named_by_many_new_rooms_at_once_goes_to_one(
    server: ServerProcess, user: dict[str, Any]
) -> None:
    url = server.url(V3 + "/createRoom")
    for _ in range(3):
        local = f"race{secrets.token_hex(4)}"
        body = {"room_alias_name": local, "preset": "public_chat"}
        answers = at_once(lambda _, body=body: requests.post(url, json=body, headers=auth(user), timeout=30))
        assert statuses(answers) == [200] + [400] * (AT_ONCE - 1), [r.text for r in answers]
        assert {r.json()["errcode"] for r in answers if r.status_code == 400} == {"M_ROOM_IN_USE"}
        made = next(r.json()["room_id"] for r in answers if r.status_code == 200)
        alias = f"#{local}:{server.server_name}"
        found = requests.get(server.url(f"{V3}/directory/room/{requests.utils.quote(alias)}"), timeout=10)
        assert found.json()["room_id"] == made
    joined = requests.get(server.url(V3 + "/joined_rooms"), headers=auth(user), timeout=10).json()[
        "joined_rooms"
    ]
    assert len(joined) == 3  # no room was left behind by a refused request
    assert "Traceback" not in server.log_text()


def test_display_names_set_at_once_leave_the_directory_right(
    server: ServerProcess, user: dict[str, Any]
) -> None:
    # In a public room, so that others find the user in the directory.
    r = requests.post(
        server.url(V3 + "/createRoom"), json={"preset": "public_chat"}, headers=auth(user), timeout=10
    )
    assert r.status_code == 200, r.text
    url = server.url(f"{V3}/profile/{user['user_id']}/displayname")
    answers = at_once(
        lambda i: requests.put(url, json={"displayname": f"Racer {i}"}, headers=auth(user), timeout=30)
    )
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    final = requests.get(url, headers=auth(user), timeout=10).json()["displayname"]
    other = server.register(f"other{secrets.token_hex(4)}", PASSWORD)
    search = requests.post(
        server.url(V3 + "/user_directory/search"),
        json={"search_term": final},
        headers=auth(other),
        timeout=10,
    ).json()
    assert [(r["user_id"], r.get("display_name")) for r in search["results"]] == [(user["user_id"], final)]
    assert "profile listener failed" not in server.log_text()


def make_admin(server: ServerProcess) -> dict[str, Any]:
    localpart = f"admin{secrets.token_hex(4)}"
    made = subprocess.run(
        [str(VENV_BIN / "homeserver"), "admin", "create-user", "-c", str(server.config_path)]
        + ["--email", f"{localpart}@example.org", "--password", PASSWORD, "--username", localpart, "--admin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return server.login(localpart, PASSWORD)


def test_admins_blocking_purging_and_setting_emails_at_once(
    server: ServerProcess, user: dict[str, Any]
) -> None:
    admin = make_admin(server)
    room = requests.post(server.url(V3 + "/createRoom"), json={}, headers=auth(user), timeout=10).json()[
        "room_id"
    ]
    url = server.url(f"/_synapse/admin/v1/rooms/{room}/block")
    answers = at_once(lambda _: requests.put(url, json={"block": True}, headers=auth(admin), timeout=30))
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    assert requests.get(url, headers=auth(admin), timeout=10).json()["block"] is True

    purged = requests.post(server.url(V3 + "/createRoom"), json={}, headers=auth(user), timeout=10).json()[
        "room_id"
    ]
    url = server.url(f"/_synapse/admin/v1/rooms/{purged}")
    answers = at_once(lambda _: requests.delete(url, json={"purge": True}, headers=auth(admin), timeout=60))
    # Once one purge has deleted the room, a later one finds no room.
    assert 200 in statuses(answers) and set(statuses(answers)) <= {200, 404}, [r.text for r in answers]

    url = server.url(f"/_synapse/admin/v2/users/{user['user_id']}")
    emails = {"threepids": [{"medium": "email", "address": f"{user['username']}@example.org"}]}
    answers = at_once(lambda _: requests.put(url, json=emails, headers=auth(admin), timeout=30))
    assert statuses(answers) == [200] * AT_ONCE, [r.text for r in answers if r.status_code != 200]
    threepids = requests.get(url, headers=auth(admin), timeout=10).json()["threepids"]
    assert [t["address"] for t in threepids] == [f"{user['username']}@example.org"]
    assert "Traceback" not in server.log_text()
