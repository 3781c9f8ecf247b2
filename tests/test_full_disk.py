"""A full disk under the data dir (docs/operations.md, "A full disk"): a real server process
on the default engine (SQLite under data_dir, local media) whose data dir is on a small
tmpfs, which the test fills with one big file and then frees.

While full, writes answer 507 M_RESOURCE_LIMIT_EXCEEDED (never a 500), reads keep
working, and once the big file is gone everything works again without a restart; nothing
acknowledged before, during or after is missing, no half-written media file is served, and
the log says "disk full" once rather than a traceback per request. A start-up on a full disk
stops with one clear line.

Mounting needs root (CAP_SYS_ADMIN): without it the tests skip here and fail in CI.
"""

from __future__ import annotations

import io
import os
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from conftest import VENV_BIN, ServerProcess, base_config, free_port, start_server_with_config
from PIL import Image

CLIENT = "/_matrix/client/v3"
MEDIA = "plugins.media.MediaPlugin"
DISK_SIZE = "12m"


def _missing(problem: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh size-limited tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        _missing(f"cannot mount a small tmpfs ({done.stderr.strip()}): the full-disk tests need root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Write one file until the disk refuses more; return it."""
    big = disk / "big.fill"
    chunk = b"\0" * (64 * 1024)
    with open(big, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
        # The last bytes a page at a time, so not even a small write fits.
        while True:
            try:
                f.write(b"\0" * 512)
            except OSError:
                break
    return big


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 40, 40)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def config_on(disk: Path, tmp_path: Path) -> dict[str, Any]:
    port = free_port()
    config = base_config(tmp_path, port)
    config["data_dir"] = str(disk / "data")
    config["plugins"] = [{"module": MEDIA, "config": {"max_upload_size": "4M"}}]
    return config


def is_disk_full(r: requests.Response) -> bool:
    return r.status_code == 507 and r.json().get("errcode") == "M_RESOURCE_LIMIT_EXCEEDED"


class Client:
    def __init__(self, server: ServerProcess, token: str, user_id: str) -> None:
        self.server = server
        self.token = token
        self.user_id = user_id

    def send(self, room_id: str, body: str) -> requests.Response:
        return requests.put(
            self.server.url(f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(8)}"),
            json={"msgtype": "m.text", "body": body},
            headers=auth(self.token),
            timeout=10,
        )

    def receipt(self, room_id: str, event_id: str) -> requests.Response:
        return requests.post(
            self.server.url(f"{CLIENT}/rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}"),
            json={},
            headers=auth(self.token),
            timeout=10,
        )

    def account_data(self, value: str) -> requests.Response:
        return requests.put(
            self.server.url(f"{CLIENT}/user/{quote(self.user_id)}/account_data/org.example.fill"),
            json={"value": value},
            headers=auth(self.token),
            timeout=10,
        )

    def upload(self, data: bytes, content_type: str = "application/octet-stream") -> requests.Response:
        return requests.post(
            self.server.url("/_matrix/media/v3/upload"),
            data=data,
            headers={**auth(self.token), "Content-Type": content_type},
            timeout=30,
        )

    def thumbnail(self, mxc: str) -> requests.Response:
        return requests.get(
            self.server.url(f"/_matrix/client/v1/media/thumbnail/{mxc.removeprefix('mxc://')}"),
            params={"width": 96, "height": 96, "method": "crop"},
            headers=auth(self.token),
            timeout=30,
        )

    def download(self, mxc: str) -> requests.Response:
        return requests.get(
            self.server.url(f"/_matrix/client/v1/media/download/{mxc.removeprefix('mxc://')}"),
            headers=auth(self.token),
            timeout=30,
        )

    def messages(self, room_id: str) -> list[str]:
        r = requests.get(
            self.server.url(f"{CLIENT}/rooms/{quote(room_id)}/messages"),
            params={"dir": "b", "limit": "1000"},
            headers=auth(self.token),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return [e["content"].get("body") for e in r.json()["chunk"] if e["type"] == "m.room.message"]

    def sync(self) -> requests.Response:
        return requests.get(self.server.url(f"{CLIENT}/sync"), headers=auth(self.token), timeout=10)


def register(server: ServerProcess, name: str) -> requests.Response:
    return requests.post(
        server.url(f"{CLIENT}/register"),
        json={"username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}},
        timeout=10,
    )


def test_full_disk_refuses_writes_keeps_reads_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    server = start_server_with_config(tmp_path, config_on(small_disk, tmp_path))
    try:
        r = register(server, "alice")
        assert r.status_code == 200, r.text
        alice = Client(server, r.json()["access_token"], r.json()["user_id"])
        r = requests.post(server.url(f"{CLIENT}/createRoom"), json={}, headers=auth(alice.token), timeout=10)
        assert r.status_code == 200, r.text
        room = r.json()["room_id"]
        acknowledged: list[str] = []
        for i in range(5):
            r = alice.send(room, f"before {i}")
            assert r.status_code == 200, r.text
            acknowledged.append(f"before {i}")
            last_event = r.json()["event_id"]
        picture = os.urandom(200_000)
        r = alice.upload(picture)
        assert r.status_code == 200, r.text
        mxc = r.json()["content_uri"]
        r = alice.upload(jpeg(), "image/jpeg")
        assert r.status_code == 200, r.text
        photo = r.json()["content_uri"]

        big = fill(small_disk)

        # Writes: each either succeeds (SQLite may reuse space inside its WAL) or answers
        # 507; never anything else. Keep writing until the disk-full answer is seen.
        refused = 0
        for i in range(300):
            r = alice.send(room, f"during {i}")
            if r.status_code == 200:
                acknowledged.append(f"during {i}")
                continue
            assert is_disk_full(r), (r.status_code, r.text)
            refused += 1
            if refused >= 3:
                break
        assert refused >= 3, "the disk never filled up for the database"
        r = alice.upload(os.urandom(300_000))
        assert is_disk_full(r), (r.status_code, r.text)
        # No half-written file is left behind (nor could one be served: it has no id).
        store = small_disk / "data" / "plugins" / "media"
        assert [p.name for p in store.rglob("*.part")] == []
        for attempt in (
            lambda: alice.receipt(room, last_event),
            lambda: alice.account_data("x" * 50_000),
            lambda: register(server, "bob"),
            lambda: requests.post(  # the simple API answers alike
                server.url("/api/messages/send"),
                json={"chatId": room, "content": "simple"},
                headers=auth(alice.token),
                timeout=10,
            ),
        ):
            r = attempt()
            assert is_disk_full(r), (r.status_code, r.text)

        # Reads keep working.
        assert alice.sync().status_code == 200
        assert alice.messages(room)[::-1] == acknowledged
        r = alice.download(mxc)
        assert r.status_code == 200 and r.content == picture
        # A thumbnail never made before is made and served, just not kept.
        r = alice.thumbnail(photo)
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg", r.text
        assert Image.open(io.BytesIO(r.content)).size == (96, 96)

        # Space again: everything works without a restart.
        big.unlink()
        r = alice.send(room, "after")
        assert r.status_code == 200, r.text
        acknowledged.append("after")
        r = alice.upload(b"small again")
        assert r.status_code == 200, r.text
        assert alice.download(r.json()["content_uri"]).content == b"small again"
        assert alice.account_data("fine").status_code == 200
        r = register(server, "carol")
        assert r.status_code == 200, r.text
        assert alice.messages(room)[::-1] == acknowledged

        log = server.wait_for_log("disk has space again")
        assert log.count("Traceback") == 0, log
        assert log.count("disk full") == 1, log
    finally:
        server.stop()
    db = sqlite3.connect(small_disk / "data" / "homeserver.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()

    # What was acknowledged is on the disk, not only in a cache: a restart still has it.
    server = start_server_with_config(tmp_path, server.config)
    try:
        alice.server = server
        assert alice.messages(room)[::-1] == acknowledged
        assert alice.download(mxc).content == picture
    finally:
        server.stop()


def run_until_exit(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config_path = tmp_path / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(VENV_BIN / "homeserver"), "run", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_start_up_on_a_full_disk_stops_with_one_clear_line(small_disk: Path, tmp_path: Path) -> None:
    config = config_on(small_disk, tmp_path)
    big = fill(small_disk)
    done = run_until_exit(config, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "disk full" in output and str(small_disk / "data") in output, output
    assert "Traceback" not in output, output
    # Nothing half-made is left to be trusted on the next start (an empty jwt.secret would
    # sign tokens with an empty key).
    data = small_disk / "data"
    for name in ("signing.key", "jwt.secret"):
        assert not (data / name).exists() or (data / name).stat().st_size > 0, name

    big.unlink()
    server = start_server_with_config(tmp_path, config)
    try:
        r = register(server, "alice")
        assert r.status_code == 200, r.text
    finally:
        server.stop()

    # With its data in place: SQLite cannot even open the database (it must make its
    # shared-memory index), so the server stops with the same line rather than half-starting.
    big = fill(small_disk)
    done = run_until_exit(config, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "start-up failed: disk full at" in output and "Traceback" not in output, output

    big.unlink()
    server = start_server_with_config(tmp_path, config)
    try:
        server.login("alice")
    finally:
        server.stop()
