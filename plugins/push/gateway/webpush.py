"""Web Push (RFC 8030) with message encryption (RFC 8291, aes128gcm) and VAPID (RFC 8292).

The pusher convention is Sygnal's: the pushkey is the subscription's `p256dh` public key
(base64url), `data.endpoint` its push service URL and `data.auth` its auth secret. A
pusher without them, or whose endpoint host is not allowed, is rejected. The payload is
the notification's fields and counts as JSON (the content of an encrypted event never
included), after the pusher's `data.default_payload`. A push service's 404 or 410 means
the subscription is gone: the pushkey is rejected.

A counts-only notification (no `event_id`: a homeserver's badge update after a read
receipt) is not sent: browsers subscribe with `userVisibleOnly`, so each push must show a
notification (else the browser shows its own "updated in the background"), and there is
no message to show. The page sets the badge from its sync while open.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.interfaces import IReactorTime

from homeserver.plugins import PluginApi, PluginConfigError
from plugins.push.gateway.config import RetryPolicy, WebPushApp
from plugins.push.gateway.dispatch import Failed, TryAgain, each_device, with_retries
from plugins.push.gateway.notification import STRING_FIELDS, Device, Notification
from plugins.push.gateway.outbound import BlockedAddress, IpPolicy, Unreachable, post

# RFC 8291 section 4: a push service must accept 4096 bytes of payload; with the 86-byte
# aes128gcm header, the tag and the padding delimiter, 3993 bytes of plaintext fit.
MAX_PLAINTEXT = 3993
# RFC 8292 section 2: the JWT must expire within 24 hours; 12 h as most senders use.
VAPID_LIFETIME_S = 12 * 3600


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_vapid_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in a PEM file (PKCS#8 or SEC 1), or PluginConfigError."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise PluginConfigError(f"VAPID key {path}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PluginConfigError(f"VAPID key {path}: not a P-256 (prime256v1) key")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as clients pass it to PushManager.subscribe (and as `k=`)."""
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(raw)


def webpush_payload(notification: Notification, device: Device) -> bytes:
    """The JSON the service worker receives, at most MAX_PLAINTEXT bytes."""
    payload: dict[str, Any] = {}
    default = device.data.get("default_payload")
    if isinstance(default, dict):
        payload.update(default)
    for key in STRING_FIELDS:
        if notification.get(key):
            payload[key] = notification.get(key)
    if notification.get("user_is_target") is not None:
        payload["user_is_target"] = notification.get("user_is_target")
    payload["prio"] = notification.prio
    counts = notification.get("counts") or {}
    for key in ("unread", "missed_calls"):
        if counts.get(key) is not None:
            payload[key] = counts[key]
    content = notification.get("content")
    if content and not notification.encrypted:
        payload["content"] = content
    for key in ("content", "room_name", "sender_display_name", "room_alias"):
        if len(_encode(payload)) <= MAX_PLAINTEXT:
            break
        payload.pop(key, None)
    return _encode(payload)


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def encrypt(payload: bytes, dh: bytes, auth_secret: bytes) -> bytes:
    """RFC 8291 with a fresh ephemeral key and salt (section 3.1), one aes128gcm record."""
    return bytes(
        http_ece.encrypt(
            payload,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=dh,
            auth_secret=auth_secret,
            version="aes128gcm",
        )
    )


def vapid_header(key: ec.EllipticCurvePrivateKey, endpoint: str, contact: str, now: float) -> str:
    """RFC 8292 section 3: `vapid t=<ES256 JWT>, k=<public key>`, audience the endpoint's origin."""
    parts = urlsplit(endpoint)
    claims = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(now) + VAPID_LIFETIME_S, "sub": contact}
    import jwt  # on first use, like the core's tokens: a faster start

    token = jwt.encode(claims, key, algorithm="ES256")
    return f"vapid t={token}, k={application_server_key(key)}"


class WebPushSender:
    def __init__(
        self,
        config: WebPushApp,
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
        self.key = load_vapid_key(config.vapid_private_key)

    async def send(self, notification: Notification, devices: list[Device]) -> list[str]:
        return await each_device(devices, lambda device: self._deliver(notification, device))

    def _subscription(self, device: Device) -> tuple[str, bytes, bytes] | None:
        """(endpoint, p256dh, auth) of a well-formed, allowed subscription, else None."""
        endpoint, auth = device.data.get("endpoint"), device.data.get("auth")
        if not isinstance(endpoint, str) or not isinstance(auth, str):
            return None
        try:
            parts = urlsplit(endpoint)
            dh, secret = b64url_decode(device.pushkey), b64url_decode(auth)
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), dh)
        except (ValueError, binascii.Error):
            return None
        if parts.scheme not in ("https", "http") or not parts.hostname or len(secret) != 16:
            return None
        patterns = self.config.allowed_endpoints
        if patterns and not any(fnmatch.fnmatchcase(parts.hostname.lower(), p) for p in patterns):
            return None
        return endpoint, dh, secret

    async def _deliver(self, notification: Notification, device: Device) -> bool:
        subscription = self._subscription(device)
        if subscription is None:
            return True
        if not notification.get("event_id"):
            return False  # counts only: nothing to show (above), done
        endpoint, dh, secret = subscription
        high = notification.prio == "high"
        # ECDH and a key pair per message: CPU work, off the reactor thread.
        body = await self.api.run_blocking(encrypt, webpush_payload(notification, device), dh, secret)
        ttl_ms = self.config.ttl_ms if high else self.config.low_priority_ttl_ms

        async def attempt() -> bool:
            headers = {
                "Authorization": vapid_header(
                    self.key,
                    endpoint,
                    self.config.vapid_contact,
                    self.clock.seconds(),  # type: ignore[misc] # zope interface method
                ),
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "TTL": str(ttl_ms // 1000),
                # RFC 8030 section 5.3: "high" may wake the device; "normal" waits for it.
                "Urgency": "high" if high else "normal",
            }
            try:
                answer = await self.api.run_blocking(
                    post, endpoint, body, headers, self.timeout_s, self.policy
                )
            except BlockedAddress:
                return True  # a subscription that points inside the network is no subscription
            except Unreachable as e:
                raise TryAgain(f"Web Push: {e}") from None
            if answer.status in (200, 201, 202):
                return False
            if answer.status in (404, 410):
                return True
            if answer.status == 429 or answer.status >= 500:
                raise TryAgain(f"Web Push: {urlsplit(endpoint).netloc} answered {answer.status}")
            raise Failed(
                f"Web Push: {urlsplit(endpoint).netloc} answered {answer.status}: {answer.body[:200]!r}"
            )

        return await with_retries(self.clock, self.retry, attempt)
