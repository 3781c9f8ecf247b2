"""The media plugin: the Matrix content repository and the simple API's uploads.

Matrix (authenticated media, v1.11):
- POST /_matrix/media/v3/upload; POST /_matrix/media/v1/create and
  PUT /_matrix/media/v3/upload/{serverName}/{mediaId} (asynchronous upload);
- GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}],
  /thumbnail/{serverName}/{mediaId}, /config, and /preview_url when enabled;
- the deprecated unauthenticated GET /_matrix/media/v3/download|thumbnail/...
  only with `legacy_unauthenticated_download`;
- the same legacy paths under r0 (POST upload, GET config and preview_url with a token;
  download and thumbnail as v3's), which r0.6.1 in /versions promises and older clients
  (Element Web 1.11) use.
Federation (v1.11): GET /_matrix/federation/v1/media/download/{mediaId} and
/thumbnail/{mediaId} serve our media to other servers as multipart/mixed; downloads of
another server's `mxc://` fetch it from there once and keep it (plugins/media/remote.py).
Simple API: POST /api/media/upload (multipart/form-data) -> {mediaId, url},
GET and DELETE /api/media/{mediaId}, GET /api/media/usage; an admin purge under
/_plugins/media/.

It imports only `homeserver.plugins`, the plugin interface. See docs/media.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from homeserver.plugins import (
    ApiRequest,
    BackupSource,
    ExportSink,
    MatrixError,
    PluginApi,
    PluginConfigError,
    Requester,
    Response,
    S3Location,
    StreamBody,
)
from plugins.media.admin import MediaAdminProvider
from plugins.media.config import MediaConfig, parse_media_config
from plugins.media.db import MediaRow
from plugins.media.ranges import RangeNotSatisfiable, requested_range
from plugins.media.repository import MediaRepository, not_found, over_limit_message, too_large
from plugins.media.sniff import SECURITY_HEADERS, content_disposition, content_type_header, download_headers
from plugins.media.storage import MediaStorage, make_storage

MEDIA_V3 = "/_matrix/media/v3"
MEDIA_R0 = "/_matrix/media/r0"
MEDIA_V1 = "/_matrix/media/v1"
CLIENT_MEDIA = "/_matrix/client/v1/media"
FEDERATION_MEDIA = "/_matrix/federation/v1/media"
ACCEPT_RANGES = ((b"Accept-Ranges", b"bytes"),)
# Room for the multipart envelope and small fields around the file part.
MULTIPART_OVERHEAD = 1024 * 1024


class MediaPlugin:
    NAME = "media"
    PATH_PREFIXES = (
        "/_matrix/media/",
        "/_matrix/client/v1/media/",
        "/api/media/",
        "/_matrix/federation/v1/media/",
    )
    SCHEMA_DIR = Path(__file__).parent / "sql"

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> MediaConfig:
        return parse_media_config(raw)

    @staticmethod
    def backup_sources(config: MediaConfig, data_dir: Path) -> list[BackupSource]:
        """Where the files live, for `homeserver backup` and `restore` (docs/operations.md)."""
        storage = config.storage
        if storage.provider == "s3":
            s3 = storage.s3
            location = S3Location(
                s3.bucket, s3.prefix, s3.endpoint_url, s3.region, s3.access_key_id, s3.secret_access_key
            )
            return [BackupSource("store", s3=location)]
        # .tmp holds uploads still being written: never part of a backup.
        return [
            BackupSource(
                "store", path=Path(storage.path) if storage.path else data_dir / "store", exclude=(".tmp",)
            )
        ]

    def __init__(self, config: MediaConfig, api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.storage: MediaStorage = make_storage(config.storage, api.data_dir)
        self.repo = MediaRepository(api, config, self.storage)

    async def start(self) -> None:
        try:
            await self.api.run_blocking(self.storage.check)
        except Exception as e:
            raise PluginConfigError(f"media storage ({self.storage.name}) is not usable: {e}") from None
        api = self.api
        limit = self.config.max_upload_size
        # One message for both: the multipart body may be larger than the file, but the
        # user knows (and is told) the configured limit.
        for legacy in (MEDIA_V3, MEDIA_R0):
            api.set_body_limit(f"{legacy}/upload", limit, message=over_limit_message(limit))
        api.set_body_limit("/api/media/upload", limit + MULTIPART_OVERHEAD, message=over_limit_message(limit))

        api.register_route("POST", f"{MEDIA_V1}/create", self.create)
        api.register_route("PUT", f"{MEDIA_V3}/upload/{{server_name}}/{{media_id}}", self.upload_to)
        api.register_route("GET", f"{CLIENT_MEDIA}/config", self.media_config)
        api.register_route("GET", f"{CLIENT_MEDIA}/download/{{server_name}}/{{media_id}}", self.download)
        api.register_route(
            "GET", f"{CLIENT_MEDIA}/download/{{server_name}}/{{media_id}}/{{file_name:.*}}", self.download
        )
        api.register_route("GET", f"{CLIENT_MEDIA}/thumbnail/{{server_name}}/{{media_id}}", self.thumbnail)
        if self.config.url_preview.enabled:
            api.register_route("GET", f"{CLIENT_MEDIA}/preview_url", self.preview_url)
        # The legacy paths: r0 is what r0.6.1 clients call, with the same rules as v3.
        for legacy in (MEDIA_V3, MEDIA_R0):
            self._register_legacy(legacy)

        api.register_federation_route(
            "GET", f"{FEDERATION_MEDIA}/download/{{media_id}}", self.federation_download
        )
        api.register_federation_route(
            "GET", f"{FEDERATION_MEDIA}/thumbnail/{{media_id}}", self.federation_thumbnail
        )

        api.register_route("POST", "/api/media/upload", self.simple_upload)
        api.register_route("GET", "/api/media/usage", self.simple_usage)
        api.register_route("GET", "/api/media/{media_id}", self.simple_get)
        api.register_route("DELETE", "/api/media/{media_id}", self.simple_delete)
        api.register_route("POST", "/_plugins/media/admin/purge", self.admin_purge)
        api.set_media_admin(MediaAdminProvider(self.repo))

        api.subscribe_events(self.repo.on_event)
        api.on_user_erased(self.erase_user)
        api.add_export_part(self.export_user)
        api.on_history_purged(self.repo.history_purged)
        api.schedule(self.config.cleanup_interval_ms / 1000, self.repo.cleanup)

    def _register_legacy(self, prefix: str) -> None:
        """The /_matrix/media/{v3,r0} routes: upload, config and preview_url need a token, as
        they always did; download and thumbnail are unauthenticated, so only served with
        `legacy_unauthenticated_download`."""
        api = self.api
        api.register_route("POST", f"{prefix}/upload", self.upload)
        api.register_route("GET", f"{prefix}/config", self.media_config)
        if self.config.url_preview.enabled:
            api.register_route("GET", f"{prefix}/preview_url", self.preview_url)
        if not self.config.legacy_unauthenticated_download:
            return
        for path in (
            f"{prefix}/download/{{server_name}}/{{media_id}}",
            f"{prefix}/download/{{server_name}}/{{media_id}}/{{file_name:.*}}",
        ):
            api.register_route("GET", path, self.legacy_download, require_auth=False)
        api.register_route(
            "GET",
            f"{prefix}/thumbnail/{{server_name}}/{{media_id}}",
            self.legacy_thumbnail,
            require_auth=False,
        )

    # Matrix: uploads -------------------------------------------------------------

    async def upload(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        self.api.check_rate_limit("media_upload", requester.user_id)
        row = await self.repo.ingest(
            requester.user_id,
            _body(request),
            request.getHeader(b"content-type"),
            request.query_param("filename"),
        )
        return {"content_uri": self.repo.mxc(row.media_id), "info": _matrix_info(row)}

    async def create(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        row = await self.repo.create_pending(requester.user_id)
        return {"content_uri": self.repo.mxc(row.media_id), "unused_expires_at": row.expires_ts}

    async def upload_to(
        self, request: ApiRequest, requester: Requester, server_name: str, media_id: str
    ) -> dict[str, Any]:
        if server_name != self.api.server_name:
            raise not_found()
        self.api.check_rate_limit("media_upload", requester.user_id)
        row = await self.repo.upload_pending(
            requester.user_id,
            media_id,
            _body(request),
            request.getHeader(b"content-type"),
            request.query_param("filename"),
        )
        return {"info": _matrix_info(row)}

    async def media_config(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        return {"m.upload.size": self.config.max_upload_size}

    # Matrix: downloads -------------------------------------------------------------

    async def download(
        self,
        request: ApiRequest,
        requester: Requester,
        server_name: str,
        media_id: str,
        file_name: str | None = None,
    ) -> Response:
        row = await self.repo.access(requester.user_id, server_name, media_id, _timeout_ms(request))
        return await self._serve(request, row, file_name or row.upload_name, "authenticated")

    async def legacy_download(
        self, request: ApiRequest, server_name: str, media_id: str, file_name: str | None = None
    ) -> Response:
        row = await self.repo.access(None, server_name, media_id, _timeout_ms(request))
        return await self._serve(request, row, file_name or row.upload_name, "legacy")

    async def _serve(self, request: ApiRequest, row: MediaRow, file_name: str | None, kind: str) -> Response:
        """The file, or the one byte range of it that the request asks for (plugins/media/ranges.py)."""
        assert row.storage_key is not None and row.content_type is not None
        try:
            # Range is defined for GET only (RFC 9110 §14.2): a HEAD gets the full headers.
            wanted = (
                requested_range(request.getHeader(b"range"), request.getHeader(b"if-range"), row.size)
                if request.method == b"GET"
                else None
            )
        except RangeNotSatisfiable:
            error = {
                "errcode": "M_INVALID_PARAM",
                "error": f"The range starts past the file's {row.size} bytes",
            }
            return Response(
                error, 416, headers=((b"Content-Range", b"bytes */%d" % row.size), *ACCEPT_RANGES)
            )
        headers = (*download_headers(row.content_type, file_name), *ACCEPT_RANGES)
        if wanted is None:
            reader = await self.repo.open(row.storage_key)
            body, status = StreamBody(self.repo.chunks(reader), row.size), 200
        else:
            reader = await self.repo.open_range(row.storage_key, wanted.start, wanted.length)
            body, status = StreamBody(self.repo.chunks(reader), wanted.length), 206
            headers = (*headers, (b"Content-Range", wanted.content_range()))
        self.repo.downloads.labels(kind).inc()
        return Response(body, status, content_type=content_type_header(row.content_type), headers=headers)

    # Federation: our media for other servers ----------------------------------------

    async def federation_download(self, request: ApiRequest, origin: str, media_id: str) -> Response:
        row = await self.repo.local_for_federation(media_id)
        assert row.storage_key is not None and row.content_type is not None
        reader = await self.repo.open(row.storage_key)
        self.repo.downloads.labels("federation").inc()
        envelope, head, tail = self.api.federation_media_envelope(
            content_type_header(row.content_type), content_disposition(row.content_type, row.upload_name)
        )
        return Response(
            StreamBody(_framed(head, self.repo.chunks(reader), tail), len(head) + row.size + len(tail)),
            content_type=envelope,
            headers=SECURITY_HEADERS,
        )

    async def federation_thumbnail(self, request: ApiRequest, origin: str, media_id: str) -> Response:
        width = _dimension(request, "width")
        height = _dimension(request, "height")
        method = request.query_param("method", "scale")
        if method not in ("crop", "scale"):
            raise MatrixError("'method' must be crop or scale", "M_INVALID_PARAM")
        row = await self.repo.local_for_federation(media_id)
        thumb, data = await self.repo.thumbnail(row, width, height, method)
        envelope, head, tail = self.api.federation_media_envelope(thumb.content_type.encode(), None)
        return Response(head + data + tail, content_type=envelope, headers=SECURITY_HEADERS)

    async def thumbnail(
        self, request: ApiRequest, requester: Requester, server_name: str, media_id: str
    ) -> Response:
        return await self._thumbnail(request, requester.user_id, server_name, media_id)

    async def legacy_thumbnail(self, request: ApiRequest, server_name: str, media_id: str) -> Response:
        return await self._thumbnail(request, None, server_name, media_id)

    async def _thumbnail(
        self, request: ApiRequest, user_id: str | None, server_name: str, media_id: str
    ) -> Response:
        width = _dimension(request, "width")
        height = _dimension(request, "height")
        method = request.query_param("method", "scale")
        if method not in ("crop", "scale"):
            raise MatrixError("'method' must be crop or scale", "M_INVALID_PARAM")
        row = await self.repo.access(user_id, server_name, media_id, _timeout_ms(request))
        thumb, data = await self.repo.thumbnail(row, width, height, method)
        ext = "png" if thumb.content_type == "image/png" else "jpg"
        return Response(
            data,
            content_type=thumb.content_type.encode(),
            headers=(
                (b"Content-Disposition", f'inline; filename="thumbnail.{ext}"'.encode()),
                (b"Cache-Control", b"private, max-age=86400"),
                *SECURITY_HEADERS,
            ),
        )

    async def preview_url(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        url = request.query_param("url")
        if not url:
            raise MatrixError("Missing 'url'", "M_MISSING_PARAM")
        return await self.repo.preview(url)

    # The simple API ------------------------------------------------------------------

    async def simple_upload(self, request: ApiRequest, requester: Requester) -> Response:
        self.api.check_rate_limit("media_upload", requester.user_id)
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        part = await self.api.run_blocking(
            _file_part, _body(request), content_type, self.config.max_upload_size
        )
        try:
            row = await self.repo.ingest(
                requester.user_id, part.file, part.content_type, part.filename, kind="simple"
            )
        finally:
            part.close()
        return Response(self._entity(row), 201)

    async def simple_get(self, request: ApiRequest, requester: Requester, media_id: str) -> dict[str, Any]:
        row = await self.repo.access(requester.user_id, self.api.server_name, media_id, 0)
        return self._entity(row)

    async def simple_delete(self, request: ApiRequest, requester: Requester, media_id: str) -> dict[str, Any]:
        row = await self.repo.get(media_id)
        if row is None:
            raise not_found()
        if row.user_id == requester.user_id:
            reason = "owner"
        elif await self.api.is_admin(requester.user_id):
            reason = "admin"
        else:
            raise MatrixError(
                "Only the uploader or an admin may delete this media", "M_FORBIDDEN", status=403
            )
        await self.repo.delete(media_id, reason)
        return {}

    async def simple_usage(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        count, used = await self.repo.usage(requester.user_id)
        return {"count": count, "usedBytes": used, "quotaBytes": self.config.user_quota or None}

    async def admin_purge(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        if not await self.api.is_admin(requester.user_id):
            raise MatrixError("Only admins may purge media", "M_FORBIDDEN", status=403)
        body = request.json_body()
        user_id, before_ts = body.get("userId"), body.get("beforeTs")
        if user_id is not None and not isinstance(user_id, str):
            raise MatrixError("'userId' must be a user id", "M_BAD_JSON")
        if before_ts is not None and (not isinstance(before_ts, int) or isinstance(before_ts, bool)):
            raise MatrixError("'beforeTs' must be a timestamp in milliseconds", "M_BAD_JSON")
        if user_id is None and before_ts is None:
            raise MatrixError("Give 'userId', 'beforeTs' or both", "M_MISSING_PARAM")
        return {"deleted": await self.repo.purge(user_id, before_ts)}

    # Users' data (docs/gdpr.md) -------------------------------------------------------

    async def erase_user(self, user_id: str) -> None:
        """An erased account: every upload of theirs goes, files, thumbnails and all."""
        deleted = await self.repo.purge(user_id, None, reason="erasure")
        self.api.log.info("erased {deleted} media of {user_id}", deleted=deleted, user_id=user_id)

    async def export_user(self, user_id: str, sink: ExportSink) -> None:
        """`media/index.json` (each upload's metadata) and `media/files/MEDIA_ID` (its bytes)."""
        rows = await self.repo.uploads_of(user_id)
        index = []
        for row in rows:
            entry = {**self._entity(row), "file": None}
            if row.storage_key is not None:
                entry["file"] = f"files/{row.media_id}"
                await sink.add_file(entry["file"], self.repo.opener(row.storage_key))
            index.append(entry)
        await sink.add_json("index.json", index)

    def _entity(self, row: MediaRow) -> dict[str, Any]:
        """The first spec's Media entity (mediaId, messageId, type, url, size) and metadata."""
        entity: dict[str, Any] = {
            "mediaId": row.media_id,
            "messageId": row.message_id,
            "type": row.content_type,
            # Absolute, as the first spec shows it: a client can fetch it as it is (with its token).
            "url": self.api.public_base_url + self.repo.download_path(row.media_id),
            "size": row.size,
            "contentUri": self.repo.mxc(row.media_id),
            "fileName": row.upload_name,
            "createdAt": row.created_ts,
        }
        for key, value in (
            ("width", row.width),
            ("height", row.height),
            ("durationMs", row.duration_ms),
            ("blurhash", row.blurhash),
        ):
            if value is not None:
                entity[key] = value
        return entity


async def _framed(head: bytes, chunks: Any, tail: bytes) -> AsyncIterator[bytes]:
    """The media's chunks inside the multipart envelope; the file is closed however the
    response ends."""
    try:
        yield head
        async for chunk in chunks:
            yield chunk
        yield tail
    finally:
        await chunks.aclose()


def _body(request: ApiRequest) -> IO[bytes]:
    content = request.content
    assert content is not None
    return content  # type: ignore[no-any-return]


def _matrix_info(row: MediaRow) -> dict[str, Any]:
    """Metadata in the shape of an m.image/m.video `info` block."""
    info: dict[str, Any] = {"mimetype": row.content_type, "size": row.size}
    if row.width is not None and row.height is not None:
        info["w"], info["h"] = row.width, row.height
    if row.duration_ms is not None:
        info["duration"] = row.duration_ms
    if row.blurhash is not None:
        info["xyz.amorgan.blurhash"] = row.blurhash
    return info


def _timeout_ms(request: ApiRequest) -> int:
    raw = request.query_param("timeout_ms", "20000") or "20000"
    try:
        return max(0, int(raw))
    except ValueError:
        raise MatrixError("'timeout_ms' must be an integer", "M_INVALID_PARAM") from None


def _dimension(request: ApiRequest, name: str) -> int:
    raw = request.query_param(name)
    if raw is None:
        raise MatrixError(f"Missing '{name}'", "M_MISSING_PARAM")
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(f"'{name}' must be an integer", "M_INVALID_PARAM") from None
    if value < 1 or value > 10_000:
        raise MatrixError(f"'{name}' must be between 1 and 10000", "M_INVALID_PARAM")
    return value


def _file_part(body: IO[bytes], content_type: str, max_size: int) -> Any:
    """The `file` part of a multipart/form-data body, spooled to a temporary file
    (parts over 64 kB go to disk); M_TOO_LARGE if it is over `max_size`."""
    import multipart

    kind, options = multipart.parse_options_header(content_type)
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise MatrixError("Expected a multipart/form-data body with a 'file' part", "M_INVALID_PARAM")
    size = body.seek(0, 2)
    body.seek(0)
    parser = multipart.MultipartParser(
        body,
        boundary,
        content_length=size,
        part_limit=16,
        partsize_limit=max_size,
        spool_limit=64 * 1024,
        memory_limit=1024 * 1024,
        disk_limit=max_size,
    )
    found = None
    try:
        for part in parser:
            if found is None and part.name == "file":
                found = part
            else:
                part.close()
    except multipart.ParserLimitReached:
        if found is not None:
            found.close()
        raise too_large(over_limit_message(max_size)) from None
    except multipart.MultipartError as e:
        if found is not None:
            found.close()
        raise MatrixError(f"Malformed multipart body: {e}", "M_INVALID_PARAM") from None
    if found is None:
        raise MatrixError("The multipart body has no 'file' part", "M_MISSING_PARAM")
    return found
