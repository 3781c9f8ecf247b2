"""What clients ask at start-up or in their settings: TURN, OpenID, third-party protocols,
and profile changes that reach every room (issue 14, point 7).

matrix-js-sdk makes the start-up calls (tests/js/compat.mjs), matrix-nio changes a
profile while another nio client watches its rooms.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from conftest import ROOT, ServerProcess
from js_runner import node_or_skip, run_script
from nio import RoomMemberEvent, SyncResponse
from test_rooms_nio import close_all, logged_in, new_users, run, sync_until, timeline

CLIENT = "/_matrix/client/v3"
USERINFO = "/_matrix/federation/v1/openid/userinfo"
TURN_ENV = {"PYTHONPATH": str(ROOT / "tests" / "plugins")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(r: requests.Response) -> tuple[int, str]:
    return r.status_code, r.json().get("errcode")


def test_js_sdk_start_up_calls_and_legacy_paths(start_server: Any) -> None:
    node = node_or_skip()
    server: ServerProcess = start_server(
        {"plugins": [{"module": "plugins.media.MediaPlugin", "config": {"max_upload_size": "1M"}}]}
    )
    alice, bob = (server.register(name) for name in ("jscompat_a", "jscompat_b"))
    out = run_script(node, "compat.mjs", server.base_url, alice["access_token"], bob["access_token"])

    assert out["versions"][0] == "r0.6.1" and out["supports_v1_1"] == ("v1.1" in out["versions"])
    assert out["cross_signing"] is True
    # No calls plugin: an empty answer, which the SDK takes as "no TURN server".
    assert out["turn"] == {}
    openid = out["openid"]
    assert openid["token_type"] == "Bearer" and openid["expires_in"] == 3600
    assert openid["matrix_server_name"] == server.server_name
    assert out["userinfo"] == {"status": 200, "body": {"sub": alice["user_id"]}}
    assert out["openid_for_other"] == {"status": 403, "errcode": "M_FORBIDDEN"}
    assert out["protocols"] == {}
    assert out["r0_config"] == {"m.upload.size": 1024 * 1024}
    assert out["r0_upload"]["content_uri"].startswith(f"mxc://{server.server_name}/")
    assert out["r0_download"] == {"status": 200, "body": "hello from r0"}
    assert alice["user_id"] in out["unstable_query"]["device_keys"]


def test_start_up_endpoints_need_a_token(server: ServerProcess) -> None:
    for method, path in (
        ("GET", f"{CLIENT}/voip/turnServer"),
        ("GET", f"{CLIENT}/thirdparty/protocols"),
        ("POST", f"{CLIENT}/user/%40a%3Ax/openid/request_token"),
        ("DELETE", f"{CLIENT}/profile/%40a%3Ax/displayname"),
    ):
        r = requests.request(method, server.url(path), json={}, timeout=10)
        assert error_of(r) == (401, "M_MISSING_TOKEN"), (method, path)
        r = requests.request(method, server.url(path), json={}, headers=auth("nonsense"), timeout=10)
        assert error_of(r) == (401, "M_UNKNOWN_TOKEN"), (method, path)


def test_openid_userinfo_refuses_unknown_and_expired_tokens(server: ServerProcess) -> None:
    user = server.register(f"oid{id(server) % 10000}")
    for params in ({}, {"access_token": ""}, {"access_token": "forged"}):
        r = requests.get(server.url(USERINFO), params=params, timeout=10)
        assert error_of(r) == (401, "M_UNKNOWN_TOKEN"), params
    # The user's access token is not an OpenID token, and the other way round.
    r = requests.get(server.url(USERINFO), params={"access_token": user["access_token"]}, timeout=10)
    assert error_of(r) == (401, "M_UNKNOWN_TOKEN")
    path = f"{CLIENT}/user/{quote(user['user_id'])}/openid/request_token"
    token = requests.post(server.url(path), json={}, headers=auth(user["access_token"]), timeout=10).json()
    r = requests.get(server.url(f"{CLIENT}/account/whoami"), headers=auth(token["access_token"]), timeout=10)
    assert r.status_code == 401
    r = requests.post(server.url(path), data=b"[]", headers=auth(user["access_token"]), timeout=10)
    assert error_of(r) == (400, "M_BAD_JSON")

    # An hour later (moved in the database: the token is stored by hash with its expiry).
    assert requests.get(server.url(USERINFO), params={"access_token": token["access_token"]}, timeout=10).ok
    db = Path(server.config["data_dir"]) / "homeserver.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE openid_tokens SET expires_ts = 0")
    r = requests.get(server.url(USERINFO), params={"access_token": token["access_token"]}, timeout=10)
    assert error_of(r) == (401, "M_UNKNOWN_TOKEN")


def test_a_plugin_provides_turn_credentials(start_server: Any) -> None:
    uris = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]
    server: ServerProcess = start_server(
        {"plugins": [{"module": "turn_credentials.TurnCredentials", "config": {"uris": uris}}]}, env=TURN_ENV
    )
    user = server.register("turnuser")
    r = requests.get(server.url(f"{CLIENT}/voip/turnServer"), headers=auth(user["access_token"]), timeout=10)
    assert r.json() == {
        "username": f"1700000000:{user['user_id']}",
        "password": "secret",
        "uris": uris,
        "ttl": 86400,
    }


# Profile changes reach every joined room -------------------------------------------------


def member_events(response: SyncResponse, room_id: str, user_id: str) -> list[RoomMemberEvent]:
    return [
        e for e in timeline(response, room_id) if isinstance(e, RoomMemberEvent) and e.state_key == user_id
    ]


async def profile_changes(server: ServerProcess) -> dict[str, Any]:
    alice_name, bob_name = new_users(server, "prof", "watch")
    alice, bob = await logged_in(server, alice_name), await logged_in(server, bob_name)
    try:
        rooms = []
        for _ in range(3):
            created = await alice.room_create(invite=[bob.user_id])
            rooms.append(created.room_id)
            await bob.join(created.room_id)
        # Alice leaves the third room: it must not get her new name.
        await alice.room_leave(rooms[2])
        await sync_until(bob, lambda r: all(room in bob.rooms for room in rooms), "the three rooms")

        await alice.set_displayname("Alice Renamed")
        await alice.set_avatar(f"mxc://{server.server_name}/avatar1")
        seen: dict[str, dict[str, Any]] = {}

        def check(response: SyncResponse) -> bool:
            for room in rooms:
                for ev in member_events(response, room, alice.user_id):
                    seen.setdefault(room, {}).update(ev.content)
            done = [seen.get(room, {}) for room in rooms[:2]]
            return all(s.get("avatar_url") and s.get("displayname") == "Alice Renamed" for s in done)

        await sync_until(bob, check, "alice's new name and avatar in both rooms")
        names = {room: bob.rooms[room].user_name(alice.user_id) for room in rooms[:2]}
        third_after_rename = dict(seen.get(rooms[2], {}))

        # Deleting the display name (v1.16) writes member events without it.
        r = requests.delete(
            server.url(f"{CLIENT}/profile/{quote(alice.user_id)}/displayname"),
            headers=auth(alice.access_token),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        cleared: dict[str, dict[str, Any]] = {}

        def check_cleared(response: SyncResponse) -> bool:
            for room in rooms[:2]:
                for ev in member_events(response, room, alice.user_id):
                    cleared[room] = ev.content
            return len(cleared) == 2

        await sync_until(bob, check_cleared, "member events without the display name")
        profile = requests.get(server.url(f"{CLIENT}/profile/{quote(alice.user_id)}"), timeout=10).json()
        return {
            "names": names,
            "membership": {room: s.get("membership") for room, s in seen.items()},
            "third": third_after_rename,
            "cleared": cleared,
            "profile": profile,
            "alice": alice.user_id,
            "rooms": rooms,
        }
    finally:
        await close_all(alice, bob)


def test_profile_changes_are_written_into_every_joined_room(any_server: ServerProcess) -> None:
    out = run(profile_changes(any_server))
    first, second, left = out["rooms"]
    assert out["names"] == {first: "Alice Renamed", second: "Alice Renamed"}
    assert out["membership"] == {first: "join", second: "join"}
    # The room she left got nothing (a join event there would re-join her).
    assert out["third"] == {}
    for room in (first, second):
        assert "displayname" not in out["cleared"][room]
        assert out["cleared"][room]["membership"] == "join"
        assert out["cleared"][room]["avatar_url"].endswith("/avatar1")
    assert "displayname" not in out["profile"] and out["profile"]["avatar_url"].endswith("/avatar1")


def test_profile_edits_of_others_and_unknown_fields_are_refused(server: ServerProcess) -> None:
    a, b = server.register(f"pa{id(object()) % 9999}"), server.register(f"pb{id(object()) % 9999}")
    path = f"{CLIENT}/profile/{quote(a['user_id'])}/displayname"
    r = requests.delete(server.url(path), headers=auth(b["access_token"]), timeout=10)
    assert error_of(r) == (403, "M_FORBIDDEN")
    r = requests.delete(
        server.url(f"{CLIENT}/profile/{quote(a['user_id'])}/m.nonsense"),
        headers=auth(a["access_token"]),
        timeout=10,
    )
    assert error_of(r)[0] in (400, 404)
