"""The admin plugin: the parts of Synapse's admin API (`/_synapse/admin/...`) that admin
tools such as synapse-admin use, for server admins only, every call in an audit log.

Each handler parses, calls one function of the core's admin service (`api.admin`,
core/admin.py) and renders Synapse's shape (render.py). Callers without a token get
401; authenticated non-admins get 403 M_FORBIDDEN, and that refusal is audited too.
It imports only `homeserver.plugins`, the plugin interface. See docs/admin.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from homeserver.plugins import (
    ApiRequest,
    MatrixError,
    MediaAdmin,
    PluginApi,
    Report,
    Requester,
    Response,
    UserFilter,
)
from plugins.admin import render
from plugins.admin.audit import AuditLog
from plugins.admin.config import AdminConfig, parse_admin_config
from plugins.admin.dashboard_metrics import DashboardMetrics
from plugins.admin.params import ascending, bool_param, next_token, optional_bool_param, page_params
from plugins.admin.static_site import StaticSite
from plugins.admin.user_exports import UserExports

Handler = Callable[..., Awaitable[Any]]

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"


class AdminPlugin:
    NAME = "admin"
    PATH_PREFIXES = ("/_synapse/admin/", "/_admin/")
    SCHEMA_DIR = Path(__file__).parent / "sql"

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> AdminConfig:
        return parse_admin_config(raw)

    def __init__(self, config: AdminConfig, api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.admin = api.admin
        self.audit = AuditLog(api)
        # Room deletions run to the end within the request; their results are kept for
        # Synapse's status routes until the server restarts.
        self.deletions: dict[str, tuple[str, dict[str, Any]]] = {}
        self.metrics = DashboardMetrics(api)
        self.exports = UserExports(api)
        self.site = StaticSite()

    async def start(self) -> None:
        routes: list[tuple[str, str, Handler]] = [
            # Users
            ("GET", f"{V2}/users", self.list_users),
            ("GET", f"{V2}/users/{{user_id}}", self.get_user),
            ("PUT", f"{V2}/users/{{user_id}}", self.put_user),
            ("GET", f"{V2}/users/{{user_id}}/devices", self.user_devices),
            ("GET", f"{V1}/users/{{user_id}}/joined_rooms", self.user_joined_rooms),
            ("GET", f"{V1}/whois/{{user_id}}", self.whois),
            ("POST", f"{V1}/reset_password/{{user_id}}", self.reset_password),
            ("POST", f"{V1}/deactivate/{{user_id}}", self.deactivate),
            ("POST", f"{V1}/users/{{user_id}}/shadow_ban", self.shadow_ban),
            ("DELETE", f"{V1}/users/{{user_id}}/shadow_ban", self.unshadow_ban),
            ("PUT", f"{V1}/suspend/{{user_id}}", self.suspend),
            # Media
            ("GET", f"{V1}/users/{{user_id}}/media", self.user_media),
            ("DELETE", f"{V1}/users/{{user_id}}/media", self.delete_user_media),
            ("POST", f"{V1}/media/quarantine/{{server_name}}/{{media_id}}", self.quarantine),
            ("POST", f"{V1}/media/unquarantine/{{server_name}}/{{media_id}}", self.unquarantine),
            ("DELETE", f"{V1}/media/{{server_name}}/{{media_id}}", self.delete_media),
            ("GET", f"{V1}/statistics/users/media", self.media_statistics),
            # Rooms
            ("GET", f"{V1}/rooms", self.list_rooms),
            ("GET", f"{V1}/rooms/{{room_id}}", self.get_room),
            ("GET", f"{V1}/rooms/{{room_id}}/members", self.room_members),
            ("GET", f"{V1}/rooms/{{room_id}}/state", self.room_state),
            ("GET", f"{V1}/rooms/{{room_id}}/block", self.room_block),
            ("PUT", f"{V1}/rooms/{{room_id}}/block", self.block_room),
            ("DELETE", f"{V1}/rooms/{{room_id}}", self.delete_room_v1),
            ("DELETE", f"{V2}/rooms/{{room_id}}", self.delete_room),
            ("GET", f"{V2}/rooms/{{room_id}}/delete_status", self.room_delete_status),
            ("GET", f"{V2}/rooms/delete_status/{{delete_id}}", self.delete_status),
            # Event reports
            ("GET", f"{V1}/event_reports", self.list_reports),
            ("GET", f"{V1}/event_reports/{{report_id}}", self.get_report),
            ("DELETE", f"{V1}/event_reports/{{report_id}}", self.dismiss_report),
            # Registration tokens
            ("GET", f"{V1}/registration_tokens", self.list_tokens),
            ("POST", f"{V1}/registration_tokens/new", self.create_token),
            ("GET", f"{V1}/registration_tokens/{{token}}", self.get_token),
            ("PUT", f"{V1}/registration_tokens/{{token}}", self.update_token),
            ("DELETE", f"{V1}/registration_tokens/{{token}}", self.delete_token),
            # The server
            ("GET", f"{V1}/server_version", self.server_version),
            ("GET", f"{V1}/background_updates/status", self.background_updates),
            ("GET", f"{V1}/background_updates/enabled", self.background_updates_enabled),
            ("GET", f"{V1}/statistics/database/rooms", self.database_room_sizes),
            # This plugin's own: the audit log
            ("GET", "/_plugins/admin/audit_log", self.audit_log),
            # The dashboard's numbers, and exports of any user's data
            ("GET", "/_plugins/admin/metrics/daily", self.metrics.daily),
            ("POST", "/_plugins/admin/users/{user_id}/export", self.exports.start),
            ("GET", "/_plugins/admin/users/{user_id}/exports", self.exports.of_user),
            ("GET", "/_plugins/admin/exports/{export_id}", self.exports.status),
            ("GET", "/_plugins/admin/exports/{export_id}/download", self.exports.download),
        ]
        for method, path, handler in routes:
            self.api.register_route(method, path, self._guarded(method, path, handler), require_auth=False)
        # The dashboard's page: public files; what it shows needs an admin's token.
        self.api.register_route("GET", "/_admin/", self.site.index, require_auth=False)
        self.api.register_route("GET", "/_admin/{name}", self.site.file, require_auth=False)
        self.api.schedule(3600, lambda: self.audit.expire(self.config.audit_retention_s))

    def _guarded(self, method: str, path: str, handler: Handler) -> Handler:
        """Only server admins get through; every authenticated call is audited with its outcome."""

        async def guarded(request: ApiRequest, **params: str) -> Any:
            requester = await self.api.authenticate(request)
            # What it acts on: the last path parameter (a user, room, report, token, media id).
            target = list(params.values())[-1] if params else None
            status = 500
            try:
                if not await self.api.is_admin(requester.user_id):
                    raise MatrixError("You are not a server admin", "M_FORBIDDEN", status=403)
                result = await handler(request, requester, **params)
                status = result.status if isinstance(result, Response) else 200
                return result
            except MatrixError as e:
                status = e.status
                raise
            finally:
                await self.audit.record(requester.user_id, method, path, target, status)

        return guarded

    # Users ----------------------------------------------------------------------------

    async def list_users(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        offset, limit = page_params(request)
        where = UserFilter(
            user_id=request.query_param("user_id") or None,
            name=request.query_param("name") or None,
            deactivated=bool_param(request, "deactivated", False),
            locked=bool_param(request, "locked", False),
            suspended=bool_param(request, "suspended", True),
            admins=optional_bool_param(request, "admins"),
            not_user_types=tuple(request.query_params("not_user_type")),
        )
        bool_param(request, "guests", True)  # checked; there are no guest accounts here
        order_by = request.query_param("order_by") or "name"
        page = await self.admin.list_users(where, order_by, ascending(request), offset, limit)
        out: dict[str, Any] = {"users": [render.user_summary(u) for u in page.items], "total": page.total}
        if offset + len(page.items) < page.total:
            out["next_token"] = str(offset + len(page.items))
        return out

    async def get_user(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        return render.user_details(await self.admin.user(user_id))

    async def put_user(self, request: ApiRequest, requester: Requester, user_id: str) -> Response:
        created = await self.admin.put_user(user_id, request.json_body())
        return Response(render.user_details(await self.admin.user(user_id)), 201 if created else 200)

    async def user_devices(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        devices = await self.admin.devices(user_id)
        return {"devices": [render.device(user_id, d) for d in devices], "total": len(devices)}

    async def user_joined_rooms(
        self, request: ApiRequest, requester: Requester, user_id: str
    ) -> dict[str, Any]:
        rooms = await self.admin.joined_rooms(user_id)
        return {"joined_rooms": rooms, "total": len(rooms)}

    async def whois(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        return render.whois(user_id, await self.admin.devices(user_id))

    async def reset_password(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        body = request.json_body()
        if "new_password" not in body:
            raise MatrixError("'new_password' is required", "M_MISSING_PARAM")
        logout = body.get("logout_devices", True)
        if not isinstance(logout, bool):
            raise MatrixError("'logout_devices' must be a boolean", "M_BAD_JSON")
        await self.admin.reset_password(user_id, body["new_password"], logout)
        return {}

    async def deactivate(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        body = request.json_body_or_empty()
        erase = body.get("erase", False)
        if not isinstance(erase, bool):
            raise MatrixError("'erase' must be a boolean", "M_BAD_JSON")
        await self.admin.deactivate(user_id, erase)
        return {"id_server_unbind_result": "success"}

    async def shadow_ban(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        await self.admin.set_restriction(user_id, "shadow_banned", True)
        return {}

    async def unshadow_ban(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        await self.admin.set_restriction(user_id, "shadow_banned", False)
        return {}

    async def suspend(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        suspend = request.json_body().get("suspend")
        if not isinstance(suspend, bool):
            raise MatrixError("'suspend' must be a boolean", "M_BAD_JSON")
        await self.admin.set_restriction(user_id, "suspended", suspend)
        return {f"user_{user_id}_suspended": suspend}

    # Media ----------------------------------------------------------------------------

    def _media(self) -> MediaAdmin:
        media = self.api.media_admin
        if media is None:
            raise MatrixError("No media plugin serves media on this server", "M_UNRECOGNIZED", status=404)
        return media

    def _local_media(self, server_name: str) -> MediaAdmin:
        if server_name != self.api.server_name:
            raise MatrixError("Can only manage media of this server", "M_INVALID_PARAM")
        return self._media()

    async def user_media(self, request: ApiRequest, requester: Requester, user_id: str) -> dict[str, Any]:
        await self.admin.known_user(user_id)
        offset, limit = page_params(request)
        if limit > 1000:
            raise MatrixError("'limit' must be at most 1000", "M_INVALID_PARAM")
        order_by = request.query_param("order_by") or "created_ts"
        try:
            media, total = await self._media().user_media(
                user_id, order_by, ascending(request), offset, limit
            )
        except ValueError:
            raise MatrixError(f"Unknown value for 'order_by': {order_by}", "M_INVALID_PARAM") from None
        return {
            "media": [render.media(m) for m in media],
            "total": total,
            **next_token(offset, len(media), total),
        }

    async def delete_user_media(
        self, request: ApiRequest, requester: Requester, user_id: str
    ) -> dict[str, Any]:
        await self.admin.known_user(user_id)
        deleted = await self._media().delete_user_media(user_id)
        return {"deleted_media": deleted, "total": len(deleted)}

    async def quarantine(
        self, request: ApiRequest, requester: Requester, server_name: str, media_id: str
    ) -> dict[str, Any]:
        if not await self._local_media(server_name).quarantine(media_id, requester.user_id):
            raise MatrixError("Unknown media", "M_NOT_FOUND", status=404)
        return {}

    async def unquarantine(
        self, request: ApiRequest, requester: Requester, server_name: str, media_id: str
    ) -> dict[str, Any]:
        if not await self._local_media(server_name).quarantine(media_id, None):
            raise MatrixError("Unknown media", "M_NOT_FOUND", status=404)
        return {}

    async def delete_media(
        self, request: ApiRequest, requester: Requester, server_name: str, media_id: str
    ) -> dict[str, Any]:
        if not await self._local_media(server_name).delete_media(media_id):
            raise MatrixError("Unknown media", "M_NOT_FOUND", status=404)
        return {"deleted_media": [media_id], "total": 1}

    async def media_statistics(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        """Synapse's users/media statistics: uploads per user, with display names, filtered,
        ordered and paged here (one row per uploader)."""
        offset, limit = page_params(request)
        order_by = request.query_param("order_by") or "user_id"
        if order_by not in ("user_id", "displayname", "media_length", "media_count"):
            raise MatrixError(f"Unknown value for 'order_by': {order_by}", "M_INVALID_PARAM")
        from_ts = request.int_param("from_ts", None)
        until_ts = request.int_param("until_ts", None)
        if (from_ts is not None and from_ts < 0) or (until_ts is not None and until_ts < 0):
            raise MatrixError("'from_ts' and 'until_ts' must not be negative", "M_INVALID_PARAM")
        search = (request.query_param("search_term") or "").casefold()
        rows = []
        for usage in await self._media().usage(from_ts, until_ts):
            name = await self.admin.displayname(usage.user_id)
            if search and search not in usage.user_id.casefold() and search not in (name or "").casefold():
                continue
            rows.append(
                {
                    "displayname": name,
                    "media_count": usage.media_count,
                    "media_length": usage.media_length,
                    "user_id": usage.user_id,
                }
            )

        def sort_key(row: dict[str, Any]) -> tuple[Any, str]:
            value = row[order_by]
            if order_by in ("media_length", "media_count"):
                return (value, row["user_id"])
            return ((value or "").casefold(), row["user_id"])

        rows.sort(key=sort_key, reverse=not ascending(request))
        page = rows[offset : offset + limit]
        return {"users": page, "total": len(rows), **next_token(offset, len(page), len(rows))}

    # Rooms ----------------------------------------------------------------------------

    async def list_rooms(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        offset, limit = page_params(request)
        order_by = request.query_param("order_by") or "name"
        search = request.query_param("search_term") or None
        page = await self.admin.list_rooms(search, order_by, ascending(request), offset, limit)
        out: dict[str, Any] = {
            "rooms": [render.room_summary(r) for r in page.items],
            "offset": offset,
            "total_rooms": page.total,
        }
        if offset + len(page.items) < page.total:
            out["next_batch"] = offset + len(page.items)
        if offset > 0:
            out["prev_batch"] = max(offset - limit, 0)
        return out

    async def get_room(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        return render.room_details(await self.admin.room(room_id))

    async def room_members(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        members = await self.admin.room_members(room_id)
        return {"members": members, "total": len(members)}

    async def room_state(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        return {"state": await self.admin.room_state(room_id)}

    async def room_block(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        blocked_by = await self.admin.room_block(room_id)
        out: dict[str, Any] = {"block": blocked_by is not None}
        if blocked_by is not None:
            out["user_id"] = blocked_by
        return out

    async def block_room(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        block = request.json_body().get("block")
        if not isinstance(block, bool):
            raise MatrixError("'block' must be a boolean", "M_BAD_JSON")
        await self.admin.block_room(room_id, requester.user_id, block)
        return {"block": block}

    async def _shutdown(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        body = request.json_body_or_empty()
        block, purge = body.get("block", False), body.get("purge", True)
        if not isinstance(block, bool) or not isinstance(purge, bool):
            raise MatrixError("'block' and 'purge' must be booleans", "M_BAD_JSON")
        if body.get("new_room_user_id") is not None:
            raise MatrixError("Moving members to a new room is not supported here", "M_UNRECOGNIZED")
        done = await self.admin.delete_room(room_id, requester.user_id, block, purge)
        return {
            "kicked_users": done.kicked_users,
            "failed_to_kick_users": done.failed_to_kick_users,
            "local_aliases": done.local_aliases,
            "new_room_id": None,
        }

    async def delete_room_v1(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        return await self._shutdown(request, requester, room_id)

    async def delete_room(self, request: ApiRequest, requester: Requester, room_id: str) -> dict[str, Any]:
        shutdown = await self._shutdown(request, requester, room_id)
        delete_id = secrets.token_urlsafe(12)
        self.deletions[delete_id] = (room_id, {"status": "complete", "shutdown_room": shutdown})
        return {"delete_id": delete_id}

    async def room_delete_status(
        self, request: ApiRequest, requester: Requester, room_id: str
    ) -> dict[str, Any]:
        results = [{"delete_id": d, **status} for d, (r, status) in self.deletions.items() if r == room_id]
        if not results:
            raise MatrixError("No delete task for this room", "M_NOT_FOUND", status=404)
        return {"results": results}

    async def delete_status(
        self, request: ApiRequest, requester: Requester, delete_id: str
    ) -> dict[str, Any]:
        found = self.deletions.get(delete_id)
        if found is None:
            raise MatrixError("No such delete task", "M_NOT_FOUND", status=404)
        return found[1]

    # Event reports --------------------------------------------------------------------

    async def list_reports(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        offset, limit = page_params(request)
        page = await self.admin.event_reports(
            request.query_param("user_id") or None,
            request.query_param("room_id") or None,
            ascending(request, default="b"),
            offset,
            limit,
        )
        reports = [await self._report(r) for r in page.items]
        return {"event_reports": reports, "total": page.total, **next_token(offset, len(reports), page.total)}

    async def _report(self, report: Report) -> dict[str, Any]:
        """Synapse's report entry: the room's name and alias as they are now, and the reported
        event's sender (kept with the report)."""
        room = None
        if report.room_id is not None:
            try:
                room = await self.admin.room(report.room_id)
            except MatrixError:
                room = None
        return render.event_report(report, room, report.target_user_id)

    def _report_id(self, raw: str) -> int:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise MatrixError("The report id must be a positive integer", "M_INVALID_PARAM")
        return int(raw)

    async def get_report(self, request: ApiRequest, requester: Requester, report_id: str) -> dict[str, Any]:
        report, event_json = await self.admin.event_report(self._report_id(report_id))
        out = await self._report(report)
        out["event_json"] = event_json
        return out

    async def dismiss_report(
        self, request: ApiRequest, requester: Requester, report_id: str
    ) -> dict[str, Any]:
        await self.admin.dismiss_report(self._report_id(report_id))
        return {}

    # Registration tokens ----------------------------------------------------------------

    async def list_tokens(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        tokens = await self.admin.registration_tokens.list(optional_bool_param(request, "valid"))
        return {"registration_tokens": [render.registration_token(t) for t in tokens]}

    async def create_token(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        return render.registration_token(await self.admin.registration_tokens.create(request.json_body()))

    async def get_token(self, request: ApiRequest, requester: Requester, token: str) -> dict[str, Any]:
        return render.registration_token(await self.admin.registration_tokens.get(token))

    async def update_token(self, request: ApiRequest, requester: Requester, token: str) -> dict[str, Any]:
        updated = await self.admin.registration_tokens.update(token, request.json_body())
        return render.registration_token(updated)

    async def delete_token(self, request: ApiRequest, requester: Requester, token: str) -> dict[str, Any]:
        await self.admin.registration_tokens.delete(token)
        return {}

    # The server -----------------------------------------------------------------------

    async def server_version(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        return {"server_version": self.api.server_version}

    async def background_updates(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        # Schema changes run whole at start-up (homeserver migrate): nothing runs in the background.
        return {"enabled": True, "current_updates": {}}

    async def background_updates_enabled(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        return {"enabled": True}

    async def database_room_sizes(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        sizes = await self.admin.room_sizes()
        return {"rooms": [{"room_id": room_id, "estimated_size": size} for room_id, size in sizes]}

    async def audit_log(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        offset, limit = page_params(request)
        if limit > 1000:
            raise MatrixError("'limit' must be at most 1000", "M_INVALID_PARAM")
        entries, total = await self.audit.page(
            request.query_param("user_id") or None, request.query_param("target") or None, offset, limit
        )
        return {
            "entries": [
                {
                    "id": e.audit_id,
                    "ts": e.ts,
                    "user_id": e.user_id,
                    "method": e.method,
                    "route": e.route,
                    "target": e.target,
                    "status": e.status,
                }
                for e in entries
            ],
            "total": total,
            **next_token(offset, len(entries), total),
        }
