"""The media plugin's side of the admin API (`PluginApi.set_media_admin`): listing, deleting
and quarantining uploads, and usage per uploader, for the admin plugin to serve."""

from __future__ import annotations

from homeserver.plugins import AdminMedia, MediaUsage
from plugins.media import db
from plugins.media.repository import MediaRepository


def _admin_media(row: db.MediaRow) -> AdminMedia:
    return AdminMedia(
        row.media_id, row.content_type, row.size, row.upload_name, row.created_ts, row.quarantined_by
    )


class MediaAdminProvider:
    def __init__(self, repo: MediaRepository) -> None:
        self.repo = repo
        self.api = repo.api

    async def user_media(
        self, user_id: str, order_by: str, ascending: bool, offset: int, limit: int
    ) -> tuple[list[AdminMedia], int]:
        if order_by not in db.ADMIN_ORDER_COLUMNS:
            raise ValueError(order_by)
        rows, total = await self.api.run_db(
            "admin_user_media", db.user_media_page_txn, user_id, order_by, ascending, offset, limit
        )
        return [_admin_media(r) for r in rows], total

    async def delete_user_media(self, user_id: str) -> list[str]:
        ids: list[str] = await self.api.run_db("media_of_user", db.media_of_user_txn, user_id, None)
        return [media_id for media_id in ids if await self.repo.delete(media_id, "admin")]

    async def delete_media(self, media_id: str) -> bool:
        return await self.repo.get(media_id) is not None and await self.repo.delete(media_id, "admin")

    async def quarantine(self, media_id: str, by: str | None) -> bool:
        if await self.repo.get(media_id) is None:
            return False
        found: bool = await self.api.run_db("quarantine", db.set_quarantine_txn, media_id, by)
        return found

    async def usage(self, from_ts: int | None, until_ts: int | None) -> list[MediaUsage]:
        rows = await self.api.run_db("usage_by_user", db.usage_by_user_txn, from_ts, until_ts)
        return [MediaUsage(user_id, count, length) for user_id, count, length in rows]
