"""`homeserver backup` and `homeserver restore` against real server processes.

A load generator (accounts, messages, read receipts, media uploads) keeps a real server
busy while `homeserver backup` runs in a process of its own; the set is restored into a
new data dir and a new database (SQLite, and a new PostgreSQL database), a server is
started on it, and everything acknowledged before the backup started is there, with the
same signing key: an event the restored server signs verifies with the original key.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import (
    PG_ADMIN_URL,
    ROOT,
    VENV_BIN,
    ServerProcess,
    _pg_connect,
    free_port,
    start_server_process,
    start_server_with_config,
)
from signedjson.key import decode_verify_key_bytes, read_signing_keys

from homeserver.events.signing import verify_event_signature

PASSWORD = "backup-" + secrets.token_urlsafe(8)
CS = "/_matrix/client/v3"
DOWNLOAD = "/_matrix/client/v1/media/download"
PDU_SQL = "SELECT e.json, r.room_version FROM events e JOIN rooms r USING (room_id) WHERE e.event_id = ?"
MEDIA_PLUGIN = {"module": "plugins.media.MediaPlugin", "config": {"max_upload_size": "2M"}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def homeserver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "homeserver"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def register(server: ServerProcess, name: str) -> str:
    return str(server.register(name, PASSWORD)["access_token"])


def ok(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# The load generator ---------------------------------------------------------------------


@dataclass
class Acked:
    """What the server acknowledged, in order: each item with the time of its 200."""

    accounts: list[tuple[float, str]] = field(default_factory=list)
    messages: list[tuple[float, str, str]] = field(default_factory=list)  # (t, event id, body)
    receipts: list[tuple[float, str]] = field(default_factory=list)  # bob's m.read, event id
    media: list[tuple[float, str, bytes]] = field(default_factory=list)  # (t, mxc, bytes)

    def before(self, t: float) -> Acked:
        return Acked(*([x for x in items if x[0] < t] for items in self.lists()))

    def lists(self) -> tuple[list[Any], ...]:
        return (self.accounts, self.messages, self.receipts, self.media)


class Load:
    """Alice sends, Bob reads, media is uploaded and accounts are made, until stopped."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.alice_name = f"alice{secrets.token_hex(3)}"
        self.alice = register(server, self.alice_name)
        self.bob = register(server, f"bob{secrets.token_hex(3)}")
        self.room = ok(
            requests.post(
                server.url(f"{CS}/createRoom"), json={"preset": "public_chat"}, headers=auth(self.alice)
            )
        )["room_id"]
        ok(requests.post(server.url(f"{CS}/join/{quote(self.room)}"), json={}, headers=auth(self.bob)))
        self.acked = Acked()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._messages), threading.Thread(target=self._others)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors

    def wait_for(self, messages: int, media: int, accounts: int) -> None:
        deadline = time.monotonic() + 60
        a = self.acked
        while len(a.messages) < messages or len(a.media) < media or len(a.accounts) < accounts:
            assert time.monotonic() < deadline and not self.errors, self.errors
            time.sleep(0.05)

    def _messages(self) -> None:
        session = requests.Session()
        room = quote(self.room)
        n = 0
        while not self.stop.is_set():
            n += 1
            body = f"message {n} {secrets.token_hex(4)}"
            r = session.put(
                self.server.url(f"{CS}/rooms/{room}/send/m.room.message/t{n}"),
                json={"msgtype": "m.text", "body": body},
                headers=auth(self.alice),
                timeout=30,
            )
            if r.status_code != 200:
                self.errors.append(f"send: {r.status_code} {r.text}")
                return
            event_id = r.json()["event_id"]
            self.acked.messages.append((time.monotonic(), event_id, body))
            r = session.post(
                self.server.url(f"{CS}/rooms/{room}/receipt/m.read/{quote(event_id)}"),
                json={},
                headers=auth(self.bob),
                timeout=30,
            )
            if r.status_code != 200:
                self.errors.append(f"receipt: {r.status_code} {r.text}")
                return
            self.acked.receipts.append((time.monotonic(), event_id))

    def _others(self) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            data = os.urandom(2000 + 500 * (n % 20))
            r = session.post(
                self.server.url("/_matrix/media/v3/upload"),
                data=data,
                headers={**auth(self.alice), "Content-Type": "application/octet-stream"},
                timeout=30,
            )
            if r.status_code != 200:
                self.errors.append(f"upload: {r.status_code} {r.text}")
                return
            self.acked.media.append((time.monotonic(), r.json()["content_uri"], data))
            if n % 3 == 0:
                name = f"user{n}x{secrets.token_hex(3)}"
                r = session.post(
                    self.server.url(f"{CS}/register"),
                    json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
                    timeout=30,
                )
                if r.status_code != 200:
                    self.errors.append(f"register: {r.status_code} {r.text}")
                    return
                self.acked.accounts.append((time.monotonic(), name))


# Checks on the restored server ----------------------------------------------------------


def login(server: ServerProcess, name: str) -> requests.Response:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": name},
        "password": PASSWORD,
    }
    return requests.post(server.url(f"{CS}/login"), json=body, timeout=10)


def media_path(mxc: str) -> str:
    return mxc.removeprefix("mxc://")


def check_restored(restored: ServerProcess, load: Load, before: Acked, everything: Acked) -> None:
    """Everything acknowledged before the backup started is on `restored`; whatever came
    during it is either all there or not there, never half (a media row without its file)."""
    for _, name in before.accounts:
        assert login(restored, name).status_code == 200, name
    # The token alice got from the original server still works: same jwt.secret, same devices.
    ok(requests.get(restored.url(f"{CS}/account/whoami"), headers=auth(load.alice), timeout=10))
    token = ok(login(restored, load.alice_name))["access_token"]
    room = quote(load.room)
    for _, event_id, body in before.messages:
        got = ok(
            requests.get(
                restored.url(f"{CS}/rooms/{room}/event/{quote(event_id)}"), headers=auth(token), timeout=10
            )
        )
        assert got["content"]["body"] == body
    # Bob's read receipt: at or past the last one acknowledged before the backup.
    sync = ok(requests.get(restored.url(f"{CS}/sync"), headers=auth(token), timeout=30))
    receipts = [
        e for e in sync["rooms"]["join"][load.room]["ephemeral"]["events"] if e["type"] == "m.receipt"
    ]
    read = {
        event_id
        for e in receipts
        for event_id, by_type in e["content"].items()
        if any(user.startswith("@bob") for user in by_type.get("m.read", {}))
    }
    order = [event_id for _, event_id, _ in everything.messages]
    assert len(read) == 1
    assert order.index(read.pop()) >= order.index(before.receipts[-1][1])
    before_mxcs = {mxc for _, mxc, _ in before.media}
    restored_media = 0
    for _, mxc, data in everything.media:
        r = requests.get(restored.url(f"{DOWNLOAD}/{media_path(mxc)}"), headers=auth(token), timeout=30)
        if mxc in before_mxcs or r.status_code != 404:
            assert r.status_code == 200, (mxc, r.status_code, r.text)
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest(), mxc
            restored_media += 1
    assert restored_media >= len(before_mxcs)


def check_every_row_has_its_file(rows: list[tuple[Any, ...]], store: Path) -> None:
    """Every media row of the restored database has its file in the restored store."""
    assert rows
    missing = [key for (key,) in rows if not (store / key).is_file()]
    assert not missing, missing


READY_MEDIA_SQL = "SELECT storage_key FROM media_files WHERE state = 'ready'"


def verify_key_of(key_file: Path) -> Any:
    with key_file.open() as f:
        (key,) = read_signing_keys(line for line in f if line.strip())
    return key


def check_signed_by_original_key(
    restored: ServerProcess, token: str, room: str, key: Any, pdu_json: Any
) -> None:
    """An event the restored server creates now carries a signature by the original key."""
    r = requests.put(
        restored.url(f"{CS}/rooms/{quote(room)}/send/m.room.message/after-restore"),
        json={"msgtype": "m.text", "body": "signed after the restore"},
        headers=auth(token),
        timeout=10,
    )
    event_id = ok(r)["event_id"]
    pdu, room_version = pdu_json(event_id)
    verify_key = decode_verify_key_bytes(f"{key.alg}:{key.version}", key.verify_key.encode())
    # Raises if the signature is not the original key's.
    verify_event_signature(json.loads(pdu), restored.server_name, verify_key, room_version)


# The tests ------------------------------------------------------------------------------


def backup_under_load(server: ServerProcess, to: Path) -> tuple[Load, Acked, Acked, str]:
    """Start the load, take a backup in a process of its own while it runs, stop the load.
    Returns the load, what was acknowledged before the backup started, everything, and the
    backup command's output."""
    with Load(server) as load:
        load.wait_for(messages=30, media=8, accounts=3)
        started = time.monotonic()
        result = homeserver("backup", "-c", str(server.config_path), "--to", str(to))
        assert result.returncode == 0, result.stderr
        during = [len(x) for x in load.acked.before(time.monotonic()).lists()]
        # The load really ran while the backup did: more was acknowledged meanwhile.
        assert during[1] > len(load.acked.before(started).messages)
        load.wait_for(messages=during[1] + 5, media=during[3] + 1, accounts=0)
    return load, load.acked.before(started), load.acked, result.stdout


def restored_config(original: ServerProcess, tmp_path: Path, database_url: str) -> dict[str, Any]:
    port = free_port()
    config = json.loads(json.dumps(original.config))
    config.update(
        {
            "data_dir": str(tmp_path / "restored-data"),
            "public_baseurl": f"http://127.0.0.1:{port}/",
            "listen": {"bind": "127.0.0.1", "port": port},
            "database": {"url": database_url},
        }
    )
    return config


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "restore.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sqlite_backup_under_load_restores_into_a_new_server(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "orig", {"plugins": [MEDIA_PLUGIN]})
    try:
        load, before, everything, output = backup_under_load(server, tmp_path / "backups")
        original_key = (server.data_dir / "signing.key").read_bytes()
    finally:
        server.stop()
    (name,) = [p.name for p in (tmp_path / "backups").iterdir()]
    assert f"backup {name} written" in output
    manifest = json.loads((tmp_path / "backups" / name / "manifest.json").read_text())
    assert manifest["database"]["engine"] == "sqlite" and manifest["server_name"] == server.server_name
    assert manifest["database"]["tables"]["users"] >= 2 + len(before.accounts)
    top = sorted(p.name for p in (tmp_path / "backups" / name).iterdir())
    assert top == ["database.sqlite", "jwt.secret", "manifest.json", "plugins", "signing.key"]

    config = restored_config(server, tmp_path, "")
    config_path = write_config(tmp_path, config)
    result = homeserver("restore", "-c", str(config_path), "--from", str(tmp_path / "backups"))
    assert result.returncode == 0, result.stderr
    assert f"restored {name} of {server.server_name}" in result.stdout
    data = Path(config["data_dir"])
    assert (data / "signing.key").read_bytes() == original_key
    assert (data / "signing.key").stat().st_mode & 0o777 == 0o600

    restored = start_server_with_config(tmp_path / "restored", config)
    try:
        check_restored(restored, load, before, everything)
        token = ok(login(restored, load.alice_name))["access_token"]

        def pdu_json(event_id: str) -> tuple[str, str]:
            conn = sqlite3.connect(data / "homeserver.db")
            try:
                return conn.execute(PDU_SQL, (event_id,)).fetchone()  # type: ignore[no-any-return]
            finally:
                conn.close()

        conn = sqlite3.connect(data / "homeserver.db")
        rows = conn.execute(READY_MEDIA_SQL).fetchall()
        conn.close()
        check_every_row_has_its_file(rows, data / "plugins" / "media" / "store")

        check_signed_by_original_key(
            restored, token, load.room, verify_key_of(server.data_dir / "signing.key"), pdu_json
        )
    finally:
        restored.stop()


@pytest.fixture
def pg_databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases: the original server's and the restore's."""
    try:
        admin = _pg_connect(PG_ADMIN_URL)
    except Exception as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {e}")
    names = [f"hs_backup_{secrets.token_hex(4)}" for _ in range(2)]
    base = PG_ADMIN_URL.rpartition("/")[0]
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_postgres_backup_under_load_restores_into_a_new_database(
    tmp_path: Path, pg_databases: tuple[str, str]
) -> None:
    original_url, restore_url = pg_databases
    server = start_server_process(
        tmp_path / "orig", {"plugins": [MEDIA_PLUGIN], "database": {"url": original_url}}
    )
    try:
        load, before, everything, _ = backup_under_load(server, tmp_path / "backups")
    finally:
        server.stop()
    (name,) = [p.name for p in (tmp_path / "backups").iterdir()]
    manifest = json.loads((tmp_path / "backups" / name / "manifest.json").read_text())
    assert manifest["database"]["engine"] == "postgres" and manifest["database"]["schema"] == "public"
    assert (tmp_path / "backups" / name / "database.pgdump").read_bytes()[:5] == b"PGDMP"

    config = restored_config(server, tmp_path, restore_url)
    config_path = write_config(tmp_path, config)
    result = homeserver("restore", "-c", str(config_path), "--from", str(tmp_path / "backups" / name))
    assert result.returncode == 0, result.stderr
    result = homeserver("restore", "-c", str(config_path), "--from", str(tmp_path / "backups" / name))
    assert result.returncode == 1 and "the database has tables" in result.stderr
    # --force drops the schema and restores it whole.
    result = homeserver("restore", "-c", str(config_path), "--from", str(tmp_path / "backups"), "--force")
    assert result.returncode == 0, result.stderr

    restored = start_server_with_config(tmp_path / "restored", config)
    try:
        check_restored(restored, load, before, everything)
        token = ok(login(restored, load.alice_name))["access_token"]

        def pdu_json(event_id: str) -> tuple[str, str]:
            conn = _pg_connect(restore_url)
            try:
                with conn.cursor() as cur:
                    cur.execute(PDU_SQL.replace("?", "%s"), (event_id,))
                    return cur.fetchone()  # type: ignore[no-any-return]
            finally:
                conn.close()

        conn = _pg_connect(restore_url)
        with conn.cursor() as cur:
            cur.execute(READY_MEDIA_SQL)
            rows = cur.fetchall()
        conn.close()
        check_every_row_has_its_file(rows, Path(config["data_dir"]) / "plugins" / "media" / "store")

        check_signed_by_original_key(
            restored, token, load.room, verify_key_of(server.data_dir / "signing.key"), pdu_json
        )
    finally:
        restored.stop()


def test_restore_refuses_damage_a_target_with_data_and_another_server_name(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "orig", {"plugins": [MEDIA_PLUGIN]})
    try:
        token = register(server, "carol")
        data = os.urandom(5000)
        r = requests.post(
            server.url("/_matrix/media/v3/upload"),
            data=data,
            headers={**auth(token), "Content-Type": "application/octet-stream"},
            timeout=10,
        )
        mxc = ok(r)["content_uri"]
        backups = tmp_path / "backups"
        for _ in range(3):
            result = homeserver("backup", "-c", str(server.config_path), "--to", str(backups), "--keep", "2")
            assert result.returncode == 0, result.stderr
    finally:
        server.stop()
    # --keep 2: the newest two sets stay.
    names = sorted(p.name for p in backups.iterdir())
    assert len(names) == 2 and "deleted" in result.stdout
    good = backups / names[-1]

    config = restored_config(server, tmp_path, "")
    config_path = write_config(tmp_path, config)
    data_dir = Path(config["data_dir"])

    # A file that does not match its checksum: refused, and nothing is written.
    damaged = tmp_path / "damaged" / good.name
    shutil.copytree(good, damaged)
    media_id = mxc.rsplit("/", 1)[1]
    (copy,) = [p for p in damaged.rglob(media_id)]
    copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    result = homeserver("restore", "-c", str(config_path), "--from", str(damaged))
    assert result.returncode == 1
    assert "is damaged" in result.stderr and "does not match its checksum" in result.stderr
    assert not data_dir.exists()
    (damaged / "manifest.json").write_text('{"format": 1, "files": ')
    result = homeserver("restore", "-c", str(config_path), "--from", str(damaged))
    assert result.returncode == 1 and "manifest.json is not valid JSON" in result.stderr
    result = homeserver("restore", "-c", str(config_path), "--from", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "no backup set at" in result.stderr

    # Another server name or engine: refused before anything is written.
    other = write_config(tmp_path / "damaged", {**config, "server_name": "elsewhere.test"})
    result = homeserver("restore", "-c", str(other), "--from", str(backups))
    assert result.returncode == 1 and "restore under the same name" in result.stderr
    pg = write_config(tmp_path / "damaged", {**config, "database": {"url": "postgresql://u@127.0.0.1:1/x"}})
    result = homeserver("restore", "-c", str(pg), "--from", str(backups))
    assert result.returncode == 1 and "restore into the same engine" in result.stderr
    assert not data_dir.exists()

    # The newest set restores; a second restore over it is refused unless forced.
    result = homeserver("restore", "-c", str(config_path), "--from", str(backups))
    assert result.returncode == 0, result.stderr
    assert f"restored {good.name}" in result.stdout
    result = homeserver("restore", "-c", str(config_path), "--from", str(backups))
    assert result.returncode == 1
    assert "the target is not empty" in result.stderr and "--force" in result.stderr
    assert "the database has tables" in result.stderr and "signing.key exists" in result.stderr
    result = homeserver("restore", "-c", str(config_path), "--from", str(backups), "--force")
    assert result.returncode == 0, result.stderr

    restored = start_server_with_config(tmp_path / "restored", config)
    try:
        token = ok(login(restored, "carol"))["access_token"]
        got = requests.get(restored.url(f"{DOWNLOAD}/{media_path(mxc)}"), headers=auth(token), timeout=10)
        assert got.status_code == 200 and got.content == data
    finally:
        restored.stop()
