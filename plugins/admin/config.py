"""The admin plugin's config block, checked before the server starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from homeserver.plugins import PluginConfigError

_DURATION = re.compile(r"^(\d+)(s|m|h|d)?$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class AdminConfig:
    # Audit rows older than this are deleted by an hourly job (0: kept for ever).
    audit_retention_s: int = 365 * 86400


def _duration_s(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = int(m.group(1)) * _UNITS[m.group(2) or ""]
    else:
        raise PluginConfigError(f"'{key}' must be a duration such as 0, 3600, 90d or 24h")
    if seconds < 0:
        raise PluginConfigError(f"'{key}' must not be negative")
    return seconds


def parse_admin_config(raw: dict[str, Any]) -> AdminConfig:
    if not isinstance(raw, dict):
        raise PluginConfigError("the config must be a mapping")
    unknown = set(raw) - {"audit_retention"}
    if unknown:
        raise PluginConfigError(f"unknown key(s): {', '.join(sorted(unknown))}")
    return AdminConfig(_duration_s(raw.get("audit_retention", "365d"), "audit_retention"))
