"""The body of POST /_matrix/push/v1/notify (spec: Push Gateway API), checked strictly.

Known fields must have the spec's types (400 M_BAD_JSON / M_MISSING_PARAM otherwise);
fields the spec may add later are kept as they are, so a forward passes them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.plugins import MatrixError

# Spec (PusherData / Device): app_id at most 64 characters, pushkey at most 512 bytes.
MAX_APP_ID = 64
MAX_PUSHKEY_BYTES = 512
# The notification's string fields, each optional.
STRING_FIELDS = (
    "event_id",
    "room_id",
    "type",
    "sender",
    "sender_display_name",
    "room_name",
    "room_alias",
    "membership",
)
ENCRYPTED = "m.room.encrypted"


@dataclass(frozen=True)
class Device:
    app_id: str
    pushkey: str
    data: dict[str, Any]  # the pusher's `data` (format, endpoint, auth, default_payload...)
    raw: dict[str, Any]  # the device as received, for a forward


@dataclass(frozen=True)
class Notification:
    fields: dict[str, Any]  # everything but `devices`, as received
    devices: tuple[Device, ...]
    prio: str  # "high" or "low"

    def get(self, key: str) -> Any:
        return self.fields.get(key)

    @property
    def encrypted(self) -> bool:
        return self.fields.get("type") == ENCRYPTED

    def body_for(self, devices: list[Device]) -> dict[str, Any]:
        """The request body to pass this notification on, for `devices` only."""
        return {"notification": {**self.fields, "devices": [d.raw for d in devices]}}


def bad(message: str) -> MatrixError:
    return MatrixError(message, "M_BAD_JSON", status=400)


def parse_notify_body(body: dict[str, Any]) -> Notification:
    """The notification in a notify request's JSON object, or MatrixError (400)."""
    notification = body.get("notification")
    if notification is None:
        raise MatrixError("Missing 'notification'", "M_MISSING_PARAM", status=400)
    if not isinstance(notification, dict):
        raise bad("'notification' must be an object")
    for key in STRING_FIELDS:
        if notification.get(key) is not None and not isinstance(notification[key], str):
            raise bad(f"'notification.{key}' must be a string")
    if notification.get("user_is_target") is not None and not isinstance(
        notification["user_is_target"], bool
    ):
        raise bad("'notification.user_is_target' must be a boolean")
    prio = notification.get("prio", "high")
    if prio not in ("high", "low"):
        raise bad('\'notification.prio\' must be "high" or "low"')
    if notification.get("content") is not None and not isinstance(notification["content"], dict):
        raise bad("'notification.content' must be an object")
    counts = notification.get("counts")
    if counts is not None:
        if not isinstance(counts, dict):
            raise bad("'notification.counts' must be an object")
        for key in ("unread", "missed_calls"):
            value = counts.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise bad(f"'notification.counts.{key}' must be a non-negative integer")
    raw_devices = notification.get("devices")
    if raw_devices is None:
        raise MatrixError("Missing 'notification.devices'", "M_MISSING_PARAM", status=400)
    if not isinstance(raw_devices, list) or not raw_devices:
        raise bad("'notification.devices' must be a non-empty list")
    devices = tuple(_device(i, d) for i, d in enumerate(raw_devices))
    fields = {k: v for k, v in notification.items() if k != "devices"}
    return Notification(fields=fields, devices=devices, prio=prio)


def _device(index: int, raw: Any) -> Device:
    where = f"notification.devices[{index}]"
    if not isinstance(raw, dict):
        raise bad(f"'{where}' must be an object")
    app_id = raw.get("app_id")
    pushkey = raw.get("pushkey")
    if app_id is None or pushkey is None:
        raise MatrixError(f"'{where}' needs 'app_id' and 'pushkey'", "M_MISSING_PARAM", status=400)
    if not isinstance(app_id, str) or not app_id or len(app_id) > MAX_APP_ID:
        raise bad(f"'{where}.app_id' must be a string of 1 to {MAX_APP_ID} characters")
    if not isinstance(pushkey, str) or not pushkey or len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
        raise bad(f"'{where}.pushkey' must be a string of 1 to {MAX_PUSHKEY_BYTES} bytes")
    ts = raw.get("pushkey_ts")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
        raise bad(f"'{where}.pushkey_ts' must be an integer")
    for key in ("data", "tweaks"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise bad(f"'{where}.{key}' must be an object")
    return Device(app_id=app_id, pushkey=pushkey, data=raw.get("data") or {}, raw=raw)
