"""Server-side key backup (spec: Client-Server API, Server-side key backups).

The server keeps what clients encrypted for themselves: backup versions (an
algorithm and its public auth data) and per-session key data it cannot read.
Writes go to the current version only (M_WRONG_ROOM_KEYS_VERSION otherwise).
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import BadJson, InvalidParam, MatrixError, NotFound
from homeserver.storage import Storage

JsonDict = dict[str, Any]
# Versions are counted from 1 per user; more digits than this cannot name one.
_MAX_VERSION_DIGITS = 9


def parse_version(raw: str | None) -> int:
    """A backup version as the path or `?version=` gives it; M_NOT_FOUND if it cannot be one."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_VERSION_DIGITS:
        raise NotFound("Unknown backup version")
    return int(raw)


def _sessions(room_id: str, raw: Any) -> list[tuple[str, str, JsonDict]]:
    if not isinstance(raw, dict):
        raise BadJson("'sessions' must be an object")
    out = []
    for session_id, data in raw.items():
        if not isinstance(data, dict) or not isinstance(data.get("session_data"), dict):
            raise BadJson("Each key needs 'session_data'")
        # KeyBackupData: counts are non-negative integers, is_verified a boolean
        # (stored in integer and boolean columns: anything else was a 500).
        for name in ("first_message_index", "forwarded_count"):
            value = data.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
                raise BadJson(f"'{name}' must be a non-negative integer")
        if not isinstance(data.get("is_verified", False), bool):
            raise BadJson("'is_verified' must be a boolean")
        out.append((room_id, str(session_id), data))
    return out


def _keys_in(body: JsonDict, room_id: str | None, session_id: str | None) -> list[tuple[str, str, JsonDict]]:
    """The (room, session, key data) a PUT body holds, by how much the path named."""
    if session_id is not None and room_id is not None:
        return _sessions(room_id, {session_id: body})
    if room_id is not None:
        return _sessions(room_id, body.get("sessions"))
    rooms = body.get("rooms")
    if not isinstance(rooms, dict):
        raise BadJson("'rooms' must be an object")
    return [
        s
        for r, data in rooms.items()
        for s in _sessions(r, data.get("sessions") if isinstance(data, dict) else None)
    ]


class KeyBackupService:
    def __init__(self, storage: Storage) -> None:
        self.store = storage.e2ee

    # Versions ----------------------------------------------------------------------------------

    async def create_version(self, user_id: str, algorithm: object, auth_data: object) -> str:
        if not isinstance(algorithm, str) or not isinstance(auth_data, dict):
            raise BadJson("'algorithm' and 'auth_data' are required")
        return str(await self.store.create_backup_version(user_id, algorithm, auth_data))

    async def get_version(self, user_id: str, raw_version: str | None) -> JsonDict:
        """The named version, or the current one when `raw_version` is None."""
        number = parse_version(raw_version) if raw_version is not None else None
        found = await self.store.get_backup_version(user_id, number)
        if found is None:
            raise NotFound("No current backup version")
        return found

    async def update_version(self, user_id: str, raw_version: str, body: JsonDict) -> None:
        found = await self.store.get_backup_version(user_id, parse_version(raw_version))
        if found is None:
            raise NotFound("Unknown backup version")
        if body.get("algorithm") != found["algorithm"]:
            raise InvalidParam("The algorithm cannot change")
        if "version" in body and str(body["version"]) != found["version"]:
            raise InvalidParam("The version in the body does not match")
        if not isinstance(body.get("auth_data"), dict):
            raise BadJson("'auth_data' is required")
        await self.store.update_backup_version(user_id, int(found["version"]), body["auth_data"])

    async def delete_version(self, user_id: str, raw_version: str) -> None:
        if not await self.store.delete_backup_version(user_id, parse_version(raw_version)):
            raise NotFound("Unknown backup version")

    async def _current(self, user_id: str, raw_version: str | None) -> int:
        version = parse_version(raw_version)
        current = await self.store.get_backup_version(user_id, None)
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

    async def _existing(self, user_id: str, raw_version: str | None) -> int:
        version = parse_version(raw_version)
        if await self.store.get_backup_version(user_id, version) is None:
            raise NotFound("Unknown backup version")
        return version

    async def _count(self, user_id: str, version: int) -> JsonDict:
        found = await self.store.get_backup_version(user_id, version)
        assert found is not None
        return {"etag": found["etag"], "count": found["count"]}

    # Keys ----------------------------------------------------------------------------------------

    async def put_keys(
        self,
        user_id: str,
        raw_version: str | None,
        room_id: str | None,
        session_id: str | None,
        body: JsonDict,
    ) -> JsonDict:
        version = await self._current(user_id, raw_version)
        if not await self.store.put_room_keys(user_id, version, _keys_in(body, room_id, session_id)):
            # Deleted since `_current` looked (a client resetting its backup): no longer current.
            await self._current(user_id, raw_version)
            raise NotFound("Unknown backup version")
        return await self._count(user_id, version)

    async def get_keys(
        self, user_id: str, raw_version: str | None, room_id: str | None, session_id: str | None
    ) -> JsonDict:
        version = await self._existing(user_id, raw_version)
        found = await self.store.get_room_keys(user_id, version, room_id, session_id)
        if session_id is not None and room_id is not None:
            data = found.get(room_id, {}).get(session_id)
            if data is None:
                raise NotFound("No such key")
            return data
        if room_id is not None:
            return {"sessions": found.get(room_id, {})}
        return {"rooms": {r: {"sessions": s} for r, s in found.items()}}

    async def delete_keys(
        self, user_id: str, raw_version: str | None, room_id: str | None, session_id: str | None
    ) -> JsonDict:
        version = await self._existing(user_id, raw_version)
        await self.store.delete_room_keys(user_id, version, room_id, session_id)
        return await self._count(user_id, version)
