"""The dashboard's page at `/_admin/`: a fixed set of files from plugins/admin/static/, read
once at start-up and served as they are. The page holds no data: everything it shows comes
from the admin API with the admin's token, so serving it needs no login.

The Content-Security-Policy lets the page load only its own files and talk only to this
server: no inline script, nothing from elsewhere, no framing.
"""

from __future__ import annotations

from pathlib import Path

from homeserver.plugins import ApiRequest, MatrixError, Response

STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
_HEADERS = (
    (
        b"Content-Security-Policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-cache"),
)


class StaticSite:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, bytes]] = {}
        for path in sorted(STATIC_DIR.iterdir()):
            content_type = _TYPES.get(path.suffix)
            if content_type is not None and path.is_file():
                self.files[path.name] = (path.read_bytes(), content_type)

    async def index(self, request: ApiRequest) -> Response:
        return self._serve("index.html")

    async def file(self, request: ApiRequest, name: str) -> Response:
        return self._serve(name)

    def _serve(self, name: str) -> Response:
        found = self.files.get(name)
        if found is None:
            raise MatrixError("Not found", "M_NOT_FOUND", status=404)
        body, content_type = found
        return Response(body, content_type=content_type, headers=_HEADERS)
