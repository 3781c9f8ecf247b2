"""Attachments in the web client (web/src/media.ts, web/src/screens/attachments.ts).

In Chromium (tests/browser/web_media.mjs), in an encrypted chat: Alice sends an image by
the file picker, one by paste and one by drag and drop, a short video and a PDF, with
their upload progress shown; a file over the server's upload limit is refused with a
message naming the limit. Bob sees the thumbnails decrypted (their size and pixels), opens
the photo full size, plays the video and downloads the PDF with the same bytes and name.
The server holds only ciphertext: every stored file differs from the originals, and what
Bob's token downloads is opaque bytes of the original's length. In a plain room the same
goes out unencrypted, and Bob sees it just as well.

Not in the fast tier (it starts processes); the browser test takes about 40 s.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from browser import built_web_client, run_browser_script
from conftest import ServerProcess
from PIL import Image

PASSWORD = "correct horse battery"
CLIENT = "/_matrix/client/v3"
DOWNLOAD = "/_matrix/client/v1/media/download"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
MAX_UPLOAD = 1024 * 1024
RED, BLUE = (220, 30, 30), (30, 60, 220)

# A one-page PDF, small and valid enough for any reader.
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 100]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def png(width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> bytes:
    """An image whose left half is one colour and right half another."""
    im = Image.new("RGB", (width, height), left)
    im.paste(right, (width // 2, 0, width, height))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def near(pixel: list[int], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    made = {
        "photo.png": png(1200, 900, RED, BLUE),
        "pasted.png": png(640, 480, BLUE, RED),
        "dropped.png": png(300, 200, RED, RED),
        "report.pdf": PDF,
        "big.bin": os.urandom(MAX_UPLOAD + 200_000),
        "plain.png": png(1000, 500, BLUE, BLUE),
    }
    folder = tmp_path / "files"
    folder.mkdir()
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return made


def plain_room_of(server: ServerProcess, alice_token: str, bob_token: str, bob: str) -> str:
    """An unencrypted room (public, so no encryption by default) with both joined."""
    r = requests.post(
        server.url(f"{CLIENT}/createRoom"),
        json={"preset": "public_chat", "name": "Plain room", "invite": [bob]},
        headers={"Authorization": f"Bearer {alice_token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    room_id: str = r.json()["room_id"]
    r = requests.post(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/join"),
        json={},
        headers={"Authorization": f"Bearer {bob_token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return room_id


def stored_event_types(server: ServerProcess, token: str, room_id: str) -> list[str]:
    r = requests.get(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/messages"),
        params={"dir": "b", "limit": "200"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [e["type"] for e in r.json()["chunk"]]


def test_images_video_and_a_document_sent_encrypted_in_the_web_client(
    start_server: Any, tmp_path: Path, files: dict[str, bytes]
) -> None:
    dist = built_web_client()
    server: ServerProcess = start_server(
        {
            "web_client": {"enabled": True, "path": str(dist)},
            "encryption": {"enabled_by_default_for_room_type": "invite"},
            "plugins": [{"module": "plugins.media.MediaPlugin", "config": {"max_upload_size": "1M"}}],
        }
    )
    alice, bob = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
    alice_token = server.register(alice, PASSWORD)["access_token"]
    bob_token = server.register(bob, PASSWORD)["access_token"]
    plain_room = plain_room_of(server, alice_token, bob_token, f"@{bob}:{server.server_name}")
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)

    result = run_browser_script(
        "web_media.mjs",
        server.base_url,
        alice,
        bob,
        PASSWORD,
        str(tmp_path / "files"),
        str(shots),
        plain_room,
        timeout=180,
    )
    assert result["encryptedShown"] == "End-to-end encrypted"

    # Both see the five attachments, each encrypted, none failing to load.
    kinds = [(m["kind"], m["encrypted"]) for m in result["bobMedia"]]
    assert kinds == [("image", True)] * 3 + [("video", True), ("document", True)]
    assert [m["mxc"] for m in result["aliceMedia"]] == [m["mxc"] for m in result["bobMedia"]]
    assert result["failedMedia"] == 0

    # Every upload showed its progress, up to all of it.
    for name in ("photo.png", "pasted.png", "dropped.png", "clip.webm", "report.pdf"):
        seen = result["uploads"][name]
        assert "uploading" in seen["states"] and seen["progress"][-1] == 1, (name, seen)
    assert result["dropHover"] is True
    # Over the limit: a message naming it, nothing uploaded.
    assert result["tooLarge"] == "“big.bin” is 1.2 MB: this server takes files up to 1.0 MB."
    assert result["uploadsLeft"] == 0

    # Bob's thumbnails are the sender's canvas-made ones, decrypted: scaled into 800×600,
    # with the original's colours where they were.
    photo = result["thumbnails"]["photo.png"]
    assert (photo["width"], photo["height"]) == (800, 600) and photo["src"] == "blob:"
    assert near(photo["left"], RED) and near(photo["right"], BLUE), photo
    pasted = result["thumbnails"]["pasted.png"]
    assert (pasted["width"], pasted["height"]) == (640, 480)
    assert near(pasted["left"], BLUE) and near(pasted["right"], RED), pasted
    dropped = result["thumbnails"]["dropped.png"]
    assert (dropped["width"], dropped["height"]) == (300, 200) and near(dropped["right"], RED)
    # The full image is the original; the video plays; the PDF downloads intact, named.
    assert result["fullImage"] == {"width": 1200, "height": 900}
    assert result["viewerClosed"] is True
    assert result["videoBeforePlay"] == {"src": "", "poster": "blob:"}
    assert result["video"] == {"width": 160, "height": 120, "played": True, "src": "blob:"}
    assert result["download"]["name"] == "report.pdf"
    assert base64.b64decode(result["download"]["base64"]) == PDF
    assert "report.pdf" in result["documentText"]
    assert result["problems"] == []

    # The server only ever had ciphertext: the messages are m.room.encrypted, and the files
    # it serves (and stores) are none of the originals, whose length they keep (AES-CTR).
    token = bob_token
    types = stored_event_types(server, token, result["roomId"])
    assert "m.room.message" not in types and types.count("m.room.encrypted") == 5, types
    originals = {**files, "clip.webm": b""}
    for media, name in zip(
        result["bobMedia"], ["photo.png", "pasted.png", "dropped.png", "clip.webm", "report.pdf"], strict=True
    ):
        server_name, media_id = media["mxc"].removeprefix("mxc://").split("/")
        r = requests.get(
            server.url(f"{DOWNLOAD}/{server_name}/{media_id}"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/octet-stream", name
        if name == "clip.webm":
            assert len(r.content) == result["videoSize"] and not r.content.startswith(b"\x1a\x45\xdf\xa3")
        else:
            assert len(r.content) == len(originals[name]) and r.content != originals[name], name

    # The plain room: the image went unencrypted (`url`), with the sender's thumbnail, and
    # Bob saw it the same way.
    assert [(m["kind"], m["encrypted"]) for m in result["plainMedia"]] == [("image", False)]
    assert (result["plainThumbnail"]["width"], result["plainThumbnail"]["height"]) == (800, 400)
    assert near(result["plainThumbnail"]["left"], BLUE)
    assert result["plainFull"] == {"width": 1000, "height": 500}
    r = requests.get(
        server.url(f"{CLIENT}/rooms/{quote(plain_room)}/messages"),
        params={"dir": "b", "limit": "50", "filter": '{"types": ["m.room.message"]}'},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    [event] = r.json()["chunk"]
    content: dict[str, Any] = event["content"]
    assert content["msgtype"] == "m.image" and content["url"] == result["plainMedia"][0]["mxc"]
    assert "file" not in content and content["info"]["thumbnail_url"].startswith("mxc://")
    assert content["info"]["w"] == 1000 and content["info"]["thumbnail_info"]["w"] == 800
    server_name, media_id = content["url"].removeprefix("mxc://").split("/")
    r = requests.get(
        server.url(f"{DOWNLOAD}/{server_name}/{media_id}"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.content == files["plain.png"]

    # Everything the store holds for the encrypted chat is opaque: five files, three image
    # thumbnails and the video's poster; only the plain room's image and thumbnail are not.
    plain_ids = {mxc.rsplit("/", 1)[1] for mxc in (content["url"], content["info"]["thumbnail_url"])}
    store = server.data_dir / "plugins" / "media" / "store"
    stored = [p for p in store.rglob("*") if p.is_file() and not plain_ids & set(p.parts)]
    assert len(stored) == 9, stored
    for path in stored:
        data = path.read_bytes()
        assert data not in files.values()
        assert not data.startswith((b"\x89PNG", b"%PDF", b"\xff\xd8\xff", b"\x1a\x45\xdf\xa3")), data[:8]
