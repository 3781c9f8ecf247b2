"""The media plugin's SQL: `*_txn` functions run through `PluginApi.run_db`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.plugins import Txn

_COLUMNS = (
    "media_id, user_id, created_ts, state, expires_ts, content_type, upload_name, size, "
    "storage_key, width, height, duration_ms, blurhash, poster_key, message_id, quarantined_by"
)


@dataclass(frozen=True)
class MediaRow:
    media_id: str
    user_id: str
    created_ts: int
    state: str  # pending | uploading | ready
    expires_ts: int | None
    content_type: str | None
    upload_name: str | None
    size: int
    storage_key: str | None
    width: int | None
    height: int | None
    duration_ms: int | None
    blurhash: str | None
    poster_key: str | None
    message_id: str | None
    quarantined_by: str | None = None

    @staticmethod
    def from_row(row: tuple[Any, ...]) -> MediaRow:
        return MediaRow(*row)


@dataclass(frozen=True)
class ThumbnailRow:
    media_id: str
    width: int
    height: int
    method: str
    content_type: str
    size: int
    storage_key: str


def get_media_txn(txn: Txn, media_id: str) -> MediaRow | None:
    row = txn.query_one(f"SELECT {_COLUMNS} FROM media_files WHERE media_id = ?", (media_id,))
    return MediaRow.from_row(row) if row is not None else None


def used_bytes_txn(txn: Txn, user_id: str) -> int:
    row = txn.query_one("SELECT COALESCE(SUM(size), 0) FROM media_files WHERE user_id = ?", (user_id,))
    return int(row[0]) if row else 0


def count_pending_txn(txn: Txn, user_id: str, now_ms: int) -> int:
    row = txn.query_one(
        "SELECT COUNT(*) FROM media_files WHERE user_id = ? AND state = 'pending' AND expires_ts > ?",
        (user_id, now_ms),
    )
    return int(row[0]) if row else 0


def create_pending_txn(txn: Txn, media_id: str, user_id: str, now_ms: int, expires_ts: int) -> None:
    txn.execute(
        "INSERT INTO media_files (media_id, user_id, created_ts, state, expires_ts, size)"
        " VALUES (?, ?, ?, 'pending', ?, 0)",
        (media_id, user_id, now_ms, expires_ts),
    )


def claim_pending_txn(txn: Txn, media_id: str, now_ms: int) -> bool:
    """pending -> uploading, once: a second concurrent PUT finds nothing to claim."""
    txn.execute(
        "UPDATE media_files SET state = 'uploading'"
        " WHERE media_id = ? AND state = 'pending' AND expires_ts > ?",
        (media_id, now_ms),
    )
    return txn.rowcount == 1


def release_claim_txn(txn: Txn, media_id: str) -> None:
    txn.execute(
        "UPDATE media_files SET state = 'pending' WHERE media_id = ? AND state = 'uploading'", (media_id,)
    )


def finish_upload_txn(txn: Txn, row: MediaRow, quota: int, pending: bool) -> bool:
    """Record a stored upload; False (nothing written) if it would exceed the user's quota."""
    if quota:
        used = used_bytes_txn(txn, row.user_id)
        if used + row.size > quota:
            return False
    values = (
        row.content_type,
        row.upload_name,
        row.size,
        row.storage_key,
        row.width,
        row.height,
        row.duration_ms,
        row.blurhash,
        row.poster_key,
    )
    if pending:
        txn.execute(
            "UPDATE media_files SET state = 'ready', expires_ts = NULL, content_type = ?, upload_name = ?,"
            " size = ?, storage_key = ?, width = ?, height = ?, duration_ms = ?, blurhash = ?, poster_key = ?"
            " WHERE media_id = ?",
            (*values, row.media_id),
        )
    else:
        txn.execute(
            f"INSERT INTO media_files ({_COLUMNS})"
            " VALUES (?, ?, ?, 'ready', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (row.media_id, row.user_id, row.created_ts, *values),
        )
    return True


def share_rooms_txn(txn: Txn, media_id: str) -> set[str]:
    return {
        r[0] for r in txn.query("SELECT DISTINCT room_id FROM media_refs WHERE media_id = ?", (media_id,))
    }


def add_ref_txn(txn: Txn, media_id: str, event_id: str, room_id: str) -> None:
    if txn.query_one("SELECT 1 FROM media_refs WHERE media_id = ? AND event_id = ?", (media_id, event_id)):
        return
    txn.execute(
        "INSERT INTO media_refs (media_id, event_id, room_id) VALUES (?, ?, ?)", (media_id, event_id, room_id)
    )
    txn.execute(
        "UPDATE media_files SET message_id = ? WHERE media_id = ? AND message_id IS NULL",
        (event_id, media_id),
    )


def shared_only_by_txn(txn: Txn, event_ids: list[str]) -> list[str]:
    """The media that these events, and no other, share."""
    gone = set(event_ids)
    media: set[str] = set()
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        media.update(
            r[0] for r in txn.query(f"SELECT media_id FROM media_refs WHERE event_id IN ({marks})", chunk)
        )
    return sorted(
        media_id
        for media_id in media
        if {r[0] for r in txn.query("SELECT event_id FROM media_refs WHERE media_id = ?", (media_id,))}
        <= gone
    )


def drop_refs_txn(txn: Txn, event_ids: list[str]) -> None:
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        txn.execute(f"DELETE FROM media_refs WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)


def get_thumbnail_txn(txn: Txn, media_id: str, width: int, height: int, method: str) -> ThumbnailRow | None:
    row = txn.query_one(
        "SELECT media_id, width, height, method, content_type, size, storage_key FROM media_thumbnails"
        " WHERE media_id = ? AND width = ? AND height = ? AND method = ?",
        (media_id, width, height, method),
    )
    return ThumbnailRow(*row) if row is not None else None


def add_thumbnail_txn(txn: Txn, thumb: ThumbnailRow) -> bool:
    """False if the media is gone (deleted while the thumbnail was made) or it exists already."""
    if txn.query_one("SELECT 1 FROM media_files WHERE media_id = ?", (thumb.media_id,)) is None:
        return False
    if get_thumbnail_txn(txn, thumb.media_id, thumb.width, thumb.height, thumb.method) is not None:
        return False
    txn.execute(
        "INSERT INTO media_thumbnails (media_id, width, height, method, content_type, size, storage_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            thumb.media_id,
            thumb.width,
            thumb.height,
            thumb.method,
            thumb.content_type,
            thumb.size,
            thumb.storage_key,
        ),
    )
    return True


def delete_media_txn(txn: Txn, media_id: str) -> list[str] | None:
    """Forget a media and everything about it: the storage keys to remove afterwards,
    or None if there was no such media."""
    row = get_media_txn(txn, media_id)
    if row is None:
        return None
    keys = [k for k in (row.storage_key, row.poster_key) if k]
    keys += [
        r[0] for r in txn.query("SELECT storage_key FROM media_thumbnails WHERE media_id = ?", (media_id,))
    ]
    txn.execute("DELETE FROM media_thumbnails WHERE media_id = ?", (media_id,))
    txn.execute("DELETE FROM media_refs WHERE media_id = ?", (media_id,))
    txn.execute("DELETE FROM media_files WHERE media_id = ?", (media_id,))
    return keys


def expired_pending_txn(txn: Txn, now_ms: int, limit: int) -> list[str]:
    rows = txn.query(
        "SELECT media_id FROM media_files WHERE state = 'pending' AND expires_ts <= ? LIMIT ?",
        (now_ms, limit),
    )
    return [r[0] for r in rows]


def unreferenced_before_txn(txn: Txn, before_ts: int, limit: int, opaque_type: str) -> list[str]:
    """Finished uploads older than `before_ts` that no event references, except opaque ones:
    an encrypted attachment is referenced only inside encrypted events, which the server
    cannot read, so "never shared" cannot be told for them."""
    rows = txn.query(
        "SELECT media_id FROM media_files f WHERE state = 'ready' AND created_ts < ?"
        " AND (content_type IS NULL OR content_type <> ?)"
        " AND NOT EXISTS (SELECT 1 FROM media_refs r WHERE r.media_id = f.media_id) LIMIT ?",
        (before_ts, opaque_type, limit),
    )
    return [r[0] for r in rows]


def media_of_user_txn(txn: Txn, user_id: str, before_ts: int | None) -> list[str]:
    if before_ts is None:
        rows = txn.query("SELECT media_id FROM media_files WHERE user_id = ?", (user_id,))
    else:
        rows = txn.query(
            "SELECT media_id FROM media_files WHERE user_id = ? AND created_ts < ?", (user_id, before_ts)
        )
    return [r[0] for r in rows]


def uploads_of_txn(txn: Txn, user_id: str) -> list[MediaRow]:
    rows = txn.query(
        f"SELECT {_COLUMNS} FROM media_files WHERE user_id = ? AND state = 'ready' ORDER BY created_ts",
        (user_id,),
    )
    return [MediaRow.from_row(r) for r in rows]


def media_before_txn(txn: Txn, before_ts: int) -> list[str]:
    return [r[0] for r in txn.query("SELECT media_id FROM media_files WHERE created_ts < ?", (before_ts,))]


def usage_txn(txn: Txn, user_id: str) -> tuple[int, int]:
    row = txn.query_one(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM media_files WHERE user_id = ? AND state = 'ready'",
        (user_id,),
    )
    return (int(row[0]), int(row[1])) if row else (0, 0)


# The admin API (admin.py) ---------------------------------------------------------------

ADMIN_ORDER_COLUMNS = {
    "media_id": "media_id",
    "upload_name": "upload_name",
    "created_ts": "created_ts",
    "last_access_ts": "created_ts",  # not tracked: the upload time stands in
    "media_length": "size",
    "media_type": "content_type",
    "quarantined_by": "quarantined_by",
    "safe_from_quarantine": "media_id",  # nothing is protected here: every row ties
}


def user_media_page_txn(
    txn: Txn, user_id: str, order_by: str, ascending: bool, offset: int, limit: int
) -> tuple[list[MediaRow], int]:
    column = ADMIN_ORDER_COLUMNS[order_by]
    direction = "ASC" if ascending else "DESC"
    total = txn.query_one(
        "SELECT COUNT(*) FROM media_files WHERE user_id = ? AND state = 'ready'", (user_id,)
    )
    rows = txn.query(
        f"SELECT {_COLUMNS} FROM media_files WHERE user_id = ? AND state = 'ready'"
        f" ORDER BY {column} {direction}, media_id {direction} LIMIT ? OFFSET ?",
        (user_id, limit, offset),
    )
    return [MediaRow.from_row(r) for r in rows], int(total[0]) if total else 0


def set_quarantine_txn(txn: Txn, media_id: str, by: str | None) -> bool:
    txn.execute("UPDATE media_files SET quarantined_by = ? WHERE media_id = ?", (by, media_id))
    return txn.rowcount == 1


def usage_by_user_txn(txn: Txn, from_ts: int | None, until_ts: int | None) -> list[tuple[str, int, int]]:
    clauses, args = ["state = 'ready'"], []
    if from_ts is not None:
        clauses.append("created_ts >= ?")
        args.append(from_ts)
    if until_ts is not None:
        clauses.append("created_ts < ?")
        args.append(until_ts)
    rows = txn.query(
        "SELECT user_id, COUNT(*), COALESCE(SUM(size), 0) FROM media_files"
        f" WHERE {' AND '.join(clauses)} GROUP BY user_id",
        args,
    )
    return [(r[0], int(r[1]), int(r[2])) for r in rows]
