"""Discovery: /versions, /.well-known/matrix/client, /capabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver import __version__
from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# Advertise only what works: clients switch features on by these (MATRIX-NOTES §0).
SPEC_VERSIONS = [
    "r0.6.1",
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
]
DEFAULT_ROOM_VERSION = "10"
ROOM_VERSIONS = {"10": "stable", "11": "stable"}


def register(router: Router, hs: "HomeServer") -> None:
    async def versions(request: ApiRequest) -> dict[str, Any]:
        return {"versions": SPEC_VERSIONS, "unstable_features": {}}

    async def well_known(request: ApiRequest) -> dict[str, Any]:
        return {"m.homeserver": {"base_url": hs.config.public_baseurl}}

    async def server_version(request: ApiRequest) -> dict[str, Any]:
        return {"server": {"name": "homeserver", "version": __version__}}

    async def capabilities(request: ApiRequest, version: str) -> dict[str, Any]:
        await require_user(hs, request)
        return {
            "capabilities": {
                "m.change_password": {"enabled": True},
                "m.room_versions": {"default": DEFAULT_ROOM_VERSION, "available": ROOM_VERSIONS},
                "m.set_displayname": {"enabled": True},
                "m.set_avatar_url": {"enabled": True},
                "m.3pid_changes": {"enabled": False},
                "m.get_login_token": {"enabled": False},
            }
        }

    router.add("GET", "/_matrix/client/versions", versions)
    router.add("GET", "/.well-known/matrix/client", well_known)
    router.add("GET", "/_homeserver/version", server_version)
    router.add("GET", f"{CLIENT}/capabilities", capabilities)
