"""FCM HTTP v1 through firebase-admin: the message built from a notification, its errors
mapped to rejected pushkeys, tries again or failures.

A data message (the app's own code shows it, as Element Android does): every value a
string, as FCM requires. The content of an encrypted event is never included (the
homeserver leaves it out already; this does not add it back even if it came), and when
the data would pass FCM's 4096-byte limit the content is dropped first.
"""

from __future__ import annotations

import json
from typing import Any

import firebase_admin
from firebase_admin import credentials, exceptions, messaging
from google.auth import exceptions as auth_exceptions
from twisted.internet.interfaces import IReactorTime

from homeserver.plugins import PluginApi
from plugins.push.gateway.config import FcmApp, RetryPolicy
from plugins.push.gateway.dispatch import Failed, TryAgain, each_device, with_retries
from plugins.push.gateway.firebase_internals import prepare_messaging
from plugins.push.gateway.notification import STRING_FIELDS, Device, Notification

# FCM refuses a data payload over 4096 bytes (keys and values).
MAX_DATA_BYTES = 4096
_TRY_AGAIN = (
    exceptions.UnavailableError,
    exceptions.InternalError,
    exceptions.DeadlineExceededError,
    exceptions.ResourceExhaustedError,  # QUOTA_EXCEEDED
    exceptions.UnknownError,  # no HTTP answer at all
)


def fcm_data(notification: Notification, device: Device) -> dict[str, str]:
    """The data payload for one device (all values strings)."""
    data: dict[str, str] = {}
    default = device.data.get("default_payload")
    if isinstance(default, dict):
        # Keys FCM reserves would make it refuse every message to this pusher, for ever.
        data.update({str(k): _text(v) for k, v in default.items() if not _reserved(str(k))})
    for key in STRING_FIELDS:
        if notification.get(key):
            data[key] = notification.get(key)
    if notification.get("user_is_target") is not None:
        data["user_is_target"] = _text(notification.get("user_is_target"))
    data["prio"] = notification.prio
    counts = notification.get("counts") or {}
    for key in ("unread", "missed_calls"):
        if counts.get(key) is not None:
            data[key] = str(counts[key])
    content = notification.get("content")
    if content and not notification.encrypted:
        with_content = {**data, "content": _text(content)}
        if _size(with_content) <= MAX_DATA_BYTES:
            data = with_content
    # Display names and room names are user-chosen and may be long.
    for key in ("room_name", "sender_display_name", "room_alias"):
        if _size(data) > MAX_DATA_BYTES:
            data.pop(key, None)
    return data


def _reserved(key: str) -> bool:
    return key in ("from", "notification", "message_type") or key.startswith(("google.", "gcm."))


def fcm_message(notification: Notification, device: Device) -> messaging.Message:
    priority = "high" if notification.prio == "high" else "normal"
    message = messaging.Message(
        data=fcm_data(notification, device), android=messaging.AndroidConfig(priority=priority)
    )
    # firebase-admin 7.x deprecates the `token` argument for `fid` (an installation id), but the
    # pushkey Matrix clients register is a registration token, which FCM takes as `token`; set
    # after construction, it is sent the same without a warning per message.
    message.token = device.pushkey
    return message


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _size(data: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in data.items())


def is_rejection(error: exceptions.FirebaseError) -> bool:
    """Whether FCM says this token will never work: UNREGISTERED, or (as Sygnal also
    treats it) INVALID_ARGUMENT about the token itself."""
    if isinstance(error, messaging.UnregisteredError):
        return True
    if not isinstance(error, exceptions.InvalidArgumentError):
        return False
    try:
        details = error.http_response.json()["error"].get("details", [])
    except Exception:
        return False
    for detail in details:
        for violation in detail.get("fieldViolations", []) if isinstance(detail, dict) else []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return "registration token" in str(error).lower()


class FcmSender:
    def __init__(
        self,
        app_id: str,
        config: FcmApp,
        api: PluginApi,
        clock: IReactorTime,
        retry: RetryPolicy,
        timeout_s: float,
    ) -> None:
        self.app_id = app_id
        self.config = config
        self.api = api
        self.clock = clock
        self.retry = retry
        self.timeout_s = timeout_s
        self.app: firebase_admin.App | None = None

    def open(self) -> None:
        """Read the service account and make the firebase-admin app (blocking: a file)."""
        credential = credentials.Certificate(str(self.config.service_account_file))
        # Apps are named globally in firebase-admin: one per gateway instance and app id.
        name = f"push_gateway.{self.app_id}.{id(self)}"
        self.app = firebase_admin.initialize_app(credential, {"httpTimeout": self.timeout_s}, name=name)
        prepare_messaging(self.app, self.config.endpoint)

    def close(self) -> None:
        if self.app is not None:
            firebase_admin.delete_app(self.app)
            self.app = None

    async def send(self, notification: Notification, devices: list[Device]) -> list[str]:
        return await each_device(devices, lambda device: self._deliver(notification, device))

    async def _deliver(self, notification: Notification, device: Device) -> bool:
        message = fcm_message(notification, device)

        async def attempt() -> bool:
            try:
                await self.api.run_blocking(messaging.send, message, False, self.app)
            except exceptions.FirebaseError as e:
                if is_rejection(e):
                    return True
                if isinstance(e, _TRY_AGAIN):
                    raise TryAgain(f"FCM: {e.code}: {e}") from None
                raise Failed(f"FCM: {e.code}: {e}") from None
            except auth_exceptions.GoogleAuthError as e:
                # The OAuth token endpoint (the service account's token_uri) failed.
                if isinstance(e, auth_exceptions.TransportError) or getattr(e, "retryable", False):
                    raise TryAgain(f"FCM credentials: {e}") from None
                raise Failed(f"FCM credentials: {e}") from None
            return False

        return await with_retries(self.clock, self.retry, attempt)
