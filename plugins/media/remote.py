"""Other servers' media, fetched over federation for our users and kept in our store.

A remote `mxc://server/id` is kept as a `media_files` row of its own, under an id made
from the server and the remote id (`remote_<hash>`), owned by `remote:<server>` (never a
user id, so no quota, export or erasure counts it). It is then read, thumbnailed and
cleaned up like local media; deleting it only means the next download fetches it again.
One fetch per remote media at a time: every download asking meanwhile waits for it.
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from homeserver.plugins import MatrixError, PluginApi
from plugins.media import db
from plugins.media.db import MediaRow
from plugins.media.sniff import clean_filename, normalize_type, served_type, sniff

if TYPE_CHECKING:
    from plugins.media.repository import MediaRepository

REMOTE_OWNER_PREFIX = "remote:"
REMOTE_ID_PREFIX = "remote_"


def cache_id(server_name: str, media_id: str) -> str:
    """Our id for another server's media: stable, never one of our upload ids (those are
    24 characters of token_urlsafe, with no `remote_` prefix)."""
    digest = hashlib.sha256(f"{server_name}/{media_id}".encode()).hexdigest()[:40]
    return REMOTE_ID_PREFIX + digest


def is_remote_copy(row: MediaRow) -> bool:
    return row.user_id.startswith(REMOTE_OWNER_PREFIX)


def _filename(disposition: str | None) -> str | None:
    """The file name of a Content-Disposition (`filename="x"` or `filename*=utf-8''x`)."""
    if not disposition:
        return None
    from urllib.parse import unquote

    for piece in disposition.split(";"):
        key, _, value = piece.strip().partition("=")
        key = key.strip().lower()
        if key == "filename*" and "''" in value:
            return unquote(value.split("''", 1)[1])
        if key == "filename":
            return value.strip().strip('"')
    return None


class RemoteMediaCache:
    def __init__(self, api: PluginApi, repo: MediaRepository) -> None:
        self.api = api
        self.repo = repo
        self._fetching: dict[str, list[Deferred[MediaRow]]] = {}
        self.fetches = api.counter("remote_fetches", "Remote media fetched over federation", ("result",))

    async def get(self, server_name: str, media_id: str) -> MediaRow:
        """The cached copy of `mxc://server_name/media_id`, fetched first if we have none."""
        local_id = cache_id(server_name, media_id)
        row = await self.repo.get(local_id)
        if row is not None and row.state == "ready":
            if row.quarantined_by is not None:
                raise MatrixError("Not found", "M_NOT_FOUND", status=404)
            return row
        waiting = self._fetching.get(local_id)
        if waiting is not None:
            waiter: Deferred[MediaRow] = Deferred()
            waiting.append(waiter)
            return await waiter
        self._fetching[local_id] = waiting = []
        try:
            row = await self._fetch(server_name, media_id, local_id)
        except Exception as e:
            self.fetches.labels(getattr(e, "errcode", "error")).inc()
            for w in waiting:
                w.errback(e)
            raise
        else:
            self.fetches.labels("ok").inc()
            for w in waiting:
                w.callback(row)
        finally:
            del self._fetching[local_id]
        return row

    async def _fetch(self, server_name: str, media_id: str, local_id: str) -> MediaRow:
        limit = self.repo.config.max_upload_size
        remote = await self.api.fetch_remote_media(server_name, media_id, limit)
        # The remote's type is a claim like any uploader's: sniffed and sanitised the same
        # way, so a remote cannot make us serve HTML or SVG inline.
        content_type = served_type(sniff(remote.data[:4096]), normalize_type(remote.content_type))
        src = BytesIO(remote.data)
        info = await self.repo._analyse(src, content_type)
        key = f"remote/{local_id}"
        row = MediaRow(
            media_id=local_id,
            user_id=REMOTE_OWNER_PREFIX + server_name,
            created_ts=self.repo.now_ms(),
            state="ready",
            expires_ts=None,
            content_type=content_type,
            upload_name=clean_filename(_filename(remote.content_disposition)),
            size=len(remote.data),
            storage_key=key,
            width=info.width,
            height=info.height,
            duration_ms=info.duration_ms,
            blurhash=info.blurhash,
            poster_key=None,
            message_id=None,
        )
        src.seek(0)
        await self.api.run_blocking(self.repo.storage.put, key, src, content_type)
        try:
            await self.api.run_db("cache_remote_media", db.finish_upload_txn, row, 0, False)
        except Exception:
            # Another worker kept the same media a moment ago: use its row.
            kept = await self.repo.get(local_id)
            if kept is None:
                raise
            return kept
        return row
