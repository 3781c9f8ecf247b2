"""Backups to and from S3, against a real SeaweedFS (REAL-PARTS.md §5, started as in
test_media_s3.py): a server whose media is on S3 is backed up to another bucket, and the
set is restored into a new server whose media goes to a fresh prefix."""

from __future__ import annotations

import os
from pathlib import Path

import requests
from conftest import start_server_process, start_server_with_config
from test_backup import (
    DOWNLOAD,
    auth,
    homeserver,
    login,
    media_path,
    ok,
    register,
    restored_config,
    write_config,
)
from test_media_s3 import ACCESS_KEY, BUCKET, SECRET_KEY, Weed, weed  # noqa: F401 - the fixture

BACKUPS = "homeserver-backups"


def media_on_s3(s3: Weed, prefix: str) -> dict[str, object]:
    storage = {"provider": "s3", "s3": {"endpoint_url": s3.endpoint, "bucket": BUCKET, "prefix": prefix}}
    return {"module": "plugins.media.MediaPlugin", "config": {"storage": storage}}


def test_backup_to_s3_and_restore_from_it(tmp_path: Path, weed: Weed) -> None:  # noqa: F811
    client = weed.client()
    client.create_bucket(Bucket=BACKUPS)
    env = {
        "HOMESERVER_MEDIA_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "HOMESERVER_MEDIA_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "HOMESERVER_BACKUP_S3_ENDPOINT_URL": weed.endpoint,
        "HOMESERVER_BACKUP_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "HOMESERVER_BACKUP_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    server = start_server_process(tmp_path / "orig", {"plugins": [media_on_s3(weed, "backup-src")]}, env=env)
    try:
        token = register(server, "dave")
        uploads = []
        for n in range(3):
            data = os.urandom(3000 + n)
            r = requests.post(
                server.url("/_matrix/media/v3/upload"),
                data=data,
                headers={**auth(token), "Content-Type": "application/octet-stream"},
                timeout=10,
            )
            uploads.append((ok(r)["content_uri"], data))
        result = homeserver(
            "backup", "-c", str(server.config_path), "--to", f"s3://{BACKUPS}/nightly", env=env
        )
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BACKUPS)["Contents"]]
    (name,) = {k.split("/")[1] for k in keys}
    assert f"nightly/{name}/manifest.json" in keys and f"nightly/{name}/database.sqlite" in keys
    assert f"nightly/{name}/signing.key" in keys
    assert len([k for k in keys if "/plugins/media/store/originals/" in k]) == 3

    config = restored_config(server, tmp_path, "")
    config["plugins"] = [media_on_s3(weed, "restored")]
    config_path = write_config(tmp_path, config)
    # From the prefix: its newest set.
    result = homeserver("restore", "-c", str(config_path), "--from", f"s3://{BACKUPS}/nightly", env=env)
    assert result.returncode == 0, result.stderr
    assert f"restored {name}" in result.stdout
    assert (Path(config["data_dir"]) / "signing.key").read_bytes() == (
        server.data_dir / "signing.key"
    ).read_bytes()
    # The media prefix holds data now: a second restore is refused.
    result = homeserver(
        "restore", "-c", str(config_path), "--from", f"s3://{BACKUPS}/nightly/{name}", env=env
    )
    assert result.returncode == 1 and "plugins/media/store is not empty" in result.stderr

    restored = start_server_with_config(tmp_path / "restored", config, env=env)
    try:
        token = ok(login(restored, "dave"))["access_token"]
        for mxc, data in uploads:
            got = requests.get(restored.url(f"{DOWNLOAD}/{media_path(mxc)}"), headers=auth(token), timeout=10)
            assert got.status_code == 200 and got.content == data
    finally:
        restored.stop()
    restored_keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="restored/")["Contents"]]
    assert len([k for k in restored_keys if "/originals/" in k]) == 3
