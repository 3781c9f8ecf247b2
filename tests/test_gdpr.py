"""GDPR (docs/gdpr.md) against real server processes with the media plugin: a user's data
export (exactly their events and uploads, progress, only for them, restarted after a
restart) and erasure (deactivate with `erase: true`)."""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import ServerProcess, restart_server_process, server_on_engine, start_server_process

PASSWORD = "gdpr-" + secrets.token_urlsafe(8)
CLIENT = "/_matrix/client/v3"
DOWNLOAD = "/_matrix/client/v1/media/download"
MEDIA = {"module": "plugins.media.MediaPlugin", "config": {"max_upload_size": "2M"}}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with the media plugin, on each engine in turn (PostgreSQL: a schema of its own)."""
    overrides: dict[str, Any] = {"plugins": [MEDIA]}
    with server_on_engine(request, tmp_path_factory, request.param, overrides, "gdpr") as server:
        yield server


class User:
    def __init__(self, server: ServerProcess, name: str) -> None:
        self.server = server
        self.localpart = f"{name}{secrets.token_hex(3)}"
        result = server.register(self.localpart, PASSWORD)
        self.user_id: str = result["user_id"]
        self.token: str = result["access_token"]

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.server.url(path), headers=headers, timeout=30, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.call(method, path, **kwargs)
        assert r.status_code in (200, 201, 202), f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def create_room(self, **body: Any) -> str:
        room_id: str = self.ok("POST", f"{CLIENT}/createRoom", json=body)["room_id"]
        return room_id

    def join(self, room_id: str) -> None:
        self.ok("POST", f"{CLIENT}/join/{quote(room_id)}", json={})

    def send(self, room_id: str, content: dict[str, Any]) -> str:
        txn = secrets.token_hex(6)
        path = f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/{txn}"
        event_id: str = self.ok("PUT", path, json=content)["event_id"]
        return event_id

    def upload(self, data: bytes) -> str:
        r = self.call(
            "POST",
            "/_matrix/media/v3/upload",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        mxc: str = r.json()["content_uri"]
        return mxc

    def download(self, mxc: str) -> requests.Response:
        return self.call("GET", f"{DOWNLOAD}/{mxc.removeprefix('mxc://')}")

    def messages(self, room_id: str) -> list[dict[str, Any]]:
        path = f"{CLIENT}/rooms/{quote(room_id)}/messages"
        chunk: list[dict[str, Any]] = self.ok("GET", path, params={"dir": "b", "limit": 100})["chunk"]
        return chunk

    def finished_export(self, export_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The export once it is no longer running, and every status seen on the way."""
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = self.ok("GET", f"/api/me/export/{export_id}")
            seen.append(status)
            if status["state"] != "running":
                return status, seen
            time.sleep(0.05)
        raise AssertionError(f"export still running: {seen[-1]}")

    def export_zip(self, export_id: str) -> zipfile.ZipFile:
        r = self.call("GET", f"/api/me/export/{export_id}/download")
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/zip"
        assert int(r.headers["Content-Length"]) == len(r.content)
        return zipfile.ZipFile(io.BytesIO(r.content))


def password_auth(user: User) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": PASSWORD,
    }


# Export -------------------------------------------------------------------------------


def test_export_holds_exactly_the_users_events_media_and_data(server: ServerProcess) -> None:
    alice, bob = User(server, "alice"), User(server, "bob")
    alice.ok("PUT", f"{CLIENT}/profile/{quote(alice.user_id)}/displayname", json={"displayname": "Alice A"})
    room = alice.create_room(name="export", invite=[bob.user_id])
    bob.join(room)
    alice_image = b"alice's bytes " + secrets.token_bytes(5000)
    bob_image = b"bob's bytes " + secrets.token_bytes(3000)
    alice_mxc = alice.upload(alice_image)
    bob_mxc = bob.upload(bob_image)
    sent = [alice.send(room, {"msgtype": "m.text", "body": f"alice says {i}"}) for i in range(3)]
    sent.append(alice.send(room, {"msgtype": "m.image", "body": "pic", "url": alice_mxc}))
    bobs = [bob.send(room, {"msgtype": "m.text", "body": f"bob says {i}"}) for i in range(2)]
    bob.send(room, {"msgtype": "m.image", "body": "pic", "url": bob_mxc})
    alice.ok("PUT", f"{CLIENT}/user/{quote(alice.user_id)}/account_data/org.example.notes", json={"n": 1})

    started = alice.call("POST", "/api/me/export")
    assert started.status_code == 202, started.text
    export_id = started.json()["id"]
    status, seen = alice.finished_export(export_id)
    assert status["state"] == "done", status
    assert status["progress"]["done"] == status["progress"]["total"] >= 4 + len(sent)
    dones = [s["progress"]["done"] for s in seen]
    assert dones == sorted(dones), "progress only moves forward"
    assert status["downloadPath"] == f"/api/me/export/{export_id}/download"

    archive = alice.export_zip(export_id)
    events = json.loads(archive.read("events.json"))
    assert {ev["sender"] for ev in events} == {alice.user_id}
    ids = [ev["event_id"] for ev in events]
    assert set(sent) <= set(ids) and not set(bobs) & set(ids)
    bodies = [ev["content"].get("body") for ev in events if ev["type"] == "m.room.message"]
    assert bodies == ["alice says 0", "alice says 1", "alice says 2", "pic"]
    assert any(ev["type"] == "m.room.create" for ev in events)  # every event, state too

    profile = json.loads(archive.read("profile.json"))
    assert profile["user_id"] == alice.user_id and profile["displayname"] == "Alice A"
    account_data = json.loads(archive.read("account_data.json"))
    assert account_data["global"]["org.example.notes"] == {"n": 1}
    devices = json.loads(archive.read("devices.json"))
    assert len(devices) == 1 and devices[0]["device_id"]
    rooms = {r["room_id"]: r for r in json.loads(archive.read("rooms.json"))}
    assert rooms[room]["membership"] == "join"

    media = json.loads(archive.read("media/index.json"))
    assert [m["contentUri"] for m in media] == [alice_mxc]
    assert archive.read(f"media/{media[0]['file']}") == alice_image
    assert not any(bob_mxc.rsplit("/", 1)[1] in name for name in archive.namelist())


def test_only_the_owner_sees_an_export(server: ServerProcess) -> None:
    alice, mallory = User(server, "alice"), User(server, "mallory")
    export_id = alice.ok("POST", "/api/me/export")["id"]
    alice.finished_export(export_id)
    for path in (f"/api/me/export/{export_id}", f"/api/me/export/{export_id}/download"):
        r = mallory.call("GET", path)
        assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
        r = requests.get(server.url(path), timeout=10)
        assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN", r.text
    assert mallory.ok("GET", "/api/me/export") == {"exports": []}
    assert [e["id"] for e in alice.ok("GET", "/api/me/export")["exports"]] == [export_id]
    r = alice.call("GET", "/api/me/export/nosuchexport/download")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"


def test_a_user_keeps_their_last_three_exports(server: ServerProcess) -> None:
    alice = User(server, "alice")
    ids = []
    for _ in range(4):
        ids.append(alice.ok("POST", "/api/me/export")["id"])
        alice.finished_export(ids[-1])
    assert [e["id"] for e in alice.ok("GET", "/api/me/export")["exports"]] == ids[1:]
    assert alice.call("GET", f"/api/me/export/{ids[0]}").status_code == 404
    assert not (server.data_dir / "exports" / f"{ids[0]}.zip").exists()
    assert (server.data_dir / "exports" / f"{ids[1]}.zip").exists()


def test_an_export_cut_short_by_a_restart_starts_over(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A job left `running` in the database (the process died) is run again at start-up."""
    server = start_server_process(tmp_path_factory.mktemp("gdpr-restart"), {"plugins": [MEDIA]})
    try:
        alice = User(server, "alice")
        room = alice.create_room(name="before the crash")
        event_id = alice.send(room, {"msgtype": "m.text", "body": "kept"})
        server.stop()
        db = sqlite3.connect(server.data_dir / "homeserver.db")
        with db:
            db.execute(
                "INSERT INTO user_exports (export_id, user_id, state, done_steps, total_steps, created_ts)"
                " VALUES ('interrupted', ?, 'running', 3, 10, 0)",
                (alice.user_id,),
            )
        db.close()
        (server.data_dir / "exports").mkdir(exist_ok=True)
        (server.data_dir / "exports" / "interrupted.zip.part").write_bytes(b"half a zip")
        server = restart_server_process(server)
        alice.token = server.login(alice.localpart, PASSWORD)["access_token"]
        alice.server = server
        status, _ = alice.finished_export("interrupted")
        assert status["state"] == "done"
        events = json.loads(alice.export_zip("interrupted").read("events.json"))
        assert event_id in [ev["event_id"] for ev in events]
        assert not (server.data_dir / "exports" / "interrupted.zip.part").exists()
    finally:
        server.stop()


# Erasure ------------------------------------------------------------------------------


def test_erasure_forgets_the_user_and_keeps_the_room_working(server: ServerProcess) -> None:
    alice, bob, carol = User(server, "alice"), User(server, "bob"), User(server, "carol")
    alice.ok("PUT", f"{CLIENT}/profile/{quote(alice.user_id)}/displayname", json={"displayname": "Alice Z"})
    room = bob.create_room(name="erasure", preset="public_chat")
    alice.join(room)
    other_room = bob.create_room(name="invite only", invite=[alice.user_id])  # alice never joins
    mxc = alice.upload(b"private picture " + secrets.token_bytes(100))
    assert alice.download(mxc).status_code == 200
    secret_ids = [alice.send(room, {"msgtype": "m.text", "body": f"zanzibar secret {i}"}) for i in range(2)]
    secret_ids.append(alice.send(room, {"msgtype": "m.image", "body": "pic", "url": mxc}))
    before = bob.send(room, {"msgtype": "m.text", "body": "bob before"})
    sync = bob.ok("GET", f"{CLIENT}/sync", params={"timeout": 0})
    export_id = alice.ok("POST", "/api/me/export")["id"]
    alice.finished_export(export_id)

    r = alice.call(
        "POST", f"{CLIENT}/account/deactivate", json={"auth": password_auth(alice), "erase": "yes"}
    )
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"
    alice.ok("POST", f"{CLIENT}/account/deactivate", json={"auth": password_auth(alice), "erase": True})

    # The account: no login, no profile, no media.
    r = requests.post(
        server.url(f"{CLIENT}/login"),
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.localpart},
            "password": PASSWORD,
        },
        timeout=10,
    )
    assert r.status_code == 403 and r.json()["errcode"] == "M_USER_DEACTIVATED", r.text
    profile = bob.call("GET", f"{CLIENT}/profile/{quote(alice.user_id)}")
    assert "displayname" not in (profile.json() if profile.status_code == 200 else {})
    assert bob.download(mxc).status_code == 404
    assert not (server.data_dir / "exports" / f"{export_id}.zip").exists()

    # The rooms: she left the one she was in and refused the invite.
    members = bob.ok("GET", f"{CLIENT}/rooms/{quote(room)}/members")["chunk"]
    assert {m["state_key"]: m["content"]["membership"] for m in members}[alice.user_id] == "leave"
    state = bob.ok("GET", f"{CLIENT}/rooms/{quote(other_room)}/state/m.room.member/{quote(alice.user_id)}")
    assert state["membership"] == "leave"

    # A later joiner sees the messages' ids with no content; so does an earlier member (docs/gdpr.md).
    carol.join(room)
    for reader in (carol, bob):
        timeline = {ev["event_id"]: ev for ev in reader.messages(room)}
        for event_id in secret_ids:
            assert timeline[event_id]["content"] == {}, timeline[event_id]
            assert timeline[event_id]["sender"] == alice.user_id
        assert timeline[before]["content"]["body"] == "bob before"
        joins = [
            ev
            for ev in timeline.values()
            if ev["type"] == "m.room.member" and ev["state_key"] == alice.user_id
        ]
        assert joins and all("displayname" not in ev["content"] for ev in joins)
        one = reader.ok("GET", f"{CLIENT}/rooms/{quote(room)}/event/{quote(secret_ids[0])}")
        assert one["content"] == {}
    hits = bob.ok(
        "POST", f"{CLIENT}/search", json={"search_categories": {"room_events": {"search_term": "zanzibar"}}}
    )
    assert hits["search_categories"]["room_events"]["results"] == []

    # Sync and paging go on for the others.
    after = bob.send(room, {"msgtype": "m.text", "body": "bob after"})
    delta = bob.ok("GET", f"{CLIENT}/sync", params={"since": sync["next_batch"], "timeout": 0})
    events = delta["rooms"]["join"][room]["timeline"]["events"]
    assert after in [ev["event_id"] for ev in events]
    page = bob.ok("GET", f"{CLIENT}/rooms/{quote(room)}/messages", params={"dir": "b", "limit": 2})
    older = bob.ok(
        "GET",
        f"{CLIENT}/rooms/{quote(room)}/messages",
        params={"dir": "b", "limit": 100, "from": page["end"]},
    )
    assert [ev["event_id"] for ev in page["chunk"]][0] == after
    assert set(secret_ids) <= {ev["event_id"] for ev in older["chunk"]}
    initial = carol.ok("GET", f"{CLIENT}/sync", params={"timeout": 0})
    shown = {ev["event_id"]: ev for ev in initial["rooms"]["join"][room]["timeline"]["events"]}
    assert all(shown[e]["content"] == {} for e in secret_ids if e in shown)
