"""End-to-end encryption routes: /keys/*, /sendToDevice, /room_keys/*."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.core import uia
from homeserver.errors import MatrixError, NotFound

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_TXN_ID = 255


def register(router: Router, hs: "HomeServer") -> None:
    keys = hs.keys
    store = hs.storage.e2ee

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
        body = request.json_body()
        # Once a master key exists, replacing any cross-signing key needs the account
        # password (spec v1.11, MSC3967: UIA unless the user has no master key yet).
        if await keys.has_master_key(requester.user_id):
            await hs.uia.authenticate(
                body.get("auth"),
                "/keys/device_signing/upload",
                [[uia.PASSWORD]],
                expected_user=requester.user_id,
            )
        await keys.upload_cross_signing(requester.user_id, body)
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

        async def user_devices(user_id: str) -> list[str]:
            return [d.device_id for d in await hs.storage.devices.get_devices(user_id)]

        await keys.send_to_device(
            requester.user_id, requester.device_id, event_type, txn_id, request.json_body(), user_devices
        )
        return {}

    # Room-key backup ------------------------------------------------------------------------

    def _version(raw: str | None) -> int:
        if raw is None or not raw.isdigit():
            raise NotFound("Unknown backup version")
        return int(raw)

    async def current_version_or_error(user_id: str, raw: str | None) -> int:
        version = _version(raw)
        current = await store.get_backup_version(user_id, None)
        if current is None:
            # Spec: 404 when there is no backup; M_WRONG_ROOM_KEYS_VERSION names a current one.
            raise NotFound("No current backup version")
        if int(current["version"]) != version:
            raise MatrixError(
                "Wrong backup version",
                "M_WRONG_ROOM_KEYS_VERSION",
                status=403,
                current_version=current["version"],
            )
        return version

    async def create_version(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        algorithm, auth_data = body.get("algorithm"), body.get("auth_data")
        if not isinstance(algorithm, str) or not isinstance(auth_data, dict):
            raise MatrixError("'algorithm' and 'auth_data' are required", "M_BAD_JSON")
        return {"version": str(await store.create_backup_version(requester.user_id, algorithm, auth_data))}

    async def get_version(
        request: ApiRequest, version: str, backup_version: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        number = _version(backup_version) if backup_version is not None else None
        found = await store.get_backup_version(requester.user_id, number)
        if found is None:
            raise NotFound("No current backup version")
        return found

    async def update_version(request: ApiRequest, version: str, backup_version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        found = await store.get_backup_version(requester.user_id, _version(backup_version))
        if found is None:
            raise NotFound("Unknown backup version")
        if body.get("algorithm") != found["algorithm"]:
            raise MatrixError("The algorithm cannot change", "M_INVALID_PARAM")
        if "version" in body and str(body["version"]) != found["version"]:
            raise MatrixError("The version in the body does not match", "M_INVALID_PARAM")
        if not isinstance(body.get("auth_data"), dict):
            raise MatrixError("'auth_data' is required", "M_BAD_JSON")
        await store.update_backup_version(requester.user_id, int(found["version"]), body["auth_data"])
        return {}

    async def delete_version(request: ApiRequest, version: str, backup_version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        if not await store.delete_backup_version(requester.user_id, _version(backup_version)):
            raise NotFound("Unknown backup version")
        return {}

    def _sessions(room_id: str, raw: Any) -> list[tuple[str, str, dict[str, Any]]]:
        if not isinstance(raw, dict):
            raise MatrixError("'sessions' must be an object", "M_BAD_JSON")
        out = []
        for session_id, data in raw.items():
            if not isinstance(data, dict) or not isinstance(data.get("session_data"), dict):
                raise MatrixError("Each key needs 'session_data'", "M_BAD_JSON")
            # KeyBackupData: counts are non-negative integers, is_verified a boolean
            # (stored in integer and boolean columns: anything else was a 500).
            for name in ("first_message_index", "forwarded_count"):
                value = data.get(name, 0)
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
                    raise MatrixError(f"'{name}' must be a non-negative integer", "M_BAD_JSON")
            if not isinstance(data.get("is_verified", False), bool):
                raise MatrixError("'is_verified' must be a boolean", "M_BAD_JSON")
            out.append((room_id, str(session_id), data))
        return out

    async def put_keys(
        request: ApiRequest, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        number = await current_version_or_error(requester.user_id, request.query_param("version"))
        body = request.json_body()
        if session_id is not None and room_id is not None:
            sessions = _sessions(room_id, {session_id: body})
        elif room_id is not None:
            sessions = _sessions(room_id, body.get("sessions"))
        else:
            rooms = body.get("rooms")
            if not isinstance(rooms, dict):
                raise MatrixError("'rooms' must be an object", "M_BAD_JSON")
            sessions = [
                s
                for r, data in rooms.items()
                for s in _sessions(r, data.get("sessions") if isinstance(data, dict) else None)
            ]
        await store.put_room_keys(requester.user_id, number, sessions)
        found = await store.get_backup_version(requester.user_id, number)
        assert found is not None
        return {"etag": found["etag"], "count": found["count"]}

    async def get_keys(
        request: ApiRequest, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        number = _version(request.query_param("version"))
        if await store.get_backup_version(requester.user_id, number) is None:
            raise NotFound("Unknown backup version")
        found = await store.get_room_keys(requester.user_id, number, room_id, session_id)
        if session_id is not None and room_id is not None:
            data = found.get(room_id, {}).get(session_id)
            if data is None:
                raise NotFound("No such key")
            return data
        if room_id is not None:
            return {"sessions": found.get(room_id, {})}
        return {"rooms": {r: {"sessions": s} for r, s in found.items()}}

    async def delete_keys(
        request: ApiRequest, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        number = _version(request.query_param("version"))
        if await store.get_backup_version(requester.user_id, number) is None:
            raise NotFound("Unknown backup version")
        await store.delete_room_keys(requester.user_id, number, room_id, session_id)
        found = await store.get_backup_version(requester.user_id, number)
        assert found is not None
        return {"etag": found["etag"], "count": found["count"]}

    router.add("POST", f"{CLIENT}/keys/upload", upload)
    router.add("POST", f"{CLIENT}/keys/query", query)
    router.add("POST", f"{CLIENT}/keys/claim", claim)
    router.add("GET", f"{CLIENT}/keys/changes", changes)
    router.add("POST", f"{CLIENT}/keys/device_signing/upload", device_signing_upload)
    router.add("POST", f"{CLIENT}/keys/signatures/upload", signatures_upload)
    router.add("PUT", f"{CLIENT}/sendToDevice/{{event_type}}/{{txn_id}}", send_to_device)
    router.add("POST", f"{CLIENT}/room_keys/version", create_version)
    router.add("GET", f"{CLIENT}/room_keys/version", get_version)
    router.add("GET", f"{CLIENT}/room_keys/version/{{backup_version}}", get_version)
    router.add("PUT", f"{CLIENT}/room_keys/version/{{backup_version}}", update_version)
    router.add("DELETE", f"{CLIENT}/room_keys/version/{{backup_version}}", delete_version)
    for suffix in ("", "/{room_id}", "/{room_id}/{session_id}"):
        router.add("PUT", f"{CLIENT}/room_keys/keys{suffix}", put_keys)
        router.add("GET", f"{CLIENT}/room_keys/keys{suffix}", get_keys)
        router.add("DELETE", f"{CLIENT}/room_keys/keys{suffix}", delete_keys)
