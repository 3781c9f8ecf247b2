"""Directory, public room list and media queries over federation: two of our servers over
TLS both ways, and with a real Synapse; the safety cases of Synapse's federation
advisories that these routes touch (oversized query parameters, path traversal in media
ids)."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from federation_harness import FederatedServer, TestCA, signed_request, start_federated_server
from synapse import SynapseServer

from homeserver.core.federation.media import multipart_boundary, parse_multipart


def _png() -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


PNG = _png()
MEDIA = {"module": "plugins.media.MediaPlugin", "config": {}}


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer]]:
    a = start_federated_server(tmp_path_factory.mktemp("hs-a"), ca, {"plugins": [MEDIA]})
    # B keeps remote media only up to 100 kB.
    small = {"module": "plugins.media.MediaPlugin", "config": {"max_upload_size": "100K"}}
    b = start_federated_server(tmp_path_factory.mktemp("hs-b"), ca, {"plugins": [small]})
    yield a, b
    for server in (a, b):
        server.stop()


def _auth(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['access_token']}"}


def _public_room(server: FederatedServer, user: dict[str, Any], alias: str, name: str) -> str:
    r = requests.post(
        server.process.url("/_matrix/client/v3/createRoom"),
        json={"visibility": "public", "preset": "public_chat", "room_alias_name": alias, "name": name},
        headers=_auth(user),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    room_id: str = r.json()["room_id"]
    return room_id


def _upload(server: FederatedServer, user: dict[str, Any], data: bytes, content_type: str) -> str:
    r = requests.post(
        server.process.url("/_matrix/media/v3/upload?filename=pic.png"),
        data=data,
        headers={**_auth(user), "Content-Type": content_type},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    mxc: str = r.json()["content_uri"]
    return mxc.removeprefix("mxc://").split("/", 1)[1]


def test_aliases_resolve_across_servers(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    alice = a.process.register("alice")
    bob = b.process.register("bob")
    room_id = _public_room(a, alice, "lobby", "The lobby")

    def resolve(alias: str) -> requests.Response:
        return requests.get(
            b.process.url(f"/_matrix/client/v3/directory/room/{quote(alias, safe='')}"),
            headers=_auth(bob),
            timeout=30,
        )

    r = resolve(f"#lobby:{a.server_name}")
    assert r.status_code == 200, r.text
    assert r.json() == {"room_id": room_id, "servers": [a.server_name]}
    # Served from B's short cache the second time: A sees one query.
    assert resolve(f"#lobby:{a.server_name}").json()["room_id"] == room_id
    assert a.process.log_text().count("GET /_matrix/federation/v1/query/directory") == 1
    # A's 404 is passed on; an unreachable server is 502; a malformed alias 400.
    r = resolve(f"#nothing:{a.server_name}")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    r = resolve("#x:localhost:1")
    assert r.status_code == 502, r.text
    r = resolve("#x:bad/name")
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    # Our own aliases still resolve locally.
    r = requests.get(
        a.process.url(f"/_matrix/client/v3/directory/room/{quote(f'#lobby:{a.server_name}', safe='')}"),
        timeout=30,
    )
    assert r.json() == {"room_id": room_id, "servers": [a.server_name]}


def test_the_directory_query_refuses_what_it_must(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    base = "/_matrix/federation/v1/query/directory"
    # Someone else's alias is not ours to answer; a missing parameter is 400.
    r = signed_request("GET", b, a, f"{base}?room_alias={quote(f'#x:{b.server_name}', safe='')}")
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    r = signed_request("GET", b, a, base)
    assert r.status_code == 400 and r.json()["errcode"] == "M_MISSING_PARAM", r.text
    # Oversized query parameters: a clear 400, never a 500 (nor a database error).
    long_alias = "#" + "a" * 8000 + ":" + a.server_name
    r = signed_request("GET", b, a, f"{base}?room_alias={quote(long_alias, safe='')}")
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    r = signed_request("GET", b, a, "/_matrix/federation/v1/publicRooms?limit=" + "9" * 5000)
    assert r.status_code == 400, r.text
    r = signed_request("GET", b, a, "/_matrix/federation/v1/publicRooms?include_all_networks=maybe")
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    # A negative limit is refused (0 is no limit, as in Synapse: tests/fast/test_public_rooms_limit.py).
    r = signed_request("GET", b, a, "/_matrix/federation/v1/publicRooms?limit=-1")
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    r = signed_request("POST", b, a, "/_matrix/federation/v1/publicRooms", {"limit": -1})
    assert r.status_code == 400 and r.json()["errcode"] == "M_INVALID_PARAM", r.text
    # Unsigned: 401.
    r = a.get(f"{base}?room_alias=%23x%3Ay")
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNAUTHORIZED"


def test_public_rooms_across_servers(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    carol = a.process.register("carol")
    dave = b.process.register("dave")
    for i in range(3):
        _public_room(a, carol, f"garden{i}", f"Garden {i}")

    def listing(query: str = "", body: dict[str, Any] | None = None) -> requests.Response:
        url = b.process.url(f"/_matrix/client/v3/publicRooms?server={quote(a.server_name)}{query}")
        if body is None:
            return requests.get(url, headers=_auth(dave), timeout=30)
        return requests.post(url, json=body, headers=_auth(dave), timeout=30)

    r = listing()
    assert r.status_code == 200, r.text
    names = {room.get("name") for room in r.json()["chunk"]}
    assert {"Garden 0", "Garden 1", "Garden 2"} <= names
    # Pages: limit and since go through to A.
    first = listing("&limit=2").json()
    assert len(first["chunk"]) == 2 and "next_batch" in first
    second = listing(f"&limit=2&since={first['next_batch']}").json()
    assert {r["room_id"] for r in second["chunk"]}.isdisjoint({r["room_id"] for r in first["chunk"]})
    # A filter (POST) is applied by A.
    r = listing(body={"filter": {"generic_search_term": "garden 1"}, "limit": 10})
    assert r.status_code == 200, r.text
    assert [room["name"] for room in r.json()["chunk"]] == ["Garden 1"]
    # No third-party networks here: a request for one is an empty page.
    r = listing(body={"third_party_instance_id": "irc"})
    assert r.status_code == 200 and r.json()["chunk"] == []
    # B's own list does not hold A's rooms; an unreachable server is 502.
    own = requests.get(b.process.url("/_matrix/client/v3/publicRooms"), headers=_auth(dave), timeout=30)
    assert "Garden 0" not in {room.get("name") for room in own.json()["chunk"]}
    r = requests.get(
        b.process.url("/_matrix/client/v3/publicRooms?server=localhost:1"), headers=_auth(dave), timeout=30
    )
    assert r.status_code == 502, r.text


def test_remote_media_is_fetched_once_and_kept(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    erin = a.process.register("erin")
    frank = b.process.register("frank")
    media_id = _upload(a, erin, PNG, "image/png")

    # A serves it to other servers as multipart/mixed: JSON metadata, then the bytes.
    r = signed_request("GET", b, a, f"/_matrix/federation/v1/media/download/{media_id}")
    assert r.status_code == 200, r.text
    boundary = multipart_boundary(r.headers["Content-Type"])
    assert boundary is not None
    (meta_headers, meta), (file_headers, data) = parse_multipart(r.content, boundary)
    assert meta_headers["content-type"] == "application/json" and json.loads(meta) == {}
    assert file_headers["content-type"] == "image/png" and data == PNG

    def download(mid: str, kind: str = "download", query: str = "") -> requests.Response:
        return requests.get(
            b.process.url(f"/_matrix/client/v1/media/{kind}/{a.server_name}/{mid}{query}"),
            headers=_auth(frank),
            timeout=30,
        )

    r = download(media_id)
    assert r.status_code == 200, r.text
    assert r.content == PNG and r.headers["Content-Type"] == "image/png"
    assert download(media_id).content == PNG
    r = download(media_id, "thumbnail", "?width=32&height=32&method=scale")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("image/"), r.text
    fetches = a.process.log_text().count(f"GET /_matrix/federation/v1/media/download/{media_id}")
    assert fetches == 2  # the test's own request, and B's one fetch

    # Five downloads at once of media B has not seen: one fetch.
    other = _upload(a, erin, PNG + b"\x00" * 10, "image/png")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: download(other), range(5)))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert a.process.log_text().count(f"GET /_matrix/federation/v1/media/download/{other}") == 1

    # Unknown media: A's 404 passed on; an unreachable server: 502.
    r = download("nosuchmedia")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    r = requests.get(
        b.process.url("/_matrix/client/v1/media/download/localhost:1/abc"), headers=_auth(frank), timeout=30
    )
    assert r.status_code == 502, r.text
    # Larger than B keeps (100 kB): 413 M_TOO_LARGE, nothing kept.
    big = _upload(a, erin, b"\x00" * 200_000, "application/octet-stream")
    r = download(big)
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE", r.text


def test_media_ids_cannot_traverse_paths(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    grace = b.process.register("grace")
    for media_id in ("..%2F..%2Fsigning.key", "..%2Fplugins", "a..b", "a%00b", "x" * 300):
        r = signed_request("GET", b, a, f"/_matrix/federation/v1/media/download/{media_id}")
        assert r.status_code in (400, 404), (media_id, r.status_code, r.text)
        assert b"ed25519" not in r.content
        r = requests.get(
            b.process.url(f"/_matrix/client/v1/media/download/{a.server_name}/{media_id}"),
            headers=_auth(grace),
            timeout=30,
        )
        assert r.status_code in (400, 404), (media_id, r.status_code, r.text)
    # A copy B keeps of A's media is never served by B as its own, to clients or servers.
    owner = a.process.register("heidi")
    media_id = _upload(a, owner, PNG + b"\x01", "image/png")
    r = requests.get(
        b.process.url(f"/_matrix/client/v1/media/download/{a.server_name}/{media_id}"),
        headers=_auth(grace),
        timeout=30,
    )
    assert r.status_code == 200
    from plugins.media.remote import cache_id

    local = cache_id(a.server_name, media_id)
    assert signed_request("GET", a, b, f"/_matrix/federation/v1/media/download/{local}").status_code == 404
    r = requests.get(
        b.process.url(f"/_matrix/client/v1/media/download/{b.server_name}/{local}"),
        headers=_auth(grace),
        timeout=30,
    )
    assert r.status_code == 404


# With Synapse -------------------------------------------------------------------------


def test_with_synapse_aliases_and_media(
    servers: tuple[FederatedServer, FederatedServer], synapse: SynapseServer
) -> None:
    ours, _ = servers
    ivan = synapse.register("ivan")
    judy = ours.process.register("judy")
    r = requests.post(
        synapse.url("/_matrix/client/v3/createRoom"),
        json={"visibility": "public", "preset": "public_chat", "room_alias_name": "plaza", "name": "Plaza"},
        headers=_auth(ivan),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    room_id = r.json()["room_id"]
    alias = f"#plaza:{synapse.server_name}"
    r = requests.get(
        ours.process.url(f"/_matrix/client/v3/directory/room/{quote(alias, safe='')}"),
        headers=_auth(judy),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["room_id"] == room_id and r.json()["servers"][0] == synapse.server_name

    r = requests.post(
        synapse.url("/_matrix/media/v3/upload?filename=pic.png"),
        data=PNG,
        headers={**_auth(ivan), "Content-Type": "image/png"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    media_id = r.json()["content_uri"].rsplit("/", 1)[1]
    r = requests.get(
        ours.process.url(f"/_matrix/client/v1/media/download/{synapse.server_name}/{media_id}"),
        headers=_auth(judy),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.content == PNG and r.headers["Content-Type"] == "image/png"

    # Synapse reads our alias and our media the same way.
    room = _public_room(ours, judy, "square", "Square")
    ours_alias = f"#square:{ours.server_name}"
    r = requests.get(
        synapse.url(f"/_matrix/client/v3/directory/room/{quote(ours_alias, safe='')}"),
        headers=_auth(ivan),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["room_id"] == room
    mine = _upload(ours, judy, PNG + b"\x02", "image/png")
    r = requests.get(
        synapse.url(f"/_matrix/client/v1/media/download/{ours.server_name}/{mine}"),
        headers=_auth(ivan),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.content == PNG + b"\x02"


# A hostile or old remote ------------------------------------------------------------------


class _FakeRemote:
    """A bare HTTPS server on loopback with a certificate from the test CA, answering media
    requests the way the test says: another server that is not one of ours, old or hostile."""

    def __init__(self, ca: TestCA) -> None:
        import http.server
        import ssl
        import threading

        from conftest import free_port

        self.port = free_port()
        self.answers: dict[str, tuple[int, str, bytes]] = {}
        self.asked: list[str] = []
        answers, asked = self.answers, self.asked

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                asked.append(path)
                status, content_type, body = answers.get(
                    path, (404, "application/json", b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized"}')
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        cert, key = ca.issue(f"fake-{self.port}")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def server_name(self) -> str:
        return f"localhost:{self.port}"

    def media(self, media_id: str, part_headers: str, data: bytes) -> None:
        body = (
            b"--xyz\r\nContent-Type: application/json\r\n\r\n{}\r\n--xyz\r\n"
            + part_headers.encode()
            + b"\r\n\r\n"
            + data
            + b"\r\n--xyz--\r\n"
        )
        path = f"/_matrix/federation/v1/media/download/{media_id}"
        self.answers[path] = (200, "multipart/mixed; boundary=xyz", body)

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def fake_remote(ca: TestCA) -> Iterator[_FakeRemote]:
    remote = _FakeRemote(ca)
    yield remote
    remote.stop()


def test_a_hostile_or_old_remotes_media(
    servers: tuple[FederatedServer, FederatedServer], fake_remote: _FakeRemote
) -> None:
    _, b = servers
    kim = b.process.register("kim")

    def download(media_id: str) -> requests.Response:
        return requests.get(
            b.process.url(f"/_matrix/client/v1/media/download/{fake_remote.server_name}/{media_id}"),
            headers=_auth(kim),
            timeout=30,
        )

    # HTML claimed as an image: served as what it is, as an attachment, sandboxed.
    page = b"<html><script>alert(document.cookie)</script></html>"
    fake_remote.media("html", "Content-Type: image/png\r\nContent-Disposition: inline; filename=x.png", page)
    r = download("html")
    assert r.status_code == 200, r.text
    assert r.content == page
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"

    # A server without the federation media route: the legacy one, once.
    fake_remote.answers[f"/_matrix/media/v3/download/{fake_remote.server_name}/old"] = (200, "image/png", PNG)
    r = download("old")
    assert r.status_code == 200 and r.content == PNG and r.headers["Content-Type"] == "image/png"
    assert download("old").content == PNG
    assert fake_remote.asked.count(f"/_matrix/media/v3/download/{fake_remote.server_name}/old") == 1

    # Past B's limit (100 kB): 413, and nothing kept (asked again next time).
    fake_remote.media("huge", "Content-Type: application/octet-stream", b"\x00" * 300_000)
    r = download("huge")
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE", r.text
    assert download("huge").status_code == 413
    assert fake_remote.asked.count("/_matrix/federation/v1/media/download/huge") == 2

    # Media at another URL (a CDN): fetched from there, with that answer's headers.
    fake_remote.answers["/cdn/pic"] = (200, "image/png", PNG)
    fake_remote.media("oncdn", f"Location: https://{fake_remote.server_name}/cdn/pic", b"")
    r = download("oncdn")
    assert r.status_code == 200 and r.content == PNG and r.headers["Content-Type"] == "image/png", r.text
    # ...within the same size limit.
    fake_remote.answers["/cdn/huge"] = (200, "application/octet-stream", b"\x00" * 300_000)
    fake_remote.media("hugecdn", f"Location: https://{fake_remote.server_name}/cdn/huge", b"")
    assert download("hugecdn").status_code == 413
    # A location that is not http(s), or that fails: 502.
    fake_remote.media("ftp", "Location: ftp://example.org/x", b"")
    fake_remote.media("gone", f"Location: https://{fake_remote.server_name}/cdn/gone", b"")

    # Nonsense: not multipart, three parts, a redirect nowhere: 502, never a 500.
    path = "/_matrix/federation/v1/media/download/"
    fake_remote.answers[path + "plain"] = (200, "image/png", PNG)
    three = b"--q\r\n\r\n{}\r\n--q\r\n\r\na\r\n--q\r\n\r\nb\r\n--q--\r\n"
    fake_remote.answers[path + "three"] = (200, "multipart/mixed; boundary=q", three)
    fake_remote.media("moved", "Location: http://127.0.0.1:1/x", b"")
    fake_remote.answers[path + "broken"] = (500, "text/plain", b"oops")
    for media_id in ("plain", "three", "moved", "broken", "ftp", "gone"):
        r = download(media_id)
        assert r.status_code == 502, (media_id, r.status_code, r.text)
    # Unknown on both routes: 404.
    assert download("missing").status_code == 404
    assert "Traceback" not in b.process.log_text()
