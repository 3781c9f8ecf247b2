"""The devices API: list, get, rename, delete (with user-interactive auth)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core import uia
from homeserver.errors import BadJson, NotFound
from homeserver.storage.devices import DeviceRow

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def device_json(row: DeviceRow) -> dict[str, Any]:
    body: dict[str, Any] = {"device_id": row.device_id}
    if row.display_name is not None:  # spec: absent if no name has been set
        body["display_name"] = row.display_name
    if row.last_seen_ts is not None:
        body["last_seen_ts"] = row.last_seen_ts
    if row.last_seen_ip is not None:
        body["last_seen_ip"] = row.last_seen_ip
    return body


def register(router: Router, hs: "HomeServer") -> None:
    async def list_devices(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"devices": [device_json(d) for d in await hs.storage.devices.get_devices(requester.user_id)]}

    async def get_device(request: ApiRequest, version: str, device_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        row = await hs.storage.devices.get_device(requester.user_id, device_id)
        if row is None:
            raise NotFound("Unknown device")
        return device_json(row)

    async def rename_device(request: ApiRequest, version: str, device_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        name = optional(body, "display_name", str)
        if name is not None and len(name) > 256:
            raise BadJson("'display_name' is too long")
        if await hs.storage.devices.get_device(requester.user_id, device_id) is None:
            raise NotFound("Unknown device")
        await hs.storage.devices.set_device_display_name(requester.user_id, device_id, name)
        return {}

    async def delete_device(request: ApiRequest, version: str, device_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body_or_empty()
        if await hs.storage.devices.get_device(requester.user_id, device_id) is None:
            raise NotFound("Unknown device")
        await hs.uia.authenticate(
            body.get("auth"), f"/devices/{device_id}", [[uia.PASSWORD]], expected_user=requester.user_id
        )
        await _delete(hs, requester.user_id, [device_id])
        return {}

    async def delete_devices(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        devices = required(body, "devices", list)
        if not all(isinstance(d, str) for d in devices):
            raise BadJson("'devices' must be a list of strings")
        await hs.uia.authenticate(
            body.get("auth"), "/delete_devices", [[uia.PASSWORD]], expected_user=requester.user_id
        )
        await _delete(hs, requester.user_id, devices)
        return {}

    router.add("GET", f"{CLIENT}/devices", list_devices)
    router.add("GET", f"{CLIENT}/devices/{{device_id}}", get_device)
    router.add("PUT", f"{CLIENT}/devices/{{device_id}}", rename_device)
    router.add("DELETE", f"{CLIENT}/devices/{{device_id}}", delete_device)
    router.add("POST", f"{CLIENT}/delete_devices", delete_devices)


async def _delete(hs: "HomeServer", user_id: str, device_ids: list[str]) -> None:
    await hs.accounts.delete_devices(user_id, device_ids)
