"""The calls plugin: what a homeserver adds to Matrix calls.

- TURN credentials for `GET /_matrix/client/v3/voip/turnServer` in coturn's REST-API
  scheme, so calls connect across NATs (`turn` in its config; without uris the
  answer stays `{}`).

Call signalling itself needs nothing from the server: `m.call.*` events are ordinary
room events. It imports only `homeserver.plugins`, the plugin interface. See docs/calls.md.
"""

from __future__ import annotations

from typing import Any

from homeserver.plugins import PluginApi
from plugins.calls.config import CallsConfig, parse_calls_config
from plugins.calls.turn import turn_credentials


class CallsPlugin:
    NAME = "calls"

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> CallsConfig:
        return parse_calls_config(raw)

    def __init__(self, config: CallsConfig, api: PluginApi) -> None:
        self.config = config
        self.api = api

    async def start(self) -> None:
        if self.config.turn.enabled:
            self.api.set_turn_provider(self.turn_server)

    async def turn_server(self, user_id: str) -> dict[str, Any]:
        return turn_credentials(self.config.turn, user_id, self.api.clock.seconds())
