"""The media repository: storing uploads, deciding who may read them, thumbnails,
linking media to the messages that share them, deletion and retention.

The HTTP handlers (`plugins/media/__init__.py`) parse requests and call this;
blocking work (storage, Pillow, ffmpeg, previews) runs on the plugin's worker threads
(`api.run_blocking`).
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import IO, Any

from twisted.internet.defer import Deferred, DeferredList

from homeserver.plugins import ChunksOnThreads, MatrixError, PluginApi, StorageFull
from plugins.media import db
from plugins.media.config import MediaConfig, ThumbnailSize
from plugins.media.db import MediaRow, ThumbnailRow
from plugins.media.images import (
    THUMBNAIL_SOURCES,
    VIDEO_TYPES,
    MediaInfo,
    NotAnImage,
    Thumbnail,
    TooManyPixels,
    have_ffmpeg,
    image_info,
    set_pixel_limit,
    thumbnail,
    video_info,
)
from plugins.media.preview import PreviewError, fetch_preview
from plugins.media.remote import RemoteMediaCache, is_remote_copy
from plugins.media.sniff import OCTET_STREAM, clean_filename, normalize_type, served_type, sniff
from plugins.media.storage import CHUNK, MediaStorage, Reader

_MEDIA_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,255}")
# Longest a download may wait for an asynchronous upload to arrive.
MAX_WAIT_MS = 60_000
_PREVIEW_CACHE_SIZE = 1000
_CLEANUP_BATCH = 500


def not_found() -> MatrixError:
    return MatrixError("Media not found", "M_NOT_FOUND", status=404)


def too_large(message: str) -> MatrixError:
    return MatrixError(message, "M_TOO_LARGE", status=413)


def over_limit_message(max_bytes: int) -> str:
    """What an upload over the configured limit is told: the limit in bytes and in binary
    units as the config writes it ("52428800 bytes (50 MiB)")."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if max_bytes >= unit:
            return f"Upload exceeds the limit of {max_bytes} bytes ({round(max_bytes / unit, 1):g} {name})"
    return f"Upload exceeds the limit of {max_bytes} bytes"


def choose_size(sizes: Iterable[ThumbnailSize], width: int, height: int, method: str) -> ThumbnailSize:
    """The configured size to serve for a request: the smallest of the requested method
    that is at least as large as asked, else the largest of that method."""
    sizes = list(sizes)
    same = [s for s in sizes if s.method == method] or sizes
    big_enough = [s for s in same if s.width >= width and s.height >= height]
    if big_enough:
        return min(big_enough, key=lambda s: (s.width * s.height, s.width))
    return max(same, key=lambda s: (s.width * s.height, s.width))


def referenced_media(content: Any, server_name: str, limit: int = 100) -> set[str]:
    """The ids of this server's media that an event's content points at (mxc://SERVER/ID)."""
    prefix = f"mxc://{server_name}/"
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(content, 0)]
    seen = 0
    while stack and len(found) < limit and seen < 10_000:
        value, depth = stack.pop()
        seen += 1
        if isinstance(value, str):
            if value.startswith(prefix):
                media_id = value[len(prefix) :]
                if _MEDIA_ID_RE.fullmatch(media_id):
                    found.add(media_id)
        elif depth < 10 and isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif depth < 10 and isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return found


def original_key(media_id: str) -> str:
    return f"originals/{media_id[:2]}/{media_id[2:4]}/{media_id}"


def _size_and_head(src: IO[bytes]) -> tuple[int, bytes]:
    size = src.seek(0, 2)
    src.seek(0)
    head = src.read(8192)
    src.seek(0)
    return size, head


class MediaRepository:
    def __init__(self, api: PluginApi, config: MediaConfig, storage: MediaStorage) -> None:
        self.api = api
        self.config = config
        self.storage = storage
        self.server_name = api.server_name
        self.reactor: Any = api.reactor
        self.ffmpeg = config.video_posters and have_ffmpeg()
        set_pixel_limit(config.max_image_pixels)
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self._linking: set[Deferred[None]] = set()
        self._making: dict[str, list[Deferred[tuple[ThumbnailRow, bytes]]]] = {}
        self._previews: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self.uploads = api.counter("uploads", "Media uploads stored", ("kind",))
        self.upload_bytes = api.counter("upload_bytes", "Bytes of media stored")
        self.downloads = api.counter("downloads", "Media downloads served", ("kind",))
        self.thumbnails_made = api.counter("thumbnails_made", "Thumbnails generated")
        self.deleted = api.counter("deleted", "Media deleted", ("reason",))
        self.previews = api.counter("previews", "URL preview requests", ("result",))
        self.waiting = api.gauge("downloads_waiting", "Downloads waiting for an asynchronous upload")
        self.remote = RemoteMediaCache(api, self)

    # Facts ------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.server_name}/{media_id}"

    def download_path(self, media_id: str) -> str:
        return f"/_matrix/client/v1/media/download/{self.server_name}/{media_id}"

    async def get(self, media_id: str) -> MediaRow | None:
        if not _MEDIA_ID_RE.fullmatch(media_id):
            return None
        row: MediaRow | None = await self.api.run_db("get_media", db.get_media_txn, media_id)
        return row

    # Uploads --------------------------------------------------------------------------

    async def check_quota(self, user_id: str, size: int) -> None:
        if not self.config.user_quota:
            return
        used = await self.api.run_db("used_bytes", db.used_bytes_txn, user_id)
        if used + size > self.config.user_quota:
            raise too_large(
                f"Upload would exceed your storage quota ({used} of {self.config.user_quota} bytes used)"
            )

    async def ingest(
        self,
        user_id: str,
        src: IO[bytes],
        claimed_type: str | bytes | None,
        filename: str | None,
        *,
        pending: MediaRow | None = None,
        kind: str = "matrix",
    ) -> MediaRow:
        """Store an upload (from a spooled, seekable file) and record it.

        All or nothing: if anything fails (quota, storage, database), the stored
        objects are removed again.
        """
        size, head = await self.api.run_blocking(_size_and_head, src)
        if size > self.config.max_upload_size:
            raise too_large(over_limit_message(self.config.max_upload_size))
        await self.check_quota(user_id, size)
        content_type = served_type(sniff(head), normalize_type(claimed_type))
        media_id = pending.media_id if pending is not None else secrets.token_urlsafe(18)
        info = await self._analyse(src, content_type)
        key = original_key(media_id)
        poster_key = f"posters/{media_id}" if info.poster else None
        row = MediaRow(
            media_id=media_id,
            user_id=user_id,
            created_ts=pending.created_ts if pending is not None else self.now_ms(),
            state="ready",
            expires_ts=None,
            content_type=content_type,
            upload_name=clean_filename(filename),
            size=size,
            storage_key=key,
            width=info.width,
            height=info.height,
            duration_ms=info.duration_ms,
            blurhash=info.blurhash,
            poster_key=poster_key,
            message_id=None,
        )
        try:
            await self.api.run_blocking(self.storage.put, key, src, content_type)
            if poster_key and info.poster:
                await self.api.run_blocking(self.storage.put, poster_key, BytesIO(info.poster), "image/jpeg")
            recorded = await self.api.run_db(
                "finish_upload", db.finish_upload_txn, row, self.config.user_quota, pending is not None
            )
            if not recorded:
                raise too_large("Upload would exceed your storage quota")
        except BaseException:
            await self._remove_objects([key, poster_key])
            raise
        self.uploads.labels(kind).inc()
        self.upload_bytes.inc(size)
        self._wake(media_id)
        return row

    async def _analyse(self, src: IO[bytes], content_type: str) -> MediaInfo:
        """Dimensions, blurhash and poster frame; an unreadable file just gets none."""
        try:
            if content_type in THUMBNAIL_SOURCES:
                info: MediaInfo = await self.api.run_blocking(image_info, src, self.config.max_image_pixels)
                return info
            if content_type in VIDEO_TYPES and self.ffmpeg:
                info = await self.api.run_blocking(video_info, src, self.config.max_image_pixels)
                return info
        except (TooManyPixels, NotAnImage):
            pass
        except Exception:
            self.api.log.failure("could not analyse an upload")
        return MediaInfo()

    async def create_pending(self, user_id: str) -> MediaRow:
        now = self.now_ms()
        pending = await self.api.run_db("count_pending", db.count_pending_txn, user_id, now)
        if pending >= self.config.max_pending_uploads:
            raise MatrixError(
                "Too many asynchronous uploads waiting for their content",
                "M_LIMIT_EXCEEDED",
                status=429,
                retry_after_ms=60_000,
            )
        media_id = secrets.token_urlsafe(18)
        expires = now + self.config.unused_expiry_ms
        await self.api.run_db("create_pending", db.create_pending_txn, media_id, user_id, now, expires)
        row = await self.get(media_id)
        assert row is not None
        return row

    async def upload_pending(
        self, user_id: str, media_id: str, src: IO[bytes], claimed_type: bytes | None, filename: str | None
    ) -> MediaRow:
        row = await self.get(media_id)
        if row is None:
            raise not_found()
        if row.user_id != user_id:
            raise MatrixError("Only the creator of this media id may upload to it", "M_FORBIDDEN", status=403)
        if row.state != "pending":
            raise MatrixError("Media already uploaded", "M_CANNOT_OVERWRITE_MEDIA", status=409)
        if row.expires_ts is not None and row.expires_ts <= self.now_ms():
            raise not_found()
        if not await self.api.run_db("claim_pending", db.claim_pending_txn, media_id, self.now_ms()):
            raise MatrixError("Media already uploaded", "M_CANNOT_OVERWRITE_MEDIA", status=409)
        try:
            return await self.ingest(user_id, src, claimed_type, filename, pending=row, kind="async")
        except BaseException:
            await self.api.run_db("release_claim", db.release_claim_txn, media_id)
            raise

    def _wake(self, media_id: str) -> None:
        for waiter in self._waiters.pop(media_id, []):
            if not waiter.called:
                waiter.callback(None)

    async def _wait_ready(self, media_id: str, timeout_ms: int) -> MediaRow | None:
        """The row once its content has arrived, or as it is after `timeout_ms`."""
        waiter: Deferred[None] = Deferred()
        self._waiters.setdefault(media_id, []).append(waiter)

        def give_up() -> None:
            if not waiter.called:
                waiter.callback(None)

        call = self.reactor.callLater(max(0, timeout_ms) / 1000, give_up)
        try:
            # It may have arrived while we were not yet listening.
            row = await self.get(media_id)
            if row is None or row.state == "ready":
                return row
            self.waiting.inc()
            try:
                await waiter
            finally:
                self.waiting.dec()
            return await self.get(media_id)
        finally:
            if call.active():
                call.cancel()
            waiters = self._waiters.get(media_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[media_id]

    # Access --------------------------------------------------------------------------

    async def may_read(self, user_id: str, row: MediaRow) -> bool:
        """The uploader, members of a room where it was shared, and admins may read media.

        Encrypted attachments are opaque bytes whose room the server cannot see (the
        event is encrypted too): opaque media may also be read by anyone who shares a
        room with the uploader. Their content is useless without the key in the event.
        """
        if not self.config.restrict_to_rooms or user_id == row.user_id:
            return True
        rooms: set[str] = await self.api.run_db("share_rooms", db.share_rooms_txn, row.media_id)
        for room_id in rooms:
            if await self.api.room_membership(room_id, user_id) == "join":
                return True
        if row.content_type == OCTET_STREAM:
            mine = await self.api.joined_rooms(user_id)
            if mine and mine & await self.api.joined_rooms(row.user_id):
                return True
        return await self.api.is_admin(user_id)

    async def access(self, user_id: str | None, server_name: str, media_id: str, timeout_ms: int) -> MediaRow:
        """The media row if `user_id` may read it (None: unauthenticated legacy access),
        waiting up to `timeout_ms` for an asynchronous upload to arrive."""
        if server_name != self.server_name:
            # Another server's media: any of our users may read it, as on its own server
            # (which does its own checks, if any, on its own users only).
            if not _MEDIA_ID_RE.fullmatch(media_id):
                raise not_found()
            return await self.remote.get(server_name, media_id)
        row = await self.get(media_id)
        if row is None or row.quarantined_by is not None or is_remote_copy(row):
            raise not_found()
        if user_id is not None and not await self.may_read(user_id, row):
            # A message sharing it may have just been committed: let its link land first.
            if self._linking:
                await DeferredList(list(self._linking), consumeErrors=True)
            if not await self.may_read(user_id, row):
                raise MatrixError("You may not access this media", "M_FORBIDDEN", status=403)
        if row.state != "ready":
            row = await self._wait_ready(media_id, min(timeout_ms, MAX_WAIT_MS))
            if row is None:
                raise not_found()
            if row.state != "ready":
                raise MatrixError("Content has not yet been uploaded", "M_NOT_YET_UPLOADED", status=504)
        return row

    async def local_for_federation(self, media_id: str) -> MediaRow:
        """Our own media for another server (federation download): ready, not
        quarantined, never a copy of a third server's media. Other servers fetch on
        behalf of their users, whom we cannot check: `restrict_to_rooms` does not apply
        (docs/federation.md)."""
        row = await self.get(media_id)
        if row is None or row.quarantined_by is not None or is_remote_copy(row) or row.state != "ready":
            raise not_found()
        return row

    # Downloads -----------------------------------------------------------------------

    async def open(self, key: str) -> Reader:
        try:
            reader: Reader = await self.api.run_blocking(self.storage.open, key)
        except FileNotFoundError:
            raise not_found() from None
        return reader

    async def open_range(self, key: str, start: int, length: int) -> Reader:
        """A reader over `length` bytes from `start`: a file seek, an S3 ranged GET."""
        try:
            reader: Reader = await self.api.run_blocking(self.storage.open_range, key, start, length)
        except FileNotFoundError:
            raise not_found() from None
        return reader

    def chunks(self, reader: Reader) -> ChunksOnThreads:
        return ChunksOnThreads(self.api.run_blocking, reader, CHUNK)

    async def read_all(self, key: str) -> bytes:
        reader = await self.open(key)

        def read() -> bytes:
            try:
                return reader.read()
            finally:
                reader.close()

        data: bytes = await self.api.run_blocking(read)
        return data

    # Thumbnails ----------------------------------------------------------------------

    async def thumbnail(
        self, row: MediaRow, width: int, height: int, method: str
    ) -> tuple[ThumbnailRow, bytes]:
        size = choose_size(self.config.thumbnail_sizes, width, height, method)
        found: ThumbnailRow | None = await self.api.run_db(
            "get_thumbnail", db.get_thumbnail_txn, row.media_id, size.width, size.height, size.method
        )
        if found is not None:
            try:
                return found, await self.read_all(found.storage_key)
            except MatrixError:
                pass  # the object went missing: make it again
        flight = f"{row.media_id}/{size.width}x{size.height}-{size.method}"
        others = self._making.get(flight)
        if others is not None:
            # The same thumbnail is being made for another request: wait for that one.
            waiter: Deferred[tuple[ThumbnailRow, bytes]] = Deferred()
            others.append(waiter)
            return await waiter
        self._making[flight] = others = []
        try:
            made = await self._make_thumbnail(row, size)
        except Exception as e:
            for w in others:
                w.errback(e)
            raise
        else:
            for w in others:
                w.callback(made)
        finally:
            del self._making[flight]
        return made

    async def _make_thumbnail(self, row: MediaRow, size: ThumbnailSize) -> tuple[ThumbnailRow, bytes]:
        """Render a thumbnail and keep it; on a full disk it is served without being kept
        (a download must not fail for want of space), and made again next time."""
        if row.content_type in THUMBNAIL_SOURCES and row.storage_key:
            source = row.storage_key
        elif row.poster_key:
            source = row.poster_key
        else:
            raise MatrixError("Cannot generate thumbnails for the requested content", "M_UNKNOWN", status=400)
        if row.width and row.height and row.width * row.height > self.config.max_image_pixels:
            raise too_large("Content is too large to thumbnail")
        try:
            thumb: Thumbnail = await self.api.run_blocking(self._render, source, size)
        except TooManyPixels:
            raise too_large("Content is too large to thumbnail") from None
        except NotAnImage:
            raise MatrixError(
                "Cannot generate thumbnails for the requested content", "M_UNKNOWN", status=400
            ) from None
        except FileNotFoundError:
            raise not_found() from None
        except OSError:
            # Pillow's "broken data stream" and friends: a damaged image (e.g. another
            # server's) is the content's fault, not the server's.
            raise MatrixError(
                "Cannot generate thumbnails for the requested content", "M_UNKNOWN", status=400
            ) from None
        key = f"thumbnails/{row.media_id}/{size.width}x{size.height}-{size.method}"
        made = ThumbnailRow(
            row.media_id, size.width, size.height, size.method, thumb.content_type, len(thumb.data), key
        )
        try:
            await self.api.run_blocking(self.storage.put, key, BytesIO(thumb.data), thumb.content_type)
        except StorageFull:
            return made, thumb.data
        try:
            added = await self.api.run_db("add_thumbnail", db.add_thumbnail_txn, made)
        except StorageFull:
            await self._remove_objects([key])
            return made, thumb.data
        if not added and await self.get(row.media_id) is None:
            # Deleted while we worked: leave nothing behind.
            await self._remove_objects([key])
            raise not_found()
        self.thumbnails_made.inc()
        return made, thumb.data

    def _render(self, key: str, size: ThumbnailSize) -> Thumbnail:
        path = self.storage.local_path(key)
        if path is not None:
            with open(path, "rb") as f:
                return thumbnail(f, size, self.config.max_image_pixels)
        reader = self.storage.open(key)
        try:
            with tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024) as spool:
                while chunk := reader.read(CHUNK):
                    spool.write(chunk)
                return thumbnail(spool, size, self.config.max_image_pixels)  # type: ignore[arg-type]
        finally:
            reader.close()

    # Links to messages -------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> Deferred[None] | None:
        """Record the rooms (and first message) where a committed event shares our media."""
        content = event.get("content")
        room_id, event_id, sender = event.get("room_id"), event.get("event_id"), event.get("sender")
        if not isinstance(content, dict) or not isinstance(room_id, str) or not isinstance(event_id, str):
            return None
        media_ids = referenced_media(content, self.server_name)
        if not media_ids or not isinstance(sender, str):
            return None
        d = Deferred.fromCoroutine(self._link(media_ids, event_id, room_id, sender))
        if not d.called:
            self._linking.add(d)

            def done(result: object) -> object:
                self._linking.discard(d)
                return result

            d.addBoth(done)
        return d

    async def _link(self, media_ids: set[str], event_id: str, room_id: str, sender: str) -> None:
        for media_id in sorted(media_ids):
            row = await self.get(media_id)
            # Only someone who may read the media can share it further (no laundering
            # someone else's private media into a room of one's own).
            if row is None or not (row.user_id == sender or await self.may_read(sender, row)):
                continue
            await self.api.run_db("add_ref", db.add_ref_txn, media_id, event_id, room_id)

    # Deletion and retention --------------------------------------------------------

    async def delete(self, media_id: str, reason: str) -> bool:
        keys: list[str] | None = await self.api.run_db("delete_media", db.delete_media_txn, media_id)
        if keys is None:
            return False
        await self._remove_objects(keys)
        self.deleted.labels(reason).inc()
        self._wake(media_id)
        return True

    async def history_purged(self, room_id: str, event_ids: list[str]) -> None:
        """Retention deleted these events: delete the media only they shared. Deleting first
        and dropping the links last, so that a crash in between finds the same media again."""
        orphans: list[str] = await self.api.run_db("shared_only_by", db.shared_only_by_txn, event_ids)
        for media_id in orphans:
            await self.delete(media_id, "room_retention")
        await self.api.run_db("drop_refs", db.drop_refs_txn, event_ids)

    async def _remove_objects(self, keys: Iterable[str | None]) -> None:
        for key in keys:
            if not key:
                continue
            try:
                await self.api.run_blocking(self.storage.delete, key)
            except Exception:
                self.api.log.failure(f"could not delete media object {key}")

    async def cleanup(self) -> None:
        """The background job: lapsed asynchronous uploads, then unshared old uploads."""
        now = self.now_ms()
        for media_id in await self.api.run_db("expired_pending", db.expired_pending_txn, now, _CLEANUP_BATCH):
            await self.delete(media_id, "unused_expired")
        max_age = self.config.unreferenced_max_age_ms
        if max_age:
            old = await self.api.run_db(
                "unreferenced", db.unreferenced_before_txn, now - max_age, _CLEANUP_BATCH, OCTET_STREAM
            )
            for media_id in old:
                await self.delete(media_id, "retention")

    async def uploads_of(self, user_id: str) -> list[MediaRow]:
        """The user's finished uploads, oldest first."""
        rows: list[MediaRow] = await self.api.run_db("uploads_of", db.uploads_of_txn, user_id)
        return rows

    def opener(self, key: str) -> Callable[[], Reader]:
        """A callable (for a worker thread) that opens the stored object for reading."""
        return lambda: self.storage.open(key)

    async def purge(self, user_id: str | None, before_ts: int | None, reason: str = "admin_purge") -> int:
        if user_id is not None:
            ids = await self.api.run_db("media_of_user", db.media_of_user_txn, user_id, before_ts)
        else:
            assert before_ts is not None
            ids = await self.api.run_db("media_before", db.media_before_txn, before_ts)
        count = 0
        for media_id in ids:
            count += await self.delete(media_id, reason)
        return count

    async def usage(self, user_id: str) -> tuple[int, int]:
        result: tuple[int, int] = await self.api.run_db("usage", db.usage_txn, user_id)
        return result

    # URL previews ------------------------------------------------------------------

    async def preview(self, url: str) -> dict[str, Any]:
        now = self.reactor.seconds()
        cached = self._previews.get(url)
        if cached is not None and now - cached[0] < self.config.url_preview.cache_ms / 1000:
            self.previews.labels("cached").inc()
            return dict(cached[1])
        try:
            result: dict[str, Any] = await self.api.run_blocking(fetch_preview, url, self.config.url_preview)
        except PreviewError as e:
            self.previews.labels("refused" if e.status == 403 else "failed").inc()
            raise MatrixError(str(e), e.errcode, status=e.status) from None
        self.previews.labels("fetched").inc()
        self._previews[url] = (now, result)
        while len(self._previews) > _PREVIEW_CACHE_SIZE:
            self._previews.popitem(last=False)
        return dict(result)
