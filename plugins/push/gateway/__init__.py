"""The push plugin's own Matrix push gateway, so operators need no separate Sygnal.

Serves POST /_matrix/push/v1/notify (spec: Push Gateway API) without Matrix auth, as
homeservers call it; its body is bounded (`max_body_size`) and checked strictly. Each
device goes to the app its `app_id` names in the config: FCM HTTP v1 (fcm.py), Web Push
with VAPID (webpush.py) or another gateway (forward.py); unknown app ids are rejected.
The answer lists the pushkeys the services said are gone; a delivery that failed after
its retries makes it 502, so the homeserver tries again later. A plugin of its own
(plugins.push.gateway.PushGatewayPlugin), so it can run on this server or alone.
See docs/push-gateway.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.plugins import ApiRequest, PluginApi, PluginConfigError
from plugins.push.gateway.config import FcmApp, ForwardApp, GatewayConfig, WebPushApp, parse_gateway_config
from plugins.push.gateway.dispatch import Gateway, Sender
from plugins.push.gateway.forward import ForwardSender
from plugins.push.gateway.notification import parse_notify_body
from plugins.push.gateway.outbound import IpPolicy

if TYPE_CHECKING:
    from homeserver.plugins import Requester
    from plugins.push.gateway.fcm import FcmSender

NOTIFY_PATH = "/_matrix/push/v1/notify"
# What a web client needs to subscribe (docs/push-gateway.md, "Web clients").
WEBPUSH_INFO_PATH = "/_plugins/push_gateway/webpush"


class PushGatewayPlugin:
    NAME = "push_gateway"
    PATH_PREFIXES = ("/_matrix/push/", "/_plugins/push_gateway/")

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> GatewayConfig:
        return parse_gateway_config(raw)

    def __init__(self, config: GatewayConfig, api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.fcm: list[FcmSender] = []
        self.gateway = Gateway({})
        self.webpush_keys: dict[str, str] = {}
        self.devices = api.counter(
            "devices", "Devices in notify requests, by app id and outcome", ("app_id", "outcome")
        )

    async def start(self) -> None:
        config, api = self.config, self.api
        timeout_s = config.timeout_ms / 1000
        policy = IpPolicy(config.ip_range_blacklist, config.ip_range_whitelist)
        senders: dict[str, Sender] = {}
        for app_id, app in config.apps.items():
            if isinstance(app, FcmApp):
                # firebase-admin (and google-auth, requests) only when an FCM app is configured:
                # a tenth of a second less at every start without one.
                from plugins.push.gateway.fcm import FcmSender

                fcm = FcmSender(app_id, app, api, api.reactor, config.retry, timeout_s)
                try:
                    await api.run_blocking(fcm.open)
                except Exception as e:
                    raise PluginConfigError(
                        f"apps.{app_id}: cannot use the FCM service account: {e}"
                    ) from None
                self.fcm.append(fcm)
                senders[app_id] = fcm
            elif isinstance(app, WebPushApp):
                # http_ece and cryptography likewise only with a Web Push app (~20 ms).
                from plugins.push.gateway.webpush import WebPushSender, application_server_key

                webpush = WebPushSender(app, api, api.reactor, config.retry, timeout_s, policy)
                self.webpush_keys[app_id] = application_server_key(webpush.key)
                senders[app_id] = webpush
            elif isinstance(app, ForwardApp):
                senders[app_id] = ForwardSender(app, api, api.reactor, config.retry, timeout_s, policy)
        self.gateway = Gateway(senders)
        api.set_body_limit("/_matrix/push/", config.max_body_size)
        api.register_route("POST", NOTIFY_PATH, self.notify, require_auth=False)
        api.register_route("GET", WEBPUSH_INFO_PATH, self.webpush_info)

    async def stop(self) -> None:
        for fcm in self.fcm:
            # firebase-admin closes its async client with asyncio.run: not on the reactor thread.
            await self.api.run_blocking(fcm.close)

    async def webpush_info(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        """The Web Push apps' public keys (PushManager's applicationServerKey) and the notify
        path to use as the pusher's `data.url` on this server. Signed-in users only: nothing
        secret, but no need to tell the world which apps this gateway serves."""
        apps = [{"app_id": a, "application_server_key": k} for a, k in self.webpush_keys.items()]
        return {"apps": apps, "notify_path": NOTIFY_PATH}

    async def notify(self, request: ApiRequest) -> dict[str, Any]:
        notification = parse_notify_body(request.json_body())
        try:
            rejected = await self.gateway.notify(notification)
        except Exception:
            self._count(notification.devices, set(), "failed")
            raise
        self._count(notification.devices, set(rejected), "delivered")
        return {"rejected": rejected}

    def _count(self, devices: Any, rejected: set[str], outcome: str) -> None:
        for device in devices:
            app_id = device.app_id if device.app_id in self.config.apps else "unknown"
            self.devices.labels(app_id, "rejected" if device.pushkey in rejected else outcome).inc()
