"""The push gateway's config block, parsed and checked before the server starts.

Apps are keyed by the `app_id` pushers register with; each names its `kind`:
`fcm` (Firebase Cloud Messaging HTTP v1), `webpush` (RFC 8030 with VAPID) or
`forward` (another Matrix push gateway). Durations are written as 500ms, 30s, 5m,
1h or 1d (a bare number of seconds works too), sizes as 64K or 1M. Every key is
documented in config/homeserver.yaml and docs/push-gateway.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from homeserver.plugins import PluginConfigError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2}
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Spec (Push Gateway API, PusherData): an app id is at most 64 characters.
_APP_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


@dataclass(frozen=True)
class FcmApp:
    service_account_file: Path
    # Base URL of the FCM v1 API; None is Google's. For a private relay or the tests'
    # local endpoint (docs/push-gateway.md).
    endpoint: str | None = None


@dataclass(frozen=True)
class WebPushApp:
    vapid_private_key: Path  # PEM file of a P-256 key
    vapid_contact: str  # the JWT's `sub`: mailto: or https: (RFC 8292 section 2.1)
    ttl_ms: int = 86_400_000  # prio "high"
    low_priority_ttl_ms: int = 3_600_000  # prio "low"
    # Host name patterns (fnmatch) subscription endpoints must match; empty: any host.
    allowed_endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardApp:
    url: str  # the other gateway's full notify URL


AppConfig = FcmApp | WebPushApp | ForwardApp


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # tries per device before the request is answered 502
    initial_delay_ms: int = 1000  # doubled after each failed try


@dataclass(frozen=True)
class GatewayConfig:
    apps: dict[str, AppConfig] = field(default_factory=dict)
    max_body_size: int = 256 * 1024
    timeout_ms: int = 10_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Outgoing requests (Web Push endpoints, forward targets) never go to loopback,
    # private, link-local or reserved addresses, nor to these; except to the whitelist.
    ip_range_blacklist: tuple[IpNetwork, ...] = ()
    ip_range_whitelist: tuple[IpNetwork, ...] = ()


def parse_gateway_config(raw: Any) -> GatewayConfig:
    top = _block(raw, "config", {"apps", "max_body_size", "timeout", "retry", "outbound"})
    retry = _block(top.get("retry"), "retry", {"attempts", "initial_delay"})
    outbound = _block(top.get("outbound"), "outbound", {"ip_range_blacklist", "ip_range_whitelist"})
    d = GatewayConfig()
    apps_raw = top.get("apps")
    if apps_raw is None:
        apps_raw = {}
    if not isinstance(apps_raw, dict):
        raise PluginConfigError("'apps' must be a mapping of app ids to their settings")
    apps: dict[str, AppConfig] = {}
    for app_id, app_raw in apps_raw.items():
        if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
            raise PluginConfigError(f"'apps': {app_id!r} is not an app id (1-64 of A-Z a-z 0-9 . _ -)")
        apps[app_id] = _app(app_id, app_raw)
    return GatewayConfig(
        apps=apps,
        max_body_size=_size(top.get("max_body_size", d.max_body_size), "max_body_size"),
        timeout_ms=_duration(top.get("timeout", "10s"), "timeout", minimum=1),
        retry=RetryPolicy(
            attempts=_int(retry, "attempts", d.retry.attempts, "retry.", minimum=1),
            initial_delay_ms=_duration(retry.get("initial_delay", "1s"), "retry.initial_delay"),
        ),
        ip_range_blacklist=_networks(outbound, "ip_range_blacklist"),
        ip_range_whitelist=_networks(outbound, "ip_range_whitelist"),
    )


def _app(app_id: str, raw: Any) -> AppConfig:
    where = f"apps.{app_id}"
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise PluginConfigError(f"'{where}' must be a mapping with 'kind': fcm, webpush or forward")
    kind = raw["kind"]
    if kind == "fcm":
        block = _block(raw, where, {"kind", "service_account_file", "endpoint"})
        account = _str(block, "service_account_file", where)
        return FcmApp(
            service_account_file=_existing_file(account, f"{where}.service_account_file"),
            endpoint=_http_url(block.get("endpoint") or None, f"{where}.endpoint"),
        )
    if kind == "webpush":
        block = _block(
            raw,
            where,
            {"kind", "vapid_private_key", "vapid_contact", "ttl", "low_priority_ttl", "allowed_endpoints"},
        )
        contact = _str(block, "vapid_contact", where)
        if not contact.startswith(("mailto:", "https://")) or len(contact) < 10:
            raise PluginConfigError(f"'{where}.vapid_contact' must be a mailto: or https: URI")
        patterns = block.get("allowed_endpoints") or []
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise PluginConfigError(f"'{where}.allowed_endpoints' must be a list of host name patterns")
        return WebPushApp(
            vapid_private_key=_existing_file(
                _str(block, "vapid_private_key", where), f"{where}.vapid_private_key"
            ),
            vapid_contact=contact,
            ttl_ms=_duration(block.get("ttl", "1d"), f"{where}.ttl"),
            low_priority_ttl_ms=_duration(block.get("low_priority_ttl", "1h"), f"{where}.low_priority_ttl"),
            allowed_endpoints=tuple(p.lower() for p in patterns),
        )
    if kind == "forward":
        block = _block(raw, where, {"kind", "url"})
        url = _http_url(_str(block, "url", where), f"{where}.url")
        assert url is not None
        return ForwardApp(url=url)
    raise PluginConfigError(f"'{where}.kind' must be fcm, webpush or forward, not {kind!r}")


def _block(raw: Any, key: str, known: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PluginConfigError(f"'{key}' must be a mapping")
    unknown = set(raw) - known
    if unknown:
        raise PluginConfigError(f"unknown key(s) in '{key}': {', '.join(sorted(map(str, unknown)))}")
    return raw


def _str(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise PluginConfigError(f"'{where}.{key}' is required (a string)")
    return value


def _int(raw: dict[str, Any], key: str, default: int, where: str, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PluginConfigError(f"'{where}{key}' must be an integer of at least {minimum}")
    return value


def _size(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(\d+)\s*([KM]?)B?", str(value).strip().upper())
    if isinstance(value, bool) or not m or int(m.group(1)) == 0:
        raise PluginConfigError(f"'{key}' must be a size such as 64K or 1M, got {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _duration(value: Any, key: str, minimum: int = 0) -> int:
    """Milliseconds, from "500ms", "30s", "5m", "1h", "1d" or an int of seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value * 1000
    else:
        m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(value).strip())
        if isinstance(value, bool) or not m:
            raise PluginConfigError(f"'{key}' must be a duration such as 500ms, 30s or 1h, got {value!r}")
        ms = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if ms < minimum:
        raise PluginConfigError(f"'{key}' must be at least {minimum}ms")
    return ms


def _existing_file(value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise PluginConfigError(f"'{key}': no file at {value}")
    return path


def _http_url(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PluginConfigError(f"'{key}' must be an http(s) URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise PluginConfigError(f"'{key}' is not a URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.fragment:
        raise PluginConfigError(f"'{key}' must be an http(s) URL without credentials, got {value!r}")
    return value.rstrip("/") if key.endswith(".endpoint") else value


def _networks(raw: dict[str, Any], key: str) -> tuple[IpNetwork, ...]:
    values = raw.get(key) or []
    if not isinstance(values, list):
        raise PluginConfigError(f"'outbound.{key}' must be a list of CIDR ranges")
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise PluginConfigError(f"'outbound.{key}': {value!r} is not an IP range") from None
    return tuple(out)
