"""TURN credentials for calls (spec: Client-Server API, Voice over IP).

matrix-js-sdk asks `GET /voip/turnServer` at start and every few minutes. Without a
TURN server the answer is `{}` (as Synapse gives), so clients fall back to STUN-less
peer-to-peer; a calls plugin supplies real credentials through
`PluginApi.set_turn_provider`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

TurnProvider = Callable[[str], Awaitable[dict[str, Any]]]


class VoipService:
    def __init__(self) -> None:
        self.provider: TurnProvider | None = None
        # MatrixRTC (MSC4143) SFU foci a plugin advertises in /.well-known/matrix/client.
        self.rtc_foci: list[dict[str, Any]] = []

    def well_known_client(self, base_url: str) -> dict[str, Any]:
        """`/.well-known/matrix/client`: the homeserver, and the group-call foci if any."""
        answer: dict[str, Any] = {"m.homeserver": {"base_url": base_url}}
        if self.rtc_foci:
            answer["org.matrix.msc4143.rtc_foci"] = [dict(f) for f in self.rtc_foci]
        return answer

    async def turn_server(self, user_id: str) -> dict[str, Any]:
        """`{username, password, uris, ttl}` from the provider, or `{}` without one."""
        if self.provider is None:
            return {}
        return await self.provider(user_id)
