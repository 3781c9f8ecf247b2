"""Remote media over federation (spec v1.11, "Content repository": authenticated media):
fetch another server's media for our users, and the multipart/mixed answer both ways.

The media plugin caches what this fetches (plugins/media/remote.py) and serves its own
media to other servers in the same format (`multipart_body` here is its writer).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from homeserver.core.federation.client import FederationClient, ResponseTooLarge
from homeserver.core.federation.directory_queries import checked_server
from homeserver.errors import InvalidParam, MatrixError, NotFound

# Media ids are opaque to other servers but travel in our paths and storage keys: only
# the characters the spec's examples and every server we know use (no `/`, `.`, `%`).
MEDIA_ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")
# How long a remote server may make us wait for media still being uploaded there.
REMOTE_TIMEOUT_MS = 20_000
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))', re.IGNORECASE)


@dataclass(frozen=True)
class FetchedMedia:
    content_type: str | None  # as the remote claimed it; the caller sanitises it
    content_disposition: str | None
    data: bytes


def check_media_id(media_id: str) -> str:
    """`media_id` if it is safe to use in a path and a storage key, else 400."""
    if not MEDIA_ID.fullmatch(media_id):
        raise InvalidParam("Invalid media id")
    return media_id


def multipart_boundary(content_type: str | None) -> str | None:
    if content_type is None or not content_type.lower().startswith("multipart/mixed"):
        return None
    m = _BOUNDARY.search(content_type)
    return (m.group(1) or m.group(2)) if m else None


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/mixed body (RFC 2046): [(headers, bytes)]; headers keyed
    in lower case. ValueError when it is not one."""
    delimiter = b"--" + boundary.encode("ascii")
    start = body.find(delimiter)
    if start == -1:
        raise ValueError("no boundary in the body")
    parts: list[tuple[dict[str, str], bytes]] = []
    pos = start + len(delimiter)
    while True:
        if body[pos : pos + 2] == b"--":
            return parts
        if body[pos : pos + 2] != b"\r\n":
            raise ValueError("a boundary line does not end")
        end = body.find(b"\r\n" + delimiter, pos + 2)
        if end == -1:
            raise ValueError("a part has no closing boundary")
        head, _, content = body[pos + 2 : end].partition(b"\r\n\r\n")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            if not line:
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError("a header line without a colon")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        parts.append((headers, content))
        if len(parts) > 10:
            raise ValueError("too many parts")
        pos = end + 2 + len(delimiter)


def multipart_body(boundary: str, content_type: bytes, disposition: bytes | None) -> tuple[bytes, bytes]:
    """What goes before and after the media bytes in our federation answer (the spec's
    two parts: `{}` as JSON metadata, then the media)."""
    b = boundary.encode("ascii")
    head = b"--" + b + b"\r\nContent-Type: application/json\r\n\r\n{}\r\n--" + b + b"\r\n"
    head += b"Content-Type: " + content_type + b"\r\n"
    if disposition is not None:
        head += b"Content-Disposition: " + disposition + b"\r\n"
    return head + b"\r\n", b"\r\n--" + b + b"--\r\n"


class RemoteMediaFetcher:
    def __init__(self, client: FederationClient) -> None:
        self.client = client

    async def fetch(
        self, server_name: str, media_id: str, max_bytes: int, thumbnail: dict[str, Any] | None = None
    ) -> FetchedMedia:
        """`mxc://server_name/media_id` (or its thumbnail) from its server: the federation
        media route, else (a server from before v1.11) the legacy unauthenticated one.

        404 M_NOT_FOUND when the server has no such media; 502 when it cannot be reached or
        answers nonsense (504 on a timeout); 413 M_TOO_LARGE past `max_bytes`."""
        checked_server(server_name)
        check_media_id(media_id)
        kind = "thumbnail" if thumbnail is not None else "download"
        # The envelope around the bytes is small: allow a little over the media limit.
        limit = max_bytes + 64 * 1024
        query = {"timeout_ms": str(REMOTE_TIMEOUT_MS), **(thumbnail or {})}
        status, content_type, body = await self._get(
            server_name, f"/_matrix/federation/v1/media/{kind}/{media_id}", query, limit
        )
        if status == 200:
            unwrapped = self._unwrap(server_name, content_type, body, max_bytes)
            if isinstance(unwrapped, str):
                return await self._follow(server_name, unwrapped, max_bytes)
            return unwrapped
        if _unrecognised(status, body):
            legacy_query = {**query, "allow_remote": "false", "allow_redirect": "false"}
            status, content_type, body = await self._get(
                server_name, f"/_matrix/media/v3/{kind}/{server_name}/{media_id}", legacy_query, limit
            )
            if status == 200:
                if len(body) > max_bytes:
                    raise _too_large()
                return FetchedMedia(content_type, None, body)
        if status == 404:
            raise NotFound("The remote server has no such media")
        raise MatrixError(f"{server_name} answered {status} for the media", status=502)

    async def _get(
        self, server_name: str, path: str, query: dict[str, Any], limit: int
    ) -> tuple[int, str | None, bytes]:
        try:
            return await self.client.get_raw(server_name, path, query, limit)
        except ResponseTooLarge:
            raise _too_large() from None

    async def _follow(self, server_name: str, location: str, max_bytes: int) -> FetchedMedia:
        """The media from where the remote's answer sent us (the spec lets it name a URL,
        a CDN's, instead of sending the bytes)."""
        if not location.startswith(("https://", "http://")) or len(location) > 2048 or not location.isascii():
            raise MatrixError(f"{server_name} sent the media to an unusable location", status=502)
        try:
            status, content_type, disposition, data = await self.client.get_url(location, max_bytes)
        except ResponseTooLarge:
            raise _too_large() from None
        if status != 200:
            raise MatrixError(f"{server_name}'s media location answered {status}", status=502)
        return FetchedMedia(content_type, disposition, data)

    @staticmethod
    def _unwrap(
        server_name: str, content_type: str | None, body: bytes, max_bytes: int
    ) -> FetchedMedia | str:
        """The media in a federation answer, or the URL it says the media is at."""
        boundary = multipart_boundary(content_type)
        if boundary is None:
            raise MatrixError(f"{server_name} answered the media request without multipart", status=502)
        try:
            parts = parse_multipart(body, boundary)
        except ValueError as e:
            raise MatrixError(f"{server_name}'s media answer is malformed: {e}", status=502) from None
        if len(parts) != 2:
            raise MatrixError(f"{server_name}'s media answer has {len(parts)} parts, not 2", status=502)
        headers, data = parts[1]
        if "location" in headers:
            return headers["location"].strip()
        if len(data) > max_bytes:
            raise _too_large()
        return FetchedMedia(headers.get("content-type"), headers.get("content-disposition"), data)


def _too_large() -> MatrixError:
    return MatrixError("The remote media is too large", "M_TOO_LARGE", status=413)


def _unrecognised(status: int, body: bytes) -> bool:
    """Did the remote not know the federation media route (as Synapse reads it)?"""
    if status in (400, 405, 501):
        return True
    if status != 404:
        return False
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the parser's depth
        return False
    return isinstance(answer, dict) and answer.get("errcode") == "M_UNRECOGNIZED"
