"""The simple API's data export: start a job, watch its progress, download the zip
(docs/api.md, docs/gdpr.md). Only the owner sees an export: anyone else gets 404."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router, StreamBody
from homeserver.core.export import ExportRow

if TYPE_CHECKING:
    from homeserver.server import HomeServer

BASE = "/api/me/export"


def render(row: ExportRow) -> dict[str, Any]:
    return {
        "id": row.export_id,
        "state": row.state,
        "progress": {"done": row.done_steps, "total": row.total_steps},
        "createdAt": row.created_ts,
        "finishedAt": row.finished_ts,
        "size": row.size,
        "downloadPath": f"{BASE}/{row.export_id}/download" if row.state == "done" else None,
    }


def register(router: Router, hs: "HomeServer") -> None:
    async def start(request: ApiRequest) -> Response:
        requester = await require_user(hs, request)
        return Response(render(await hs.exports.export_user_data(requester.user_id)), 202)

    async def list_exports(request: ApiRequest) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"exports": [render(row) for row in await hs.exports.exports_of(requester.user_id)]}

    async def status(request: ApiRequest, export_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return render(await hs.exports.access_export(requester.user_id, export_id))

    async def download(request: ApiRequest, export_id: str) -> Response:
        requester = await require_user(hs, request)
        chunks, size = await hs.exports.open_download(requester.user_id, export_id)
        return Response(
            StreamBody(chunks, size),
            content_type=b"application/zip",
            headers=((b"Content-Disposition", f'attachment; filename="export-{export_id}.zip"'.encode()),),
        )

    router.add("POST", BASE, start)
    router.add("GET", BASE, list_exports)
    router.add("GET", f"{BASE}/{{export_id}}", status)
    router.add("GET", f"{BASE}/{{export_id}}/download", download)
