"""The push plugin's config block, parsed and checked before the server starts.

Every key has a default (the values in config/homeserver.yaml); durations are written as
500ms, 2s, 10m, 24h or 30d (a bare number of seconds works too). See docs/push.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from homeserver.plugins import PluginConfigError

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class DeliveryConfig:
    ack_wait_s: float = 2.0
    request_timeout_s: float = 10.0
    max_concurrent_requests: int = 100
    retry_min_s: float = 1.0
    retry_max_s: float = 600.0
    give_up_after_s: float = 86400.0
    # A read receipt's counts-only push waits this long, so a burst of receipts sends one.
    badge_delay_s: float = 1.0
    # Email notifications (plugins/push/email.py).
    email_delay_s: float = 600.0
    email_throttle_s: float = 3600.0
    email_client_url: str | None = None


_KEYS = {
    "ack_wait": "ack_wait_s",
    "request_timeout": "request_timeout_s",
    "retry_min": "retry_min_s",
    "retry_max": "retry_max_s",
    "give_up_after": "give_up_after_s",
    "badge_delay": "badge_delay_s",
    "email_delay": "email_delay_s",
    "email_throttle": "email_throttle_s",
}


def parse_delivery_config(raw: Any) -> DeliveryConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PluginConfigError("the push plugin's config must be a mapping")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _KEYS:
            values[_KEYS[key]] = _duration(key, value)
        elif key == "max_concurrent_requests":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PluginConfigError("'max_concurrent_requests' must be a whole number of at least 1")
            values[key] = value
        elif key == "email_client_url":
            values[key] = _client_url(value)
        else:
            raise PluginConfigError(f"unknown key '{key}'")
    config = DeliveryConfig(**values)
    if config.request_timeout_s <= 0 or config.retry_min_s <= 0:
        raise PluginConfigError("'request_timeout' and 'retry_min' must be more than 0")
    if config.retry_max_s < config.retry_min_s:
        raise PluginConfigError("'retry_max' must be at least 'retry_min'")
    if config.email_delay_s <= 0:
        raise PluginConfigError("'email_delay' must be more than 0")
    return config


def _client_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise PluginConfigError("'email_client_url' must be an http(s) URL without query or fragment")
    return value.rstrip("/")


def _duration(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise PluginConfigError(f"'{key}' must be a duration such as 2s, 10m or 24h")
    if isinstance(value, int):
        return float(value)
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(value).strip())
    if not m:
        raise PluginConfigError(f"'{key}' must be a duration such as 2s, 10m or 24h")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]
