"""`GET /_plugins/admin/metrics/daily?days=30`: the dashboard's numbers, from the core's
daily statistics (PluginApi.server_stats) and the media plugin's usage per uploader."""

from __future__ import annotations

from typing import Any

from homeserver.plugins import ApiRequest, MatrixError, PluginApi, Requester

MAX_DAYS = 366


class DashboardMetrics:
    def __init__(self, api: PluginApi) -> None:
        self.api = api

    async def daily(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        days = request.int_param("days", 30)
        if not 1 <= days <= MAX_DAYS:
            raise MatrixError(f"'days' must be 1 to {MAX_DAYS}", "M_INVALID_PARAM")
        stats = await self.api.server_stats(days)
        media = self.api.media_admin
        usage = await media.usage(None, None) if media is not None else None
        return {
            "days": [
                {
                    "date": d.date,
                    "signups": d.signups,
                    "active_users": d.active_users,
                    "messages": d.messages,
                    "calls": d.calls,
                }
                for d in stats.days
            ],
            "accounts": stats.accounts,
            "daily_active_users": stats.daily_active_users,
            "monthly_active_users": stats.monthly_active_users,
            "connections": {
                "websocket_streams": stats.connections.websocket_streams,
                "long_polls": stats.connections.long_polls,
            },
            # null without a media plugin (nothing stores media here then).
            "media": None
            if usage is None
            else {
                "files": sum(u.media_count for u in usage),
                "bytes": sum(u.media_length for u in usage),
                "uploaders": len(usage),
            },
        }
