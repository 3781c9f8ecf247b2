"""Forwarding to another Matrix push gateway: the same notification, with only the
devices of this app, POSTed to its notify URL; its `rejected` pushkeys come back (only
those that were sent there: another gateway cannot reject pushers it was not given)."""

from __future__ import annotations

import json

from twisted.internet.interfaces import IReactorTime

from homeserver.plugins import PluginApi
from plugins.push.gateway.config import ForwardApp, RetryPolicy
from plugins.push.gateway.dispatch import Failed, TryAgain, with_retries
from plugins.push.gateway.notification import Device, Notification
from plugins.push.gateway.outbound import BlockedAddress, IpPolicy, Unreachable, post


class ForwardSender:
    def __init__(
        self,
        config: ForwardApp,
        api: PluginApi,
        clock: IReactorTime,
        retry: RetryPolicy,
        timeout_s: float,
        policy: IpPolicy,
    ) -> None:
        self.config = config
        self.api = api
        self.clock = clock
        self.retry = retry
        self.timeout_s = timeout_s
        self.policy = policy

    async def send(self, notification: Notification, devices: list[Device]) -> list[str]:
        body = json.dumps(notification.body_for(devices)).encode()
        headers = {"Content-Type": "application/json"}
        sent = {d.pushkey for d in devices}

        async def attempt() -> list[str]:
            try:
                answer = await self.api.run_blocking(
                    post, self.config.url, body, headers, self.timeout_s, self.policy
                )
            except BlockedAddress as e:
                raise Failed(f"forward: {e}") from None
            except Unreachable as e:
                raise TryAgain(f"forward: {e}") from None
            if answer.status == 429 or answer.status >= 500:
                raise TryAgain(f"forward: {self.config.url} answered {answer.status}")
            if answer.status != 200:
                raise Failed(f"forward: {self.config.url} answered {answer.status}: {answer.body[:200]!r}")
            try:
                rejected = json.loads(answer.body).get("rejected", [])
            except (ValueError, AttributeError, RecursionError):
                raise Failed(f"forward: {self.config.url} answered 200 without a JSON object") from None
            if not isinstance(rejected, list):
                raise Failed(f"forward: {self.config.url} answered a 'rejected' that is not a list")
            return [key for key in rejected if isinstance(key, str) and key in sent]

        return await with_retries(self.clock, self.retry, attempt)
