"""Push notifications: delivery to pushers, a durable consumer of the committed-event stream
(plugins/push/delivery.py), email notifications of unread messages (email_notifier.py),
and the plugin's own push gateway (FCM, Web Push, forwarding).
See docs/push.md.

Imports only the plugin API (homeserver.plugins), its own modules and treq.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homeserver.plugins import PluginApi
from plugins.push.config import DeliveryConfig, parse_delivery_config
from plugins.push.delivery import Deliverer
from plugins.push.delivery_http import GatewayClient
from plugins.push.email_notifier import EmailNotifier


class PushPlugin:
    NAME = "push"
    SCHEMA_DIR = Path(__file__).parent / "sql"

    @staticmethod
    def parse_config(raw: Any) -> DeliveryConfig:
        return parse_delivery_config(raw)

    def __init__(self, config: DeliveryConfig, api: PluginApi) -> None:
        self.api = api
        self.config = config
        client = GatewayClient(
            api.reactor,
            api.clock,
            api.push_address_allowed,
            config.request_timeout_s,
            config.max_concurrent_requests,
        )
        self.email = EmailNotifier(api, config)
        self.delivery = Deliverer(api, config, client, self.email)

    async def start(self) -> None:
        if not self.api.runs("pusher"):
            return  # another worker process delivers (workers.pusher)
        await self.delivery.start()
        await self.email.start()
        # Durable: after a restart or a crash it resumes where its notifications were settled.
        await self.api.subscribe("delivery", self.delivery.on_batch, durable=True, job="pusher")

    async def stop(self) -> None:
        await self.delivery.stop()
        await self.email.stop()
