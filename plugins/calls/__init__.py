"""The calls plugin: what a homeserver adds to Matrix calls.

- TURN credentials for `GET /_matrix/client/v3/voip/turnServer` in coturn's REST-API
  scheme, so calls connect across NATs (`turn` in its config; without uris the
  answer stays `{}`);
- a LiveKit focus for MatrixRTC group calls in `/.well-known/matrix/client`
  (`org.matrix.msc4143.rtc_foci`), when `group_calls.livekit_service_url` is set;
- the call log (call_log.py) from the call events the server can read, as
  `GET /api/calls` (paged, only the caller's own calls) and metrics by outcome.

Call signalling itself needs nothing from the server: `m.call.*` events are ordinary
room events. It imports only `homeserver.plugins`, the plugin interface. See docs/calls.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homeserver.plugins import ApiRequest, MatrixError, PluginApi, Requester
from plugins.calls.call_log import CallLog
from plugins.calls.config import CallsConfig, parse_calls_config
from plugins.calls.turn import turn_credentials


class CallsPlugin:
    NAME = "calls"
    PATH_PREFIXES = ("/api/calls",)
    SCHEMA_DIR = Path(__file__).parent / "sql"

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> CallsConfig:
        return parse_calls_config(raw)

    def __init__(self, config: CallsConfig, api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.log = CallLog(api)

    async def start(self) -> None:
        if self.config.turn.enabled:
            self.api.set_turn_provider(self.turn_server)
        if self.config.livekit_service_url:
            self.api.set_rtc_foci(
                [{"type": "livekit", "livekit_service_url": self.config.livekit_service_url}]
            )
        self.api.register_route("GET", "/api/calls", self.list_calls)
        await self.log.start()

    async def turn_server(self, user_id: str) -> dict[str, Any]:
        return turn_credentials(self.config.turn, user_id, self.api.clock.seconds())

    async def list_calls(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        """`GET /api/calls?limit=&before=&chatId=`: the requester's calls, newest first."""
        limit = request.int_param("limit", 50)
        if limit < 1:
            raise MatrixError("'limit' must be at least 1", "M_INVALID_PARAM", status=400)
        raw_before = request.query_param("before")
        before: int | None = None
        if raw_before:
            if not raw_before.isascii() or not raw_before.isdigit() or len(raw_before) > 18:
                raise MatrixError(
                    "'before' must be a cursor from a previous page", "M_INVALID_PARAM", status=400
                )
            before = int(raw_before)
        chat_id = request.query_param("chatId") or None
        if chat_id is not None and await self.api.room_membership(chat_id, requester.user_id) is None:
            raise MatrixError("You are not in this chat", "M_FORBIDDEN", status=403)
        return await self.log.page(requester.user_id, chat_id, before, limit)
