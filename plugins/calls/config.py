"""The calls plugin's config block, parsed and checked before the server starts.

Every key has a default (the values in config/homeserver.yaml). The TURN shared secret
may also come from the environment, which wins over the file:
HOMESERVER_CALLS_TURN_SHARED_SECRET.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from homeserver.plugins import PluginConfigError

SECRET_ENV = "HOMESERVER_CALLS_TURN_SHARED_SECRET"
_DURATION = re.compile(r"^(\d+)(s|m|h|d)?$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# RFC 7065: turn: and turns: URIs, with an optional ?transport=udp|tcp.
_TURN_URI = re.compile(r"^turns?:[^\s?]+(\?transport=(udp|tcp))?$")


@dataclass(frozen=True)
class TurnConfig:
    uris: tuple[str, ...] = ()
    shared_secret: str = ""
    ttl_s: int = 86400

    @property
    def enabled(self) -> bool:
        return bool(self.uris)


@dataclass(frozen=True)
class CallsConfig:
    turn: TurnConfig = field(default_factory=TurnConfig)
    # MatrixRTC group calls: the LiveKit SFU's JWT service, advertised as a focus.
    livekit_service_url: str = ""


def parse_duration_s(value: Any, key: str) -> int:
    """Whole seconds from 3600, "90s", "10m", "24h" or "1d"."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]
    else:
        raise PluginConfigError(f"'{key}' must be a duration such as 3600, 90s, 10m, 24h or 1d")
    if seconds <= 0:
        raise PluginConfigError(f"'{key}' must be positive")
    return seconds


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise PluginConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")


def parse_turn(raw: Any) -> TurnConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PluginConfigError("'turn' must be a mapping")
    _check_keys(raw, {"uris", "shared_secret", "ttl"}, "turn")
    uris = raw.get("uris", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise PluginConfigError("'turn.uris' must be a list of turn: or turns: URIs")
    for uri in uris:
        if not _TURN_URI.match(uri):
            raise PluginConfigError(f"'turn.uris': {uri!r} is not a turn: or turns: URI (RFC 7065)")
    secret = os.environ.get(SECRET_ENV) or raw.get("shared_secret", "")
    if not isinstance(secret, str):
        raise PluginConfigError("'turn.shared_secret' must be a string")
    if uris and not secret:
        raise PluginConfigError(f"'turn.uris' is set: 'turn.shared_secret' (or {SECRET_ENV}) is required")
    ttl = parse_duration_s(raw.get("ttl", 86400), "turn.ttl")
    return TurnConfig(tuple(uris), secret, ttl)


def parse_group_calls(raw: Any) -> str:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PluginConfigError("'group_calls' must be a mapping")
    _check_keys(raw, {"livekit_service_url"}, "group_calls")
    url = raw.get("livekit_service_url", "")
    if not isinstance(url, str) or (url and not re.match(r"^https?://[^\s/]+(/\S*)?$", url)):
        raise PluginConfigError("'group_calls.livekit_service_url' must be an http(s) URL")
    return url.rstrip("/")


def parse_calls_config(raw: dict[str, Any]) -> CallsConfig:
    _check_keys(raw, {"turn", "group_calls"}, "the calls plugin's config")
    return CallsConfig(
        turn=parse_turn(raw.get("turn")), livekit_service_url=parse_group_calls(raw.get("group_calls"))
    )
