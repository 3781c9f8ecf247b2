"""Serving the web client's built files (web/dist, docs/web-client.md) at `/`.

The router calls `serve` only for a GET or HEAD that no API route matched, so the API
always keeps precedence. Paths under the API prefixes stay Matrix 404s (`M_UNRECOGNIZED`)
rather than turning into the client's page. A path naming a file gets that file; a page
load (Accept: text/html) of any other path is one of the client's own routes (/login,
/chat/!room:example.org) and gets index.html; anything else is a 404, so a missing
script or wasm never arrives as HTML.

Files are read once and kept in memory until their size or mtime changes: the whole dist
is a few MB and a rebuild replaces it while the server runs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from homeserver.api.http import ApiRequest, Response, Router
from homeserver.errors import Unrecognized

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# The server's own paths, the plugins' (/_plugins/<name>/) and the admin plugin's
# (/_synapse/admin/, its dashboard at /_admin/).
API_PREFIXES = (
    "/_matrix/",
    "/_homeserver/",
    "/_synapse/",
    "/_plugins/",
    "/_admin/",
    "/api/",
    "/.well-known/",
)

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json",
    ".webmanifest": b"application/manifest+json",
    ".wasm": b"application/wasm",  # WebAssembly.instantiateStreaming refuses anything else
    ".map": b"application/json",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
}

# esbuild names bundles and chunks under assets/ with a content hash: they never change.
IMMUTABLE = b"public, max-age=31536000, immutable"
# Everything else (index.html, the wasm) is revalidated with its ETag on every load.
REVALIDATE = b"no-cache"

NOT_BUILT_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Web client not built</title></head>
<body><h1>The web client is not built</h1>
<p>Build it with <code>make web</code> (<code>make run</code> builds it when it is missing
or stale), then reload this page. The Matrix API is served as usual under
<code>/_matrix/</code>.</p></body></html>
"""


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]
    body: bytes
    etag: bytes


class StaticFiles:
    """The files under `root`, answered as responses."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, _Cached] = {}

    def built(self) -> bool:
        return (self.root / "index.html").is_file()

    def _file(self, path: str) -> Path | None:
        """The file `path` names under the root, or None (also for any `..` or dotfile)."""
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        candidate = self.root.joinpath(*parts) if parts else self.root / "index.html"
        return candidate if candidate.is_file() else None

    def _read(self, file: Path) -> _Cached:
        st = file.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._cache.get(file)
        if cached is None or cached.stamp != stamp:
            body = file.read_bytes()
            etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
            cached = self._cache[file] = _Cached(stamp, body, etag)
        return cached

    def respond(self, request: ApiRequest, path: str) -> Response:
        if not self.built():
            return Response(NOT_BUILT_PAGE, 404, b"text/html; charset=utf-8")
        file = self._file(path)
        if file is None:
            if b"text/html" not in (request.getHeader(b"accept") or b""):
                raise Unrecognized("No such file")
            file = self.root / "index.html"  # a route of the client's own
        cached = self._read(file)
        relative = file.relative_to(self.root).as_posix()
        cache = IMMUTABLE if relative.startswith("assets/") and file.suffix != ".wasm" else REVALIDATE
        headers = ((b"Cache-Control", cache), (b"ETag", cached.etag), (b"X-Content-Type-Options", b"nosniff"))
        content_type = CONTENT_TYPES.get(file.suffix, b"application/octet-stream")
        if request.getHeader(b"if-none-match") == cached.etag:
            return Response(b"", 304, content_type, headers)
        return Response(cached.body, 200, content_type, headers)


def register(router: Router, hs: HomeServer) -> None:
    """Serve the web client from `web_client.path` for the paths no API route takes."""
    config = hs.config.web_client
    if not config.enabled:
        return
    files = StaticFiles(Path(os.path.expanduser(config.path)))

    async def serve(request: ApiRequest) -> Response:
        path = unquote(request.path.decode("utf-8", "replace"))
        if path.startswith(API_PREFIXES) or path + "/" in API_PREFIXES:
            raise Unrecognized("Unrecognized request")
        return files.respond(request, path)

    router.fallback = serve
