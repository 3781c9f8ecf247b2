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

# How long the delivery waits after a batch for the events of that time (a push a few ms later
# is nothing beside a gateway's own delay, or the wait for a connected device's receipt).
DELIVERY_GATHER_S = 0.002


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
        # Idempotent: an event handed over again is skipped for every pusher that settled it
        # (push_progress) and a mailed one is not mailed again, so the stream writes no
        # position per batch: two commits a message at a steady rate (W2 at 500 msg/s:
        # 2.1 ms of CPU a message with them, docs/latency.md). Gathering: a notification's
        # work is per pusher and batch, so a big room's events come a few at a time.
        await self.api.subscribe(
            "delivery",
            self.delivery.on_batch,
            durable=True,
            job="pusher",
            idempotent=True,
            gather_s=DELIVERY_GATHER_S,
        )

    async def stop(self) -> None:
        await self.delivery.stop()
        await self.email.stop()
