"""End-to-end encryption routes: /keys/*, /sendToDevice, /room_keys/*."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT, CLIENT_OR_UNSTABLE
from homeserver.api.http import ApiRequest, Router
from homeserver.errors import MatrixError

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_TXN_ID = 255


def register(router: Router, hs: "HomeServer") -> None:
    keys = hs.keys
    backup = hs.key_backup

    async def upload(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await keys.upload(requester.user_id, requester.device_id, request.json_body())

    async def query(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await keys.query(requester.user_id, request.json_body())

    async def claim(request: ApiRequest, version: str) -> dict[str, Any]:
        await require_user(hs, request)
        return await keys.claim(request.json_body())

    async def changes(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        from_token, to_token = request.query_param("from"), request.query_param("to")
        if not from_token or not to_token:
            raise MatrixError("'from' and 'to' are required", "M_MISSING_PARAM")
        return await hs.sync.device_list_changes(requester.user_id, from_token, to_token)

    async def device_signing_upload(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await keys.upload_cross_signing(requester.user_id, request.json_body())
        return {}

    async def signatures_upload(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await keys.upload_signatures(requester.user_id, request.json_body())

    async def send_to_device(
        request: ApiRequest, version: str, event_type: str, txn_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if len(txn_id) > MAX_TXN_ID:
            raise MatrixError("txnId is too long", "M_INVALID_PARAM")
        await keys.send_to_device(
            requester.user_id, requester.device_id, event_type, txn_id, request.json_body()
        )
        return {}

    # Room-key backup ------------------------------------------------------------------------

    async def create_version(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        number = await backup.create_version(requester.user_id, body.get("algorithm"), body.get("auth_data"))
        return {"version": number}

    async def get_version(
        request: ApiRequest, version: str, backup_version: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await backup.get_version(requester.user_id, backup_version)

    async def update_version(request: ApiRequest, version: str, backup_version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await backup.update_version(requester.user_id, backup_version, request.json_body())
        return {}

    async def delete_version(request: ApiRequest, version: str, backup_version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await backup.delete_version(requester.user_id, backup_version)
        return {}

    async def put_keys(
        request: ApiRequest, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await backup.put_keys(
            requester.user_id, request.query_param("version"), room_id, session_id, request.json_body()
        )

    async def get_keys(
        request: ApiRequest, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await backup.get_keys(requester.user_id, request.query_param("version"), room_id, session_id)

    async def delete_keys(
        request: ApiRequest, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await backup.delete_keys(
            requester.user_id, request.query_param("version"), room_id, session_id
        )

    router.add("POST", f"{CLIENT_OR_UNSTABLE}/keys/upload", upload)
    router.add("POST", f"{CLIENT_OR_UNSTABLE}/keys/query", query)
    router.add("POST", f"{CLIENT_OR_UNSTABLE}/keys/claim", claim)
    router.add("GET", f"{CLIENT_OR_UNSTABLE}/keys/changes", changes)
    router.add("POST", f"{CLIENT_OR_UNSTABLE}/keys/device_signing/upload", device_signing_upload)
    router.add("POST", f"{CLIENT_OR_UNSTABLE}/keys/signatures/upload", signatures_upload)
    router.add("PUT", f"{CLIENT}/sendToDevice/{{event_type}}/{{txn_id}}", send_to_device)
    router.add("POST", f"{CLIENT_OR_UNSTABLE}/room_keys/version", create_version)
    router.add("GET", f"{CLIENT_OR_UNSTABLE}/room_keys/version", get_version)
    router.add("GET", f"{CLIENT_OR_UNSTABLE}/room_keys/version/{{backup_version}}", get_version)
    router.add("PUT", f"{CLIENT_OR_UNSTABLE}/room_keys/version/{{backup_version}}", update_version)
    router.add("DELETE", f"{CLIENT_OR_UNSTABLE}/room_keys/version/{{backup_version}}", delete_version)
    for suffix in ("", "/{room_id}", "/{room_id}/{session_id}"):
        router.add("PUT", f"{CLIENT_OR_UNSTABLE}/room_keys/keys{suffix}", put_keys)
        router.add("GET", f"{CLIENT_OR_UNSTABLE}/room_keys/keys{suffix}", get_keys)
        router.add("DELETE", f"{CLIENT_OR_UNSTABLE}/room_keys/keys{suffix}", delete_keys)
