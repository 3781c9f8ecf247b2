"""The `homeserver` command line, run as a subprocess from the venv."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import ROOT, VENV_BIN, base_config, free_port

from homeserver.config import Config, load_config
from homeserver.storage.migrations import CORE_SCHEMA_DIR, schema_files
from plugins.example import ExamplePlugin

HOMESERVER = str(VENV_BIN / "homeserver")
# The environment can override config keys: keep the suite's own out of these runs.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOMESERVER_")}


def homeserver(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOMESERVER, *args], capture_output=True, text=True, cwd=cwd, env=CLEAN_ENV, timeout=timeout
    )


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


# generate-config -----------------------------------------------------------------


def test_generate_config_reflects_flags_and_creates_signing_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    result = homeserver(
        "generate-config",
        "--server-name",
        "chat.example.org",
        "--port",
        "8448",
        "--bind",
        "0.0.0.0",
        "--data-dir",
        str(data_dir),
        "--database-url",
        "postgresql://hs@db:5432/hs",
        "--open-registration",
        "--require-email-verification",
    )
    assert result.returncode == 0, result.stderr
    config_path = tmp_path / "generated.yaml"
    config_path.write_text(result.stdout)
    config = load_config(config_path, env={})
    assert config.server_name == "chat.example.org"
    assert (config.listen.bind, config.listen.port) == ("0.0.0.0", 8448)
    assert config.data_dir == str(data_dir)
    assert config.database.url == "postgresql://hs@db:5432/hs"
    assert config.registration.enabled is True
    assert config.registration.require_email_verification is True
    assert [p.module for p in config.plugins] == [
        "plugins.example.ExamplePlugin",
        "plugins.media.MediaPlugin",
        "plugins.push.gateway.PushGatewayPlugin",
        "plugins.push.PushPlugin",
        "plugins.calls.CallsPlugin",
        "plugins.backup.BackupPlugin",
    ]

    key_file = data_dir / "signing.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("ed25519 a_")
    key = key_file.read_bytes()

    # Running it again keeps the existing key.
    again = homeserver("generate-config", "--server-name", "chat.example.org", "--data-dir", str(data_dir))
    assert again.returncode == 0, again.stderr
    assert key_file.read_bytes() == key


def test_generate_config_defaults(tmp_path: Path) -> None:
    result = homeserver("generate-config", "--server-name", "example.org", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config_path = tmp_path / "homeserver.yaml"
    config_path.write_text(result.stdout)
    config = load_config(config_path, env={})
    assert config.server_name == "example.org"
    assert (config.listen.bind, config.listen.port) == ("127.0.0.1", 8008)
    assert config.data_dir == "./data"
    assert config.database.url == "sqlite:///data/homeserver.db"
    assert config.registration.enabled is False
    assert config.registration.require_email_verification is False
    assert stat.S_IMODE((tmp_path / "data" / "signing.key").stat().st_mode) == 0o600


def test_generate_config_requires_server_name(tmp_path: Path) -> None:
    result = homeserver("generate-config", cwd=tmp_path)
    assert result.returncode != 0
    assert "--server-name" in result.stderr
    assert not (tmp_path / "data").exists()


# run: refuses bad configs before starting -----------------------------------------


def test_run_with_unknown_key_fails_fast_with_one_line(tmp_path: Path) -> None:
    raw = base_config(tmp_path, free_port())
    raw["listen"]["prot"] = 8008
    config_path = write_yaml(tmp_path / "typo.yaml", raw)
    # It exits by itself, before anything starts: a server that took the config would still
    # be running at the timeout (generous: a loaded machine's start-up, not a speed bound).
    result = homeserver("run", "-c", str(config_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config_path) in lines[0]
    assert "'listen.prot'" in lines[0]
    assert not (tmp_path / "data").exists(), "nothing should be created for a bad config"


def test_run_with_invalid_plugin_config_names_the_plugin(tmp_path: Path) -> None:
    raw = base_config(tmp_path, free_port())
    raw["plugins"] = [{"module": "plugins.example.ExamplePlugin", "config": {"greeting": ""}}]
    config_path = write_yaml(tmp_path / "plugin.yaml", raw)
    result = homeserver("run", "-c", str(config_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "plugins.example.ExamplePlugin" in lines[0]
    assert "plugins[0].config" in lines[0]
    assert "greeting" in lines[0]
    assert str(config_path) in lines[0]


def test_run_with_unknown_plugin_module_fails(tmp_path: Path) -> None:
    raw = base_config(tmp_path, free_port())
    raw["plugins"] = [{"module": "plugins.nonexistent.Plugin"}]
    config_path = write_yaml(tmp_path / "plugin.yaml", raw)
    result = homeserver("run", "-c", str(config_path))
    assert result.returncode != 0
    assert "plugins.nonexistent.Plugin" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# migrate ----------------------------------------------------------------------------


def test_migrate_prints_success_and_is_idempotent(tmp_path: Path, database_url: str) -> None:
    raw = base_config(tmp_path, free_port(), database_url)
    config_path = write_yaml(tmp_path / "hs.yaml", raw)
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgres"
    # The core's files and the example plugin's (base_config lists it).
    n_files = len(schema_files(CORE_SCHEMA_DIR, dialect)) + len(
        schema_files(ExamplePlugin.SCHEMA_DIR, dialect)
    )

    first = homeserver("migrate", "-c", str(config_path))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"schema up to date ({n_files} file(s) applied)" in first.stdout

    second = homeserver("migrate", "-c", str(config_path))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "schema up to date (0 file(s) applied)" in second.stdout


def _tables(database_url: str) -> set[str]:
    if database_url.startswith("sqlite"):
        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    import psycopg2

    conn = psycopg2.connect(database_url)  # the URL's search_path is this test's schema
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def test_migrate_applies_plugin_schemas(tmp_path: Path, database_url: str) -> None:
    raw = base_config(tmp_path, free_port(), database_url)
    raw["plugins"].append({"module": "plugins.media.MediaPlugin", "config": {}})
    config_path = write_yaml(tmp_path / "hs.yaml", raw)

    result = homeserver("migrate", "-c", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    tables = _tables(database_url)
    assert {"users", "events"} <= tables  # the core's
    assert {"media_files", "media_refs", "media_thumbnails"} <= tables  # the media plugin's
    assert "example_greetings" in tables  # the example plugin's

    # A server started on the migrated database finds nothing left to apply (the same
    # records: it would fail on "table exists" otherwise).
    log_path = tmp_path / "server.log"
    process = start_run(config_path, load_config(str(config_path)), log_path)
    try:
        log = log_path.read_text()
        assert "plugin media started" in log and "applying schema" not in log, log
    finally:
        process.terminate()
        process.wait(10)


def test_migrate_with_bad_config_fails(tmp_path: Path) -> None:
    config_path = write_yaml(tmp_path / "hs.yaml", {"listen": {"port": 1}})
    result = homeserver("migrate", "-c", str(config_path))
    assert result.returncode != 0
    assert "'server_name'" in result.stderr and str(config_path) in result.stderr


# admin create-user -------------------------------------------------------------------


def start_run(config_path: Path, config: Config, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - the process owns it
    process = subprocess.Popen(
        [HOMESERVER, "run", "-c", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=CLEAN_ENV,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            requests.get(f"{config.base_url}/_matrix/client/versions", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"server did not start:\n{log_path.read_text()}")


def test_admin_create_user_then_login_by_email(tmp_path: Path) -> None:
    port = free_port()
    raw = base_config(tmp_path, port)
    raw["registration"]["enabled"] = False  # admin accounts need no open registration
    config_path = write_yaml(tmp_path / "hs.yaml", raw)
    config = load_config(config_path, env={})

    created = homeserver(
        "admin",
        "create-user",
        "-c",
        str(config_path),
        "--email",
        "Alice.Admin@Example.org",
        "--password",
        "correct horse battery",
        "--admin",
    )
    assert created.returncode == 0, created.stdout + created.stderr
    user_id = created.stdout.strip().splitlines()[-1]
    assert user_id == f"@alice.admin:localhost:{port}"

    plain = homeserver(
        "admin",
        "create-user",
        "-c",
        str(config_path),
        "--email",
        "bob@example.org",
        "--password",
        "another good password",
        "--username",
        "Bobby",
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert plain.stdout.strip().splitlines()[-1] == f"@bobby:localhost:{port}"

    # The same email again: a clear error and a non-zero exit, no second account.
    duplicate = homeserver(
        "admin",
        "create-user",
        "-c",
        str(config_path),
        "--email",
        "alice.admin@example.org",
        "--password",
        "correct horse battery",
    )
    assert duplicate.returncode != 0
    assert "M_THREEPID_IN_USE" in duplicate.stderr
    assert "already in use" in duplicate.stderr

    taken = homeserver(
        "admin",
        "create-user",
        "-c",
        str(config_path),
        "--email",
        "other@example.org",
        "--password",
        "correct horse battery",
        "--username",
        "bobby",
    )
    assert taken.returncode != 0
    assert "M_USER_IN_USE" in taken.stderr

    weak = homeserver(
        "admin", "create-user", "-c", str(config_path), "--email", "w@example.org", "--password", "short"
    )
    assert weak.returncode != 0
    assert "M_WEAK_PASSWORD" in weak.stderr

    db = sqlite3.connect(config.database.url.removeprefix("sqlite:///"))
    try:
        users = dict(db.execute("SELECT user_id, is_admin FROM users").fetchall())
        emails = dict(db.execute("SELECT address, validated_ts IS NOT NULL FROM user_threepids").fetchall())
    finally:
        db.close()
    assert users == {f"@alice.admin:localhost:{port}": 1, f"@bobby:localhost:{port}": 0}
    assert emails == {"alice.admin@example.org": 1, "bob@example.org": 1}

    # A server on the same config and data dir lets the user log in by email.
    process = start_run(config_path, config, tmp_path / "server.log")
    try:
        r = requests.post(
            f"{config.base_url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {
                    "type": "m.id.thirdparty",
                    "medium": "email",
                    "address": "alice.admin@example.org",
                },
                "password": "correct horse battery",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == user_id
        whoami = requests.get(
            f"{config.base_url}/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {r.json()['access_token']}"},
            timeout=10,
        )
        assert whoami.status_code == 200 and whoami.json()["user_id"] == user_id

        wrong = requests.post(
            f"{config.base_url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bobby"},
                "password": "wrong password",
            },
            timeout=10,
        )
        assert wrong.status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("email", ["not-an-email", "a@b"])
def test_admin_create_user_with_bad_email_fails(tmp_path: Path, email: str) -> None:
    config_path = write_yaml(tmp_path / "hs.yaml", base_config(tmp_path, free_port()))
    result = homeserver(
        "admin", "create-user", "-c", str(config_path), "--email", email, "--password", "x" * 12
    )
    assert result.returncode != 0
    assert "M_INVALID_PARAM" in result.stderr
