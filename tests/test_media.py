"""The media plugin (plugins/media) against real server processes.

matrix-nio uploads and downloads an image, a video and a PDF (and an encrypted
attachment); thumbnails at the requested sizes; the safety rules (sniffed types,
attachments and the sandbox CSP, size limits that leave nothing behind, room
membership, quotas); asynchronous uploads; the simple API; deletion and retention;
URL previews that refuse private addresses. The pure parts (sniffing, the IP
blocklist, config parsing) are tested in-process at the end.

The video is made with ffmpeg, installed from Debian if missing (root, as on CI).
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import requests
from conftest import VENV_BIN, ServerProcess, free_port, start_server_process
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
PASSWORD = "media-" + secrets.token_urlsafe(8)
MEDIA = "plugins.media.MediaPlugin"
CLIENT = "/_matrix/client/v3"
DOWNLOAD = "/_matrix/client/v1/media/download"
THUMBNAIL = "/_matrix/client/v1/media/thumbnail"
MAX_UPLOAD = 2 * 1024 * 1024

MEDIA_CONFIG: dict[str, Any] = {
    "max_upload_size": "2M",
    "user_quota": "6M",
    "url_preview": {
        "enabled": True,
        # The test's page server lives on 127.0.0.2: allowed; everything else stays blocked.
        "ip_range_whitelist": ["127.0.0.2/32"],
        "timeout": "3s",
        "max_size": "64K",
    },
}


def media_plugin(**config: Any) -> dict[str, Any]:
    return {"plugins": [{"module": MEDIA, "config": {**MEDIA_CONFIG, **config}}]}


# Helpers (also used by test_media_s3.py) ------------------------------------------


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """asyncio.run(coro) on a fresh thread and loop (nio), whatever reactor pytest uses."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_user(server: ServerProcess, name: str) -> tuple[str, str]:
    """Register a fresh user: (user id, access token)."""
    result = server.register(f"{name}{secrets.token_hex(3)}", PASSWORD)
    return result["user_id"], result["access_token"]


def upload(
    server: ServerProcess,
    token: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    **params: str,
) -> requests.Response:
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    return requests.post(
        server.url(f"/_matrix/media/v3/upload{'?' + query if query else ''}"),
        data=data,
        headers={**auth(token), "Content-Type": content_type},
        timeout=30,
    )


def upload_ok(server: ServerProcess, token: str, data: bytes, content_type: str, **params: str) -> str:
    r = upload(server, token, data, content_type, **params)
    assert r.status_code == 200, r.text
    mxc: str = r.json()["content_uri"]
    assert mxc.startswith(f"mxc://{server.server_name}/")
    return mxc


def media_path(mxc: str) -> str:
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    return f"{server_name}/{media_id}"


def download(
    server: ServerProcess, token: str | None, mxc: str, file_name: str = "", **params: Any
) -> requests.Response:
    path = f"{DOWNLOAD}/{media_path(mxc)}" + (f"/{quote(file_name)}" if file_name else "")
    return requests.get(server.url(path), headers=auth(token) if token else {}, params=params, timeout=30)


def thumbnail(
    server: ServerProcess, token: str, mxc: str, width: int, height: int, method: str
) -> requests.Response:
    return requests.get(
        server.url(f"{THUMBNAIL}/{media_path(mxc)}"),
        headers=auth(token),
        params={"width": width, "height": height, "method": method},
        timeout=30,
    )


def create_room(server: ServerProcess, token: str, invite: list[str] = ()) -> str:  # type: ignore[assignment]
    r = requests.post(
        server.url(f"{CLIENT}/createRoom"), json={"invite": list(invite)}, headers=auth(token), timeout=10
    )
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


def join(server: ServerProcess, token: str, room_id: str) -> None:
    r = requests.post(server.url(f"{CLIENT}/join/{quote(room_id)}"), json={}, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text


def send(server: ServerProcess, token: str, room_id: str, content: dict[str, Any]) -> str:
    txn = secrets.token_hex(8)
    r = requests.put(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/{txn}"),
        json=content,
        headers=auth(token),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def share(server: ServerProcess, token: str, room_id: str, mxc: str, msgtype: str = "m.image") -> str:
    return send(server, token, room_id, {"msgtype": msgtype, "body": "a file", "url": mxc})


def metric_totals(server: ServerProcess) -> dict[str, float]:
    """The server's metrics (the media_server fixture serves them), each summed over its labels."""
    r = requests.get(f"http://127.0.0.1:{server.config['metrics']['port']}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def requests_handled(server: ServerProcess) -> tuple[int, int]:
    """How many requests the server has answered (or given up on) so far, and how many it
    is handling now."""
    totals = metric_totals(server)
    return (
        int(totals.get("homeserver_http_request_duration_seconds_count", 0)),
        int(totals.get("homeserver_http_requests_in_flight", 0)),
    )


def read_to_end(sock: socket.socket) -> bytes:
    """What the server still sends, until it closes the connection (a reset counts as closed)."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def store_files(server: ServerProcess) -> list[str]:
    root = server.data_dir / "plugins" / "media" / "store"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def jpeg(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", (width, height), color)
    # Some structure, so the thumbnails are not all one colour.
    im.paste((20, 20, 220), (width // 4, height // 4, width // 2, height // 2))
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 200, 10, 128)).save(buf, "PNG")
    return buf.getvalue()


def pdf() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (255, 255, 255)).save(buf, "PDF")
    return buf.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def ensure_ffmpeg() -> str:
    """ffmpeg's path, installing Debian's package if it is missing (CI runs as root)."""
    found = shutil.which("ffmpeg")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
        subprocess.run(
            [
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "ffmpeg",
            ],
            capture_output=True,
            timeout=600,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("ffmpeg")
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError("ffmpeg is missing and could not be installed")
        pytest.skip("ffmpeg is not installed")
    return found


@pytest.fixture(scope="session")
def video_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 2 s 640x480 H.264 MP4 with sound."""
    ffmpeg = ensure_ffmpeg()
    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=640x480:rate=15",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            "-movflags",
            "+faststart",
            str(out),
        ],
        check=True,
        timeout=60,
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
def media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Metrics served: some tests read what the server did from its request counts.
    metrics = {"metrics": {"enabled": True, "port": free_port()}}
    server = start_server_process(tmp_path_factory.mktemp("media"), {**media_plugin(), **metrics})
    yield server
    server.stop()


# matrix-nio: image, video, PDF, encrypted attachment --------------------------------


async def nio_session(server: ServerProcess, video: bytes) -> dict[str, Any]:
    from nio import (
        AsyncClient,
        DownloadError,
        JoinResponse,
        RegisterResponse,
        ResizingMethod,
        RoomCreateResponse,
        RoomSendResponse,
        ThumbnailResponse,
        UploadResponse,
    )
    from nio.crypto.attachments import decrypt_attachment

    suffix = secrets.token_hex(3)
    alice, bob, carol = (AsyncClient(server.base_url) for _ in range(3))
    seen: dict[str, Any] = {}
    try:
        for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            reg = await client.register(f"nio{name}{suffix}", PASSWORD)
            assert isinstance(reg, RegisterResponse), reg
        room = await alice.room_create(invite=[bob.user_id])
        assert isinstance(room, RoomCreateResponse), room
        assert isinstance(await bob.join(room.room_id), JoinResponse)

        files = {
            "photo.jpg": (jpeg(640, 480), "image/jpeg", "m.image"),
            "clip.mp4": (video, "video/mp4", "m.video"),
            "report.pdf": (pdf(), "application/pdf", "m.file"),
        }
        uris = {}
        for name, (data, content_type, msgtype) in files.items():
            resp, keys = await alice.upload(io.BytesIO(data), content_type, name, filesize=len(data))
            assert isinstance(resp, UploadResponse), resp
            assert keys is None
            uris[name] = resp.content_uri
            sent = await alice.room_send(
                room.room_id,
                "m.room.message",
                {
                    "msgtype": msgtype,
                    "body": name,
                    "url": resp.content_uri,
                    "info": {"mimetype": content_type},
                },
            )
            assert isinstance(sent, RoomSendResponse), sent

        for name, (data, content_type, _) in files.items():
            got = await bob.download(uris[name])
            assert not isinstance(got, DownloadError), (name, got)
            assert got.body == data, name
            assert got.content_type == content_type, name
            assert got.filename == name, name
            # Not a member of the room: refused.
            assert isinstance(await carol.download(uris[name]), DownloadError), name

        server_name, photo_id = media_path(uris["photo.jpg"]).split("/")
        for width, height, method, expected in (
            (96, 96, ResizingMethod.crop, (96, 96)),
            (32, 32, ResizingMethod.crop, (32, 32)),
            (320, 240, ResizingMethod.scale, (320, 240)),
            (640, 480, ResizingMethod.scale, (640, 480)),
        ):
            thumb = await bob.thumbnail(server_name, photo_id, width, height, method)
            assert isinstance(thumb, ThumbnailResponse), thumb
            assert thumb.content_type == "image/jpeg"
            seen[f"photo {width}x{height} {method.value}"] = image_size(thumb.body)
            assert image_size(thumb.body) == expected, (width, height, method)

        _, clip_id = media_path(uris["clip.mp4"]).split("/")
        poster = await bob.thumbnail(server_name, clip_id, 320, 240, ResizingMethod.scale)
        assert isinstance(poster, ThumbnailResponse), poster
        assert image_size(poster.body) == (320, 240)

        # An encrypted attachment: opaque bytes in, the same bytes out, decrypted by the client.
        secret = png(64, 48)
        resp, keys = await alice.upload(
            io.BytesIO(secret), "image/png", "secret.png", encrypt=True, filesize=len(secret)
        )
        assert isinstance(resp, UploadResponse), resp
        assert keys is not None
        got = await bob.download(resp.content_uri)
        assert not isinstance(got, DownloadError), got
        assert got.body != secret
        assert got.content_type == "application/octet-stream"
        plain = decrypt_attachment(got.body, keys["key"]["k"], keys["hashes"]["sha256"], keys["iv"])
        assert plain == secret
        # Carol shares no room with alice: the opaque file stays closed to her.
        assert isinstance(await carol.download(resp.content_uri), DownloadError)
        return seen
    finally:
        for client in (alice, bob, carol):
            await client.close()


def test_nio_uploads_and_downloads_image_video_and_pdf(
    media_server: ServerProcess, video_clip: bytes
) -> None:
    run(nio_session(media_server, video_clip))


def test_upload_returns_dimensions_blurhash_and_video_metadata(
    media_server: ServerProcess, video_clip: bytes
) -> None:
    _, token = new_user(media_server, "meta")
    r = upload(media_server, token, jpeg(800, 600), "image/jpeg")
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert (info["w"], info["h"], info["mimetype"], info["size"]) == (
        800,
        600,
        "image/jpeg",
        len(jpeg(800, 600)),
    )
    assert len(info["xyz.amorgan.blurhash"]) == 28

    r = upload(media_server, token, video_clip, "video/mp4")
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert (info["w"], info["h"], info["mimetype"]) == (640, 480, "video/mp4")
    assert 1900 <= info["duration"] <= 2100
    assert "xyz.amorgan.blurhash" in info


# Thumbnails -------------------------------------------------------------------------


def test_thumbnails_at_the_requested_sizes(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "thumbs")
    wide = upload_ok(media_server, token, jpeg(1000, 500), "image/jpeg")
    cases = [
        (32, 32, "crop", (32, 32)),
        (96, 96, "crop", (96, 96)),
        (320, 240, "scale", (320, 160)),  # fits inside, aspect kept
        (800, 600, "scale", (800, 400)),
        (50, 50, "crop", (96, 96)),  # not configured: the next larger crop size
    ]
    for width, height, method, expected in cases:
        r = thumbnail(media_server, token, wide, width, height, method)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "image/jpeg"
        assert r.headers["Content-Disposition"].startswith("inline")
        assert image_size(r.content) == expected, (width, height, method)
    # Served again from the stored thumbnail.
    again = thumbnail(media_server, token, wide, 96, 96, "crop")
    assert again.status_code == 200 and image_size(again.content) == (96, 96)

    # A transparent PNG keeps PNG; a small image is never upscaled.
    small = upload_ok(media_server, token, png(50, 40), "image/png")
    r = thumbnail(media_server, token, small, 320, 240, "scale")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert image_size(r.content) == (50, 40)

    doc = upload_ok(media_server, token, pdf(), "application/pdf")
    r = thumbnail(media_server, token, doc, 96, 96, "crop")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_UNKNOWN")
    r = thumbnail(media_server, token, wide, 96, 96, "squash")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = requests.get(media_server.url(f"{THUMBNAIL}/{media_path(wide)}"), headers=auth(token), timeout=10)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")


# Safety ------------------------------------------------------------------------------


def test_upload_over_the_limit_is_refused_and_leaves_nothing(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "big")
    before = store_files(media_server)
    too_big = os.urandom(MAX_UPLOAD + 1)

    # With a Content-Length: refused before the body is stored anywhere.
    r = upload(media_server, token, too_big, "application/octet-stream")
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")

    # Chunked (no length up front): cut off while streaming.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(too_big), 64 * 1024):
            yield too_big[i : i + 64 * 1024]

    r = requests.post(
        media_server.url("/_matrix/media/v3/upload"),
        data=chunks(),
        headers={**auth(token), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")

    # The simple API: a multipart body within the envelope allowance, but a file part over the limit.
    r = requests.post(
        media_server.url("/api/media/upload"),
        files={"file": ("big.bin", too_big, "application/octet-stream")},
        headers=auth(token),
        timeout=30,
    )
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")

    # An upload cut short (the client goes away mid-body) is never stored either: once the
    # server has seen the client go (it closes its side then), it has handled no request.
    handled, _ = requests_handled(media_server)
    with socket.create_connection(("127.0.0.1", media_server.port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: image/jpeg\r\n"
                "Content-Length: 1000000\r\n\r\n"
            ).encode()
            + jpeg(100, 100)
        )
        sock.shutdown(socket.SHUT_WR)
        assert read_to_end(sock) == b""
    assert requests_handled(media_server) == (handled, 0)
    assert store_files(media_server) == before

    # A client that goes away in the middle of a download does no harm either: the server
    # sees it go, closes its side and is done with the request.
    blob = upload_ok(media_server, token, os.urandom(MAX_UPLOAD // 2), "application/octet-stream")
    handled, _ = requests_handled(media_server)
    with socket.create_connection(("127.0.0.1", media_server.port), timeout=10) as sock:
        sock.sendall(
            f"GET {DOWNLOAD}/{media_path(blob)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.shutdown(socket.SHUT_WR)
        read_to_end(sock)
    deadline = time.monotonic() + 10
    while requests_handled(media_server) != (handled + 1, 0):
        assert time.monotonic() < deadline, "the server never finished with the download"
        time.sleep(0.05)
    assert len(download(media_server, token, blob).content) == MAX_UPLOAD // 2
    assert "Unhandled" not in media_server.log_text() and "Traceback" not in media_server.log_text()

    # The limit is advertised.
    r = requests.get(media_server.url("/_matrix/client/v1/media/config"), headers=auth(token), timeout=10)
    assert r.json() == {"m.upload.size": MAX_UPLOAD}
    # Exactly at the limit is fine.
    assert upload(media_server, token, os.urandom(MAX_UPLOAD), "application/octet-stream").status_code == 200


def test_html_is_served_as_an_attachment_with_the_sandbox_csp(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "html")
    page = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
    # Claimed as plain text (or as an image): the bytes say HTML.
    for claimed in ("text/plain", "image/png"):
        mxc = upload_ok(media_server, token, page, claimed, filename="page.txt")
        r = download(media_server, token, mxc)
        assert r.status_code == 200 and r.content == page
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Content-Disposition"].startswith("attachment")
        assert r.headers["Content-Security-Policy"].startswith("sandbox")
        assert "script-src 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        # Even when the client asks for an innocent-looking file name.
        r = download(media_server, token, mxc, "cat.jpg")
        assert r.headers["Content-Disposition"] == 'attachment; filename="cat.jpg"'

    # JavaScript has no magic bytes: the claim is kept, and it is an attachment.
    mxc = upload_ok(media_server, token, b"fetch('/steal?c=' + document.cookie)", "application/javascript")
    r = download(media_server, token, mxc)
    assert r.headers["Content-Type"] == "application/javascript"
    assert r.headers["Content-Disposition"].startswith("attachment")


def test_svg_is_never_served_inline(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "svg")
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for claimed in ("image/svg+xml", "image/png", "text/plain", "application/octet-stream"):
        mxc = upload_ok(media_server, token, svg, claimed, filename="logo.svg")
        for file_name in ("", "logo.png"):
            r = download(media_server, token, mxc, file_name)
            assert r.status_code == 200
            # Claimed opaque, it is served as opaque bytes (an attachment either way).
            expected = (
                "application/octet-stream" if claimed == "application/octet-stream" else "image/svg+xml"
            )
            assert r.headers["Content-Type"] == expected, claimed
            assert r.headers["Content-Disposition"].startswith("attachment"), claimed
            assert r.headers["Content-Security-Policy"].startswith("sandbox")
        r = thumbnail(media_server, token, mxc, 96, 96, "crop")
        assert r.status_code == 400


def test_content_type_comes_from_the_bytes(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "sniff")
    cases = [
        (png(10, 10), "text/plain", "image/png", "inline"),
        (jpeg(10, 10), "application/pdf", "image/jpeg", "inline"),
        (pdf(), "image/jpeg", "application/pdf", "attachment"),
        (os.urandom(2048), "image/png", "application/octet-stream", "attachment"),  # e.g. encrypted
        (b"just some words\n", "text/plain", "text/plain; charset=utf-8", "inline"),
        (b'{"a": 1}', "application/json", "application/json; charset=utf-8", "inline"),
    ]
    for data, claimed, served, disposition in cases:
        mxc = upload_ok(media_server, token, data, claimed, filename="x")
        r = download(media_server, token, mxc)
        assert r.headers["Content-Type"] == served, (claimed, served)
        assert r.headers["Content-Disposition"].startswith(disposition), (claimed, served)
        assert r.content == data
    # HEAD: the headers and the length, no body.
    head = requests.head(media_server.url(f"{DOWNLOAD}/{media_path(mxc)}"), headers=auth(token), timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))
    # Non-ASCII file names survive (RFC 6266 filename*).
    mxc = upload_ok(media_server, token, png(4, 4), "image/png", filename="été ☀.png")
    r = download(media_server, token, mxc)
    assert r.headers["Content-Disposition"] == "inline; filename*=utf-8''%C3%A9t%C3%A9%20%E2%98%80.png"


def test_only_the_uploader_and_room_members_can_download(media_server: ServerProcess) -> None:
    alice, alice_token = new_user(media_server, "alice")
    bob, bob_token = new_user(media_server, "bob")
    carol, carol_token = new_user(media_server, "carol")
    mxc = upload_ok(media_server, alice_token, jpeg(64, 64), "image/jpeg")
    room = create_room(media_server, alice_token, [bob])
    join(media_server, bob_token, room)

    assert download(media_server, alice_token, mxc).status_code == 200
    # Not shared yet: only the uploader.
    r = download(media_server, bob_token, mxc)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    share(media_server, alice_token, room, mxc)
    assert download(media_server, bob_token, mxc).status_code == 200
    assert thumbnail(media_server, bob_token, mxc, 32, 32, "crop").status_code == 200
    # A non-member cannot, not even the thumbnail.
    r = download(media_server, carol_token, mxc)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert thumbnail(media_server, carol_token, mxc, 32, 32, "crop").status_code == 403
    # Nor by posting the URI in a room of her own: she cannot share what she cannot read.
    own = create_room(media_server, carol_token)
    share(media_server, carol_token, own, mxc)
    assert download(media_server, carol_token, mxc).status_code == 403
    # No token at all.
    r = download(media_server, None, mxc)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")

    # Bob forwards it to a room with carol: now she may.
    with_carol = create_room(media_server, bob_token, [carol])
    join(media_server, carol_token, with_carol)
    share(media_server, bob_token, with_carol, mxc)
    assert download(media_server, carol_token, mxc).status_code == 200

    # Leaving the rooms ends it.
    r = requests.post(
        media_server.url(f"{CLIENT}/rooms/{quote(with_carol)}/leave"),
        json={},
        headers=auth(carol_token),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert download(media_server, carol_token, mxc).status_code == 403

    # Unknown media; media of another server is asked of it (tests/test_federation_queries.py),
    # and one that cannot be reached is 502.
    assert download(media_server, bob_token, f"mxc://{media_server.server_name}/nope").status_code == 404
    assert download(media_server, bob_token, "mxc://elsewhere.example/abc").status_code == 502


def ranged(
    server: ServerProcess, token: str | None, mxc: str, range_header: str, file_name: str = "", **headers: str
) -> requests.Response:
    """A download with a `Range` field (and any other request headers)."""
    path = f"{DOWNLOAD}/{media_path(mxc)}" + (f"/{quote(file_name)}" if file_name else "")
    sent = {**(auth(token) if token else {}), "Range": range_header, **headers}
    return requests.get(server.url(path), headers=sent, timeout=30)


def test_download_byte_ranges(media_server: ServerProcess, video_clip: bytes) -> None:
    """What a <video> element does to seek: ask for byte ranges and get 206s (RFC 9110 §14)."""
    alice, alice_token = new_user(media_server, "range")
    bob, bob_token = new_user(media_server, "range")
    _, carol_token = new_user(media_server, "range")
    clip = upload_ok(media_server, alice_token, video_clip, "video/mp4", filename="clip.mp4")
    room = create_room(media_server, alice_token, [bob])
    join(media_server, bob_token, room)
    share(media_server, alice_token, room, clip, "m.video")
    size = len(video_clip)
    assert size > 1000

    whole = download(media_server, bob_token, clip)
    assert whole.status_code == 200 and whole.content == video_clip
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Content-Length"] == str(size)
    assert "Content-Range" not in whole.headers

    for header, start, end in (
        ("bytes=0-0", 0, 0),
        ("bytes=0-1", 0, 1),  # Safari's probe
        ("bytes=0-", 0, size - 1),  # Chrome's probe
        (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
        (f"bytes={size - 1}-", size - 1, size - 1),
        ("bytes=100-599", 100, 599),
        (f"bytes={size // 2}-", size // 2, size - 1),
        (f"bytes=10-{size + 5000}", 10, size - 1),
        ("bytes=-1", size - 1, size - 1),
        ("bytes=-100", size - 100, size - 1),
        (f"bytes=-{size + 10}", 0, size - 1),
    ):
        r = ranged(media_server, bob_token, clip, header)
        assert r.status_code == 206, (header, r.status_code, r.text[:200])
        assert r.content == video_clip[start : end + 1], header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}", header
        assert r.headers["Content-Length"] == str(end - start + 1), header
        assert r.headers["Accept-Ranges"] == "bytes"
        # The same serving rules as the whole file.
        assert r.headers["Content-Type"] == "video/mp4"
        assert r.headers["Content-Disposition"] == 'inline; filename="clip.mp4"'
        assert r.headers["Content-Security-Policy"].startswith("sandbox")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = ranged(media_server, bob_token, clip, "bytes=4-7", "seek.mp4")
    assert (r.status_code, r.content) == (206, video_clip[4:8])
    assert r.headers["Content-Disposition"] == 'inline; filename="seek.mp4"'

    # Starting at or past the end: 416 with the size, so the player can ask again.
    for header in (f"bytes={size}-", f"bytes={size}-{size + 10}", "bytes=99999999-", "bytes=-0"):
        r = ranged(media_server, bob_token, clip, header)
        assert r.status_code == 416, header
        assert r.headers["Content-Range"] == f"bytes */{size}"
        assert r.json()["errcode"] == "M_INVALID_PARAM"

    # Malformed, another unit, several ranges or an If-Range: the whole file, 200.
    for header in ("bytes=abc", "bytes=50-10", "bytes=-", "items=0-5", "bytes 0-5", "bytes=0-1,10-20", ""):
        r = ranged(media_server, bob_token, clip, header)
        assert (r.status_code, r.content) == (200, video_clip), header
        assert "Content-Range" not in r.headers
    r = ranged(media_server, bob_token, clip, "bytes=0-1", **{"If-Range": '"an-old-etag"'})
    assert (r.status_code, r.content) == (200, video_clip)
    # HEAD: Range is for GET only.
    r = requests.head(
        media_server.url(f"{DOWNLOAD}/{media_path(clip)}"),
        headers={**auth(bob_token), "Range": "bytes=0-1"},
        timeout=10,
    )
    assert (r.status_code, r.headers["Content-Length"], r.content) == (200, str(size), b"")

    # Access comes first: a range of media one may not read is still 403, a missing one 404.
    r = ranged(media_server, carol_token, clip, "bytes=0-1")
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = ranged(media_server, bob_token, f"mxc://{media_server.server_name}/nope", "bytes=0-1")
    assert r.status_code == 404

    # A range across many of the 256 kB chunks the store is read in.
    blob = os.urandom(MAX_UPLOAD)
    big = upload_ok(media_server, alice_token, blob, "application/octet-stream")
    r = ranged(media_server, alice_token, big, "bytes=300000-1300000")
    assert (r.status_code, r.content) == (206, blob[300000:1300001])
    assert r.headers["Content-Disposition"] == "attachment"
    r = ranged(media_server, alice_token, big, "bytes=-70000")
    assert (r.status_code, r.content) == (206, blob[-70000:])

    # Thumbnails are not ranged.
    photo = upload_ok(media_server, alice_token, jpeg(320, 240), "image/jpeg")
    r = requests.get(
        media_server.url(f"{THUMBNAIL}/{media_path(photo)}"),
        headers={**auth(alice_token), "Range": "bytes=0-1"},
        params={"width": 96, "height": 96, "method": "crop"},
        timeout=30,
    )
    assert r.status_code == 200 and image_size(r.content) == (96, 96)
    assert "Content-Range" not in r.headers

    # A web client fetching with its token from another origin may send Range and read
    # Content-Range.
    r = requests.options(
        media_server.url(f"{DOWNLOAD}/{media_path(clip)}"),
        headers={
            "Origin": "https://app.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, range",
        },
        timeout=10,
    )
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "range"} <= allowed
    r = ranged(media_server, bob_token, clip, "bytes=0-1", Origin="https://app.example.org")
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"content-range", "accept-ranges", "content-disposition"} <= exposed


def test_legacy_unauthenticated_download_is_off_by_default(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "legacy")
    mxc = upload_ok(media_server, token, jpeg(16, 16), "image/jpeg")
    r = requests.get(media_server.url(f"/_matrix/media/v3/download/{media_path(mxc)}"), timeout=10)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")


def test_too_large_names_the_configured_limit(media_server: ServerProcess) -> None:
    """However an upload goes over the limit, the error names the configured limit (2M),
    never the body cap behind it (the simple API's is 1 MiB more, for the multipart envelope)."""
    _, token = new_user(media_server, "limit")
    told = "Upload exceeds the limit of 2097152 bytes (2 MiB)"

    def simple_upload(data: bytes) -> requests.Response:
        return requests.post(
            media_server.url("/api/media/upload"),
            files={"file": ("big.bin", data, "application/octet-stream")},
            headers=auth(token),
            timeout=30,
        )

    over_the_envelope = simple_upload(os.urandom(MAX_UPLOAD + 1024 * 1024))  # refused as it arrives
    over_the_file_limit = simple_upload(os.urandom(MAX_UPLOAD + 1))  # refused by the multipart parser
    matrix = upload(media_server, token, os.urandom(MAX_UPLOAD + 1))
    for r in (over_the_envelope, over_the_file_limit, matrix):
        assert (r.status_code, r.json()) == (413, {"errcode": "M_TOO_LARGE", "error": told})


def test_per_user_quota(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "quota")
    blob = os.urandom(1536 * 1024)
    for _ in range(4):  # 6 MiB
        assert upload(media_server, token, blob, "application/octet-stream").status_code == 200
    before = store_files(media_server)
    r = upload(media_server, token, blob, "application/octet-stream")
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    assert "quota" in r.json()["error"]
    assert store_files(media_server) == before
    r = requests.get(media_server.url("/api/media/usage"), headers=auth(token), timeout=10)
    assert r.json() == {"count": 4, "usedBytes": 4 * len(blob), "quotaBytes": 6 * 1024 * 1024}
    # Another user has their own quota.
    _, other = new_user(media_server, "quota")
    assert upload(media_server, other, blob, "application/octet-stream").status_code == 200


# Asynchronous uploads -----------------------------------------------------------------


def test_asynchronous_upload(media_server: ServerProcess) -> None:
    _, token = new_user(media_server, "async")
    _, other = new_user(media_server, "async")
    r = requests.post(media_server.url("/_matrix/media/v1/create"), headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    mxc = r.json()["content_uri"]
    assert r.json()["unused_expires_at"] > time.time() * 1000
    put_path = media_server.url(f"/_matrix/media/v3/upload/{media_path(mxc)}")

    # Not there yet.
    r = download(media_server, token, mxc, timeout_ms=0)
    assert (r.status_code, r.json()["errcode"]) == (504, "M_NOT_YET_UPLOADED")
    # Someone else may not fill it.
    r = requests.put(put_path, data=b"x", headers={**auth(other), "Content-Type": "text/plain"}, timeout=10)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    # A download waiting for the content gets it as soon as it arrives (long before the
    # minute it would wait).
    data = jpeg(120, 90)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(download, media_server, token, mxc, "", timeout_ms=60_000)
        deadline = time.monotonic() + 10
        while metric_totals(media_server).get("homeserver_plugin_media_downloads_waiting") != 1:
            assert time.monotonic() < deadline and not waiting.done(), "the download is not waiting"
            time.sleep(0.02)
        r = requests.put(
            put_path + "?filename=later.jpg",
            data=data,
            headers={**auth(token), "Content-Type": "image/jpeg"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        got = waiting.result(15)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-Disposition"] == 'inline; filename="later.jpg"'

    r = requests.put(put_path, data=data, headers={**auth(token), "Content-Type": "image/jpeg"}, timeout=10)
    assert (r.status_code, r.json()["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    # Too big for the limit: refused like any upload.
    r2 = requests.post(media_server.url("/_matrix/media/v1/create"), headers=auth(token), timeout=10)
    big_put = media_server.url(f"/_matrix/media/v3/upload/{media_path(r2.json()['content_uri'])}")
    r = requests.put(big_put, data=os.urandom(MAX_UPLOAD + 1), headers=auth(token), timeout=30)
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")


# The simple API ------------------------------------------------------------------------


def test_simple_api_upload_links_the_media_to_its_message(media_server: ServerProcess) -> None:
    alice, alice_token = new_user(media_server, "simple")
    bob, bob_token = new_user(media_server, "simple")
    data = jpeg(300, 200)
    r = requests.post(
        media_server.url("/api/media/upload"),
        files={"file": ("holiday.jpg", data, "image/jpeg")},
        headers=auth(alice_token),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    media = r.json()
    media_id = media["mediaId"]
    # Absolute, from public_baseurl: a client fetches it as it is.
    assert media["url"] == media_server.url(f"{DOWNLOAD}/{media_server.server_name}/{media_id}")
    assert (media["type"], media["size"], media["messageId"]) == ("image/jpeg", len(data), None)
    assert (media["width"], media["height"]) == (300, 200)
    assert media["contentUri"] == f"mxc://{media_server.server_name}/{media_id}"

    got = requests.get(media["url"], headers=auth(alice_token), timeout=10)
    assert got.status_code == 200 and got.content == data
    assert requests.get(media["url"], headers=auth(bob_token), timeout=10).status_code == 403

    # Shared in a message: the Media entity records the message, and the receiver may download.
    sent = requests.post(
        media_server.url("/api/messages/send"),
        json={
            "receiverId": bob,
            "content": {"msgtype": "m.image", "body": "holiday.jpg", "url": media["contentUri"]},
        },
        headers=auth(alice_token),
        timeout=10,
    )
    assert sent.status_code == 201, sent.text
    message_id = sent.json()["messageId"]
    # Bob reads the new chat (being added to it is enough to join it).
    chat_id = sent.json()["chatId"]
    listed = requests.get(
        media_server.url(f"/api/messages/{quote(chat_id)}"), headers=auth(bob_token), timeout=10
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()[0]["content"]["url"] == media["contentUri"]
    entity = requests.get(media_server.url(f"/api/media/{media_id}"), headers=auth(bob_token), timeout=10)
    assert entity.status_code == 200, entity.text
    assert entity.json()["messageId"] == message_id
    assert {k: entity.json()[k] for k in ("mediaId", "type", "url", "size")} == {
        "mediaId": media_id,
        "type": "image/jpeg",
        "url": media["url"],
        "size": len(data),
    }
    assert requests.get(media["url"], headers=auth(bob_token), timeout=10).status_code == 200

    # Malformed bodies.
    r = requests.post(
        media_server.url("/api/media/upload"), data=b"raw", headers=auth(alice_token), timeout=10
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = requests.post(
        media_server.url("/api/media/upload"),
        files={"other": ("a.txt", b"x")},
        headers=auth(alice_token),
        timeout=10,
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = requests.post(media_server.url("/api/media/upload"), files={"file": ("a.txt", b"x")}, timeout=10)
    assert r.status_code == 401


# Deletion and retention --------------------------------------------------------------


def create_admin(server: ServerProcess) -> str:
    """An admin account made with the CLI against the running server's database; its token."""
    local = f"admin{secrets.token_hex(3)}"
    result = subprocess.run(
        [
            str(VENV_BIN / "homeserver"),
            "admin",
            "create-user",
            "-c",
            str(server.config_path),
            "--email",
            f"{local}@example.org",
            "--username",
            local,
            "--password",
            PASSWORD,
            "--admin",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return str(server.login(local, PASSWORD)["access_token"])


def test_delete_own_media_and_admin_purge(media_server: ServerProcess) -> None:
    alice, alice_token = new_user(media_server, "del")
    _, bob_token = new_user(media_server, "del")
    mine = upload_ok(media_server, alice_token, jpeg(400, 300), "image/jpeg")
    media_id = mine.rsplit("/", 1)[1]
    assert thumbnail(media_server, alice_token, mine, 96, 96, "crop").status_code == 200
    with_files = store_files(media_server)
    assert any(media_id in f for f in with_files)

    r = requests.delete(media_server.url(f"/api/media/{media_id}"), headers=auth(bob_token), timeout=10)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = requests.delete(media_server.url(f"/api/media/{media_id}"), headers=auth(alice_token), timeout=10)
    assert r.status_code == 200, r.text
    assert download(media_server, alice_token, mine).status_code == 404
    assert not any(media_id in f for f in store_files(media_server)), "original and thumbnail are gone"
    r = requests.delete(media_server.url(f"/api/media/{media_id}"), headers=auth(alice_token), timeout=10)
    assert r.status_code == 404

    admin_token = create_admin(media_server)
    theirs = [upload_ok(media_server, bob_token, jpeg(50, 50), "image/jpeg") for _ in range(3)]
    one = theirs[0].rsplit("/", 1)[1]
    r = requests.delete(media_server.url(f"/api/media/{one}"), headers=auth(admin_token), timeout=10)
    assert r.status_code == 200, r.text
    assert download(media_server, bob_token, theirs[0]).status_code == 404

    bob_id = requests.get(
        media_server.url(f"{CLIENT}/account/whoami"), headers=auth(bob_token), timeout=10
    ).json()
    purge = media_server.url("/_plugins/media/admin/purge")
    r = requests.post(purge, json={"userId": bob_id["user_id"]}, headers=auth(bob_token), timeout=10)
    assert r.status_code == 403
    r = requests.post(purge, json={"userId": bob_id["user_id"]}, headers=auth(admin_token), timeout=10)
    assert r.json() == {"deleted": 2}
    assert all(download(media_server, bob_token, m).status_code == 404 for m in theirs)
    assert upload(media_server, alice_token, b"still works", "text/plain").status_code == 200


def test_defaults_retention_legacy_download_and_no_ffmpeg(
    tmp_path_factory: pytest.TempPathFactory, video_clip: bytes
) -> None:
    """Previews off by default; the legacy download when enabled; unshared uploads removed
    after `unreferenced_max_age`; and a video without ffmpeg on the server's PATH."""
    config = {
        "legacy_unauthenticated_download": True,
        "retention": {"unreferenced_max_age": "2s", "interval": "1s"},
    }
    server = start_server_process(
        tmp_path_factory.mktemp("retention"),
        {"plugins": [{"module": MEDIA, "config": config}]},
        env={"PATH": str(VENV_BIN)},
    )
    try:
        alice, alice_token = new_user(server, "ret")
        bob, bob_token = new_user(server, "ret")
        r = requests.get(
            server.url("/_matrix/client/v1/media/preview_url"),
            params={"url": "https://example.org/"},
            headers=auth(alice_token),
            timeout=10,
        )
        assert (r.status_code, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")

        kept = upload_ok(server, alice_token, jpeg(64, 64), "image/jpeg")
        dropped = upload_ok(server, alice_token, jpeg(32, 32), "image/jpeg")
        room = create_room(server, alice_token, [bob])
        join(server, bob_token, room)
        share(server, alice_token, room, kept)

        legacy = requests.get(server.url(f"/_matrix/media/v3/download/{media_path(kept)}"), timeout=10)
        assert legacy.status_code == 200 and legacy.content == jpeg(64, 64)
        assert legacy.headers["Content-Security-Policy"].startswith("sandbox")
        assert legacy.headers["Accept-Ranges"] == "bytes"
        part = requests.get(
            server.url(f"/_matrix/media/r0/download/{media_path(kept)}"),
            headers={"Range": "bytes=-10"},
            timeout=10,
        )
        kept_size = len(jpeg(64, 64))
        assert (part.status_code, part.content) == (206, jpeg(64, 64)[-10:])
        assert part.headers["Content-Range"] == f"bytes {kept_size - 10}-{kept_size - 1}/{kept_size}"

        # No ffmpeg: the video is stored and served, without a poster or dimensions.
        r = upload(server, alice_token, video_clip, "video/mp4")
        assert r.status_code == 200, r.text
        assert "w" not in r.json()["info"]
        clip = r.json()["content_uri"]
        share(server, alice_token, room, clip, "m.video")
        assert download(server, bob_token, clip).content == video_clip
        r = thumbnail(server, bob_token, clip, 96, 96, "crop")
        assert (r.status_code, r.json()["errcode"]) == (400, "M_UNKNOWN")

        deadline = time.monotonic() + 10
        while download(server, alice_token, dropped).status_code != 404:
            assert time.monotonic() < deadline, "the unshared upload was not removed"
            time.sleep(0.2)
        assert download(server, alice_token, kept).status_code == 200
        assert download(server, bob_token, clip).status_code == 200
        files = store_files(server)
        assert not any(dropped.rsplit("/", 1)[1] in f for f in files)
    finally:
        server.stop()


def test_unreferenced_retention_spares_encrypted_attachments(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`unreferenced_max_age` removes an unshared image, but not an opaque upload: an
    encrypted attachment is only ever referenced inside encrypted events, which the server
    cannot read (the web client's images would otherwise vanish)."""
    config = {"retention": {"unreferenced_max_age": "1s", "interval": "1s"}}
    server = start_server_process(
        tmp_path_factory.mktemp("retention-opaque"), {"plugins": [{"module": MEDIA, "config": config}]}
    )
    try:
        _, token = new_user(server, "opaque")
        ciphertext = os.urandom(4096)
        encrypted = upload_ok(server, token, ciphertext, "application/octet-stream")
        dropped = upload_ok(server, token, jpeg(32, 32), "image/jpeg")
        deadline = time.monotonic() + 10
        while download(server, token, dropped).status_code != 404:
            assert time.monotonic() < deadline, "the unshared image was not removed"
            time.sleep(0.2)
        kept = download(server, token, encrypted)
        assert kept.status_code == 200 and kept.content == ciphertext
    finally:
        server.stop()


# URL previews -------------------------------------------------------------------------


class PageHandler(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.end_headers()
            return
        body = (
            b"<html><head><title>A page</title>"
            b'<meta property="og:title" content="Preview title">'
            b'<meta property="og:description" content="What it is about">'
            b"</head><body>" + b"x" * (200_000 if self.path == "/big" else 10) + b"</body></html>"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_server(media_server: ServerProcess) -> Iterator[str]:
    """A web page on 127.0.0.2 (the one whitelisted range); /redirect goes to 127.0.0.1."""
    PageHandler.target = media_server.url("/_matrix/client/versions")
    httpd = ThreadingHTTPServer(("127.0.0.2", 0), PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_preview_refuses_loopback_and_private_addresses(
    media_server: ServerProcess, page_server: str
) -> None:
    _, token = new_user(media_server, "preview")

    def preview(url: str) -> requests.Response:
        return requests.get(
            media_server.url("/_matrix/client/v1/media/preview_url"),
            params={"url": url},
            headers=auth(token),
            timeout=15,
        )

    r = preview(page_server + "/")
    assert r.status_code == 200, r.text
    assert r.json() == {"og:title": "Preview title", "og:description": "What it is about"}
    assert preview(page_server + "/big").json()["og:title"] == "Preview title"

    # Every one of these is refused before any connection is made.
    refused = [
        media_server.url("/_matrix/client/versions"),  # this server, on loopback
        f"http://localhost:{media_server.port}/",
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        page_server + "/redirect",  # a whitelisted page redirecting to loopback
    ]
    for url in refused:
        r = preview(url)
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), url

    for url in ("file:///etc/passwd", "gopher://127.0.0.2/", "not a url", "http://user:pw@127.0.0.2/"):
        r = preview(url)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), url
    r = requests.get(
        media_server.url("/_matrix/client/v1/media/preview_url"), headers=auth(token), timeout=10
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")


# In-process: the pure parts ---------------------------------------------------------------


def test_sniffing_and_serving_rules() -> None:
    from plugins.media.sniff import content_disposition, served_type, sniff

    assert sniff(jpeg(4, 4)) == "image/jpeg"
    assert sniff(png(4, 4)) == "image/png"
    assert sniff(b"GIF89a....") == "image/gif"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff(b"\0\0\0\x18ftypmp42\0\0\0\0") == "video/mp4"
    assert sniff(b"\0\0\0\x18ftypqt  \0\0\0\0") == "video/quicktime"
    assert sniff(b"\x1a\x45\xdf\xa3\x01\0\0\0\0\0\0\x1fB\x86\x81\x01webm") == "video/webm"
    assert sniff(b"OggS\0\x02") == "audio/ogg"
    assert sniff(b"ID3\x04\0") == "audio/mpeg"
    assert sniff(b"%PDF-1.7\n") == "application/pdf"
    assert sniff(b"PK\x03\x04rest") == "application/zip"
    assert sniff(b"  <!doctype HTML><p>hi") == "text/html"
    assert sniff(b"hello <script>x</script>") == "text/html"
    assert sniff(b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg'/>") == "image/svg+xml"
    assert sniff(b"<?xml version='1.0'?><note/>") == "application/xml"
    assert sniff("plain text, accents: é".encode()) == "text/plain"
    assert sniff(b"\x00\x01\x02\x03binary") == "application/octet-stream"

    assert served_type("image/png", "text/html") == "image/png"
    assert served_type("application/octet-stream", "image/png") == "application/octet-stream"
    # Ciphertext that happens to begin like an MP3 frame, uploaded as opaque bytes, stays opaque.
    mp3_like = bytes([0xFF, 0xFB, 0x90, 0x64]) + b"\x00" * 60
    assert sniff(mp3_like) == "audio/mpeg"
    assert served_type(sniff(mp3_like), "application/octet-stream") == "application/octet-stream"
    assert served_type("application/octet-stream", "application/vnd.ms-excel") == "application/vnd.ms-excel"
    assert served_type(
        "application/zip", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    ) == ("application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    assert served_type("text/plain", "text/csv") == "text/csv"
    assert served_type("text/plain", "image/jpeg") == "text/plain"
    assert served_type("text/plain", None) == "text/plain"

    assert content_disposition("image/png", "a.png") == b'inline; filename="a.png"'
    assert content_disposition("text/html", "a.html") == b'attachment; filename="a.html"'
    assert content_disposition("image/svg+xml", None) == b"attachment"
    assert content_disposition("image/png", '../../etc/"pass\r\nwd') == b'inline; filename="passwd"'


def test_preview_ip_blocklist() -> None:
    from homeserver.plugins import address_blocked as blocked

    ip = ipaddress.ip_address
    for addr in (
        "127.0.0.1",
        "127.9.9.9",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
    ):
        assert blocked(ip(addr)), addr
    for addr in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1"):
        assert not blocked(ip(addr)), addr
    net = ipaddress.ip_network
    assert blocked(ip("1.1.1.1"), blacklist=(net("1.1.1.0/24"),))
    assert not blocked(ip("127.0.0.2"), whitelist=(net("127.0.0.2/32"),))
    assert blocked(ip("127.0.0.3"), whitelist=(net("127.0.0.2/32"),))


def test_thumbnail_choice_links_and_config() -> None:
    from homeserver.plugins import PluginConfigError
    from plugins.media.config import DEFAULT_THUMBNAIL_SIZES, parse_media_config
    from plugins.media.repository import choose_size, referenced_media

    def chosen(w: int, h: int, m: str) -> tuple[int, int, str]:
        s = choose_size(DEFAULT_THUMBNAIL_SIZES, w, h, m)
        return (s.width, s.height, s.method)

    assert chosen(32, 32, "crop") == (32, 32, "crop")
    assert chosen(33, 20, "crop") == (96, 96, "crop")
    assert chosen(5000, 5000, "crop") == (96, 96, "crop")
    assert chosen(320, 240, "scale") == (320, 240, "scale")
    assert chosen(100, 100, "scale") == (320, 240, "scale")
    assert chosen(1000, 1000, "scale") == (800, 600, "scale")

    content = {
        "body": "x",
        "url": "mxc://hs.test/abc_DEF-1",
        "info": {"thumbnail_url": "mxc://hs.test/thumb1", "thumbnail_file": {"url": "mxc://hs.test/enc1"}},
        "other": ["mxc://elsewhere.test/x", "mxc://hs.test/../etc", "mxc://hs.test/ok2"],
    }
    assert referenced_media(content, "hs.test") == {"abc_DEF-1", "thumb1", "enc1", "ok2"}

    config = parse_media_config(
        {
            "max_upload_size": "10M",
            "storage": {"provider": "s3", "s3": {"bucket": "from-file", "access_key_id": "file-key"}},
            "thumbnails": {"sizes": [{"width": 64, "height": 64, "method": "crop"}]},
        },
        env={
            "HOMESERVER_MEDIA_S3_ACCESS_KEY_ID": "env-key",
            "HOMESERVER_MEDIA_S3_SECRET_ACCESS_KEY": "env-secret",
        },
    )
    assert config.max_upload_size == 10 * 1024 * 1024
    assert (config.storage.s3.bucket, config.storage.s3.access_key_id) == ("from-file", "env-key")
    assert config.storage.s3.secret_access_key == "env-secret"
    assert len(config.thumbnail_sizes) == 1
    for bad, words in (
        ({"max_upload_size": "lots"}, "max_upload_size"),
        ({"storage": {"provider": "ftp"}}, "storage.provider"),
        ({"storage": {"provider": "s3"}}, "bucket"),
        ({"thumbnails": {"sizes": [{"width": 0, "height": 5}]}}, "width"),
        ({"url_preview": {"ip_range_whitelist": ["nonsense"]}}, "ip_range_whitelist"),
        ({"colour": "blue"}, "colour"),
    ):
        with pytest.raises(PluginConfigError, match=words):
            parse_media_config(bad, env={})


def test_video_poster_degrades_without_ffmpeg(monkeypatch: pytest.MonkeyPatch, video_clip: bytes) -> None:
    from plugins.media.images import MediaInfo, video_info

    with_ffmpeg = video_info(io.BytesIO(video_clip), 10_000_000)
    assert (with_ffmpeg.width, with_ffmpeg.height) == (640, 480)
    assert with_ffmpeg.poster is not None and image_size(with_ffmpeg.poster) == (640, 480)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert video_info(io.BytesIO(video_clip), 10_000_000) == MediaInfo()


def test_thumbnails_of_each_image_format() -> None:
    from plugins.media.config import ThumbnailSize
    from plugins.media.images import image_info
    from plugins.media.images import thumbnail as make_thumbnail

    for fmt, expected_type in (
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("GIF", "image/png"),
        ("WEBP", "image/jpeg"),
    ):
        buf = io.BytesIO()
        frames = [Image.new("RGB", (400, 300), c) for c in ((255, 0, 0), (0, 0, 255))]
        if fmt in ("GIF", "WEBP"):
            frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        else:
            frames[0].save(buf, fmt)
        assert (image_info(buf, 1_000_000).width, image_info(buf, 1_000_000).height) == (400, 300)
        crop = make_thumbnail(buf, ThumbnailSize(96, 96, "crop"), 1_000_000)
        scale = make_thumbnail(buf, ThumbnailSize(320, 240, "scale"), 1_000_000)
        assert crop.content_type == expected_type, fmt
        assert (crop.width, crop.height) == image_size(crop.data) == (96, 96), fmt
        assert (scale.width, scale.height) == image_size(scale.data) == (320, 240), fmt

    # EXIF orientation 6 (rotated): dimensions as displayed, thumbnail upright.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (400, 200), (1, 2, 3)).save(buf, "JPEG", exif=exif)
    info = image_info(buf, 1_000_000)
    assert (info.width, info.height) == (200, 400)
    assert image_size(make_thumbnail(buf, ThumbnailSize(320, 240, "scale"), 1_000_000).data) == (120, 240)


def test_decompression_bombs_are_not_decoded() -> None:
    from plugins.media.config import ThumbnailSize
    from plugins.media.images import TooManyPixels, image_info
    from plugins.media.images import thumbnail as make_thumbnail

    big = jpeg(2000, 2000)
    with pytest.raises(TooManyPixels):
        image_info(io.BytesIO(big), 1_000_000)
    with pytest.raises(TooManyPixels):
        make_thumbnail(io.BytesIO(big), ThumbnailSize(32, 32, "crop"), 1_000_000)
    assert image_info(io.BytesIO(big), 4_000_000).width == 2000


def test_blurhash_of_a_solid_colour() -> None:
    """Solid red: 28 characters, size flag 'L' (4x3 components), the DC term pure red."""
    from plugins.media.images import blurhash

    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
    dc = "".join(chars[(0xFF0000 // 83 ** (3 - i)) % 83] for i in range(4))
    value = blurhash(Image.new("RGB", (32, 32), (255, 0, 0)))
    assert len(value) == 28 and value[0] == "L" and value[2:6] == dc
    assert blurhash(Image.new("RGB", (32, 32), (255, 0, 0))) == value


def test_only_the_four_web_image_formats_are_ever_decoded() -> None:
    # Synapse's CVE-2024-53863: thumbnailing decoded any format Pillow knows (EPS through
    # Ghostscript among them). Here only JPEG, PNG, GIF and WebP reach a decoder.
    from plugins.media.images import NotAnImage, image_info

    for fmt in ("BMP", "TIFF", "ICO", "PPM"):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (9, 9, 9)).save(buf, fmt)
        with pytest.raises(NotAnImage):
            image_info(buf, 1_000_000)
    buf = io.BytesIO(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(NotAnImage):
        image_info(buf, 1_000_000)
