"""Discovery: /versions, /.well-known/matrix/client, /capabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from homeserver import __version__
from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.client.spec_versions import supported_versions
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = Logger()

DEFAULT_ROOM_VERSION = "10"
ROOM_VERSIONS = {"10": "stable", "11": "stable", "12": "stable"}


def unstable_features(encrypt_by_default: str) -> dict[str, bool]:
    """MSC feature flags (MSC1497) for what this server does; clients gate code paths on them."""
    private = encrypt_by_default in ("all", "invite")
    return {
        # Cross-signing (MSC1756): Element Web before 1.11.x skips its set-up without it.
        "org.matrix.e2e_cross_signing": True,
        # GET /rooms/{roomId}/aliases, also at its unstable path (MSC2432).
        "org.matrix.msc2432": True,
        # m.read.private receipts (MSC2285) and receipts per thread (MSC3771).
        "org.matrix.msc2285.stable": True,
        "org.matrix.msc3771": True,
        # Which createRoom presets start encrypted (config encryption.enabled_by_default_for_room_type).
        "io.element.e2ee_forced.public": encrypt_by_default == "all",
        "io.element.e2ee_forced.private": private,
        "io.element.e2ee_forced.trusted_private": private,
        # Simplified sliding sync (MSC4186), the only sync Element X speaks.
        "org.matrix.simplified_msc3575": True,
        # GET /v1/room_summary (MSC3266, stable in v1.15, which we do not advertise): without
        # the flag matrix-js-sdk asks the old im.nheko.summary path.
        "org.matrix.msc3266": True,
    }


def register(router: Router, hs: "HomeServer") -> None:
    answer: dict[str, Any] = {}

    async def versions(request: ApiRequest) -> dict[str, Any]:
        # Computed on the first request: plugins' routes (media) exist only once they started.
        if not answer:
            advertised, cut = supported_versions(router.serves)
            if cut is not None:
                log.info("/versions stops at {last}: {cut} is not served", last=advertised[-1], cut=cut)
            answer["versions"] = advertised
            answer["unstable_features"] = unstable_features(
                hs.config.encryption.enabled_by_default_for_room_type
            )
        return answer

    async def well_known(request: ApiRequest) -> dict[str, Any]:
        return hs.voip.well_known_client(hs.config.public_baseurl)

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
