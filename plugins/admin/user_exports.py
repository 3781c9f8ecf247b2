"""An admin's export of any user's data (the GDPR export of docs/gdpr.md, started for them):
start one, list a user's, watch one's progress, download its zip."""

from __future__ import annotations

from typing import Any

from homeserver.plugins import ApiRequest, ExportRow, PluginApi, Requester, Response, StreamBody

BASE = "/_plugins/admin"


def render(row: ExportRow) -> dict[str, Any]:
    return {
        "export_id": row.export_id,
        "user_id": row.user_id,
        "state": row.state,
        "progress": {"done": row.done_steps, "total": row.total_steps},
        "created_ts": row.created_ts,
        "finished_ts": row.finished_ts,
        "size": row.size,
        "download": f"{BASE}/exports/{row.export_id}/download" if row.state == "done" else None,
    }


class UserExports:
    def __init__(self, api: PluginApi) -> None:
        self.api = api

    async def start(self, request: ApiRequest, requester: Requester, user_id: str) -> Response:
        await self.api.admin.known_user(user_id)
        return Response(render(await self.api.export_user_data(user_id)), 202)

    async def of_user(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        await self.api.admin.known_user(user_id)
        return {"exports": [render(row) for row in await self.api.user_exports(user_id)]}

    async def status(self, request: ApiRequest, requester: Requester, export_id: str) -> dict[str, Any]:
        return render(await self.api.any_export(export_id))

    async def download(self, request: ApiRequest, requester: Requester, export_id: str) -> Response:
        row = await self.api.any_export(export_id)
        chunks, size = await self.api.open_export(export_id)
        name = f"export-{row.user_id.lstrip('@').replace(':', '_')}-{export_id}.zip"
        return Response(
            StreamBody(chunks, size),
            content_type=b"application/zip",
            headers=((b"Content-Disposition", f'attachment; filename="{name}"'.encode()),),
        )
