"""The devices API: list, get, rename, delete (with user-interactive auth)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router
from homeserver.api.validate import optional, required
from homeserver.core.devices import Device
from homeserver.errors import BadJson

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def device_json(device: Device) -> dict[str, Any]:
    body: dict[str, Any] = {"device_id": device.device_id}
    if device.display_name is not None:  # spec: absent if no name has been set
        body["display_name"] = device.display_name
    if device.last_seen_ts is not None:
        body["last_seen_ts"] = device.last_seen_ts
    if device.last_seen_ip is not None:
        body["last_seen_ip"] = device.last_seen_ip
    return body


def register(router: Router, hs: "HomeServer") -> None:
    devices = hs.devices

    async def list_devices(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return {"devices": [device_json(d) for d in await devices.list_devices(requester.user_id)]}

    async def get_device(request: ApiRequest, version: str, device_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return device_json(await devices.get(requester.user_id, device_id))

    async def rename_device(request: ApiRequest, version: str, device_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        name = optional(request.json_body(), "display_name", str)
        await devices.rename(requester.user_id, device_id, name)
        return {}

    async def delete_device(request: ApiRequest, version: str, device_id: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body_or_empty()
        await devices.delete(requester.user_id, device_id, body.get("auth"))
        return {}

    async def delete_devices(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        body = request.json_body()
        device_ids = required(body, "devices", list)
        if not all(isinstance(d, str) for d in device_ids):
            raise BadJson("'devices' must be a list of strings")
        await devices.delete_many(requester.user_id, device_ids, body.get("auth"))
        return {}

    router.add("GET", f"{CLIENT}/devices", list_devices)
    router.add("GET", f"{CLIENT}/devices/{{device_id}}", get_device)
    router.add("PUT", f"{CLIENT}/devices/{{device_id}}", rename_device)
    router.add("DELETE", f"{CLIENT}/devices/{{device_id}}", delete_device)
    router.add("POST", f"{CLIENT}/delete_devices", delete_devices)
