"""A test plugin: TURN credentials for /voip/turnServer, as a calls plugin would give.

Loaded by tests/test_client_settings.py from tests/plugins (on PYTHONPATH). The
credentials name the user they were made for, so a test can see whose they are.
"""

from __future__ import annotations

from typing import Any

from homeserver.plugins import PluginApi


class TurnCredentials:
    NAME = "turn_credentials"

    def __init__(self, config: dict[str, Any], api: PluginApi) -> None:
        self.uris = list(config["uris"])
        api.set_turn_provider(self.credentials)

    async def credentials(self, user_id: str) -> dict[str, Any]:
        return {"username": f"1700000000:{user_id}", "password": "secret", "uris": self.uris, "ttl": 86400}
