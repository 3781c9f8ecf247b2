"""A user's devices: list, rename, and delete (proven by the account password).

Deleting goes through `AccountService.delete_devices`, which also revokes the
devices' tokens and tells the listeners (their E2EE keys go too).
"""

from __future__ import annotations

from typing import Any

from homeserver.core import uia
from homeserver.core.accounts import AccountService
from homeserver.errors import BadJson, NotFound
from homeserver.storage import Storage
from homeserver.storage.devices import DeviceRow

# The API layer renders devices; it may not import storage, so the type is reached from here.
Device = DeviceRow

_MAX_DISPLAY_NAME = 256


class DeviceService:
    def __init__(self, storage: Storage, accounts: AccountService, auth: uia.InteractiveAuth) -> None:
        self.storage = storage
        self.accounts = accounts
        self.uia = auth

    async def list_devices(self, user_id: str) -> list[Device]:
        return await self.storage.devices.get_devices(user_id)

    async def device_ids(self, user_id: str) -> list[str]:
        return [d.device_id for d in await self.storage.devices.get_devices(user_id)]

    async def get(self, user_id: str, device_id: str) -> Device:
        row = await self.storage.devices.get_device(user_id, device_id)
        if row is None:
            raise NotFound("Unknown device")
        return row

    async def rename(self, user_id: str, device_id: str, name: str | None) -> None:
        if name is not None and len(name) > _MAX_DISPLAY_NAME:
            raise BadJson("'display_name' is too long")
        await self.get(user_id, device_id)
        await self.storage.devices.set_device_display_name(user_id, device_id, name)

    async def delete(self, user_id: str, device_id: str, auth: Any) -> None:
        await self.get(user_id, device_id)
        await self.uia.authenticate(auth, f"/devices/{device_id}", [[uia.PASSWORD]], expected_user=user_id)
        await self.accounts.delete_devices(user_id, [device_id])

    async def delete_many(self, user_id: str, device_ids: list[str], auth: Any) -> None:
        await self.uia.authenticate(auth, "/delete_devices", [[uia.PASSWORD]], expected_user=user_id)
        await self.accounts.delete_devices(user_id, device_ids)
