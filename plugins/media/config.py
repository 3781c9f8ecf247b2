"""The media plugin's config block: parsed and checked before the server starts.

Every key has a default (the values in config/homeserver.yaml); sizes are written
as 512K, 50M or 1G, durations as 500ms, 30s, 24h or 30d (a bare number of seconds
works too). S3 settings and secrets may also come from the environment, which wins
over the file: HOMESERVER_MEDIA_S3_ENDPOINT_URL, HOMESERVER_MEDIA_S3_BUCKET,
HOMESERVER_MEDIA_S3_REGION, HOMESERVER_MEDIA_S3_ACCESS_KEY_ID and
HOMESERVER_MEDIA_S3_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.plugins import PluginConfigError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

ENV_PREFIX = "HOMESERVER_MEDIA_S3_"


@dataclass(frozen=True)
class ThumbnailSize:
    width: int
    height: int
    method: str  # "crop" or "scale"


DEFAULT_THUMBNAIL_SIZES = (
    ThumbnailSize(32, 32, "crop"),
    ThumbnailSize(96, 96, "crop"),
    ThumbnailSize(320, 240, "scale"),
    ThumbnailSize(640, 480, "scale"),
    ThumbnailSize(800, 600, "scale"),
)


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    bucket: str = ""
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class StorageConfig:
    provider: str = "local"  # "local" or "s3"
    path: str = ""  # local: empty means DATA_DIR/plugins/media/store
    s3: S3Config = field(default_factory=S3Config)


@dataclass(frozen=True)
class PreviewConfig:
    enabled: bool = False
    max_size: int = 1024**2
    timeout_ms: int = 10_000
    max_redirects: int = 5
    ip_range_blacklist: tuple[IpNetwork, ...] = ()
    ip_range_whitelist: tuple[IpNetwork, ...] = ()
    cache_ms: int = 3_600_000


@dataclass(frozen=True)
class MediaConfig:
    max_upload_size: int = 50 * 1024**2
    user_quota: int = 1024**3  # 0: no quota
    storage: StorageConfig = field(default_factory=StorageConfig)
    restrict_to_rooms: bool = True
    legacy_unauthenticated_download: bool = False
    thumbnail_sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES
    max_image_pixels: int = 32_000_000
    video_posters: bool = True
    unused_expiry_ms: int = 86_400_000
    max_pending_uploads: int = 10
    unreferenced_max_age_ms: int = 0  # 0: keep forever
    cleanup_interval_ms: int = 3_600_000
    url_preview: PreviewConfig = field(default_factory=PreviewConfig)


def parse_size(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise PluginConfigError(f"'{key}' must be a size such as 512K or 50M")
    if isinstance(value, int):
        if value < 0:
            raise PluginConfigError(f"'{key}' must not be negative")
        return value
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", str(value).strip().upper())
    if not m:
        raise PluginConfigError(f"'{key}' must be a size such as 512K or 50M, got {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_duration(value: Any, key: str) -> int:
    """Milliseconds: "500ms", "30s", "5m", "24h", "30d", or an int of seconds."""
    if isinstance(value, bool):
        raise PluginConfigError(f"'{key}' must be a duration such as 30s, 24h or 30d")
    if isinstance(value, int):
        if value < 0:
            raise PluginConfigError(f"'{key}' must not be negative")
        return value * 1000
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(value).strip())
    if not m:
        raise PluginConfigError(f"'{key}' must be a duration such as 30s, 24h or 30d, got {value!r}")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _block(raw: Any, key: str, known: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PluginConfigError(f"'{key}' must be a mapping")
    unknown = set(raw) - known
    if unknown:
        raise PluginConfigError(f"unknown key(s) in '{key}': {', '.join(sorted(map(str, unknown)))}")
    return raw


def _bool(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise PluginConfigError(f"'{where}{key}' must be true or false")
    return value


def _int(raw: dict[str, Any], key: str, default: int, where: str, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PluginConfigError(f"'{where}{key}' must be an integer of at least {minimum}")
    return value


def _str(raw: dict[str, Any], key: str, default: str | None, where: str) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise PluginConfigError(f"'{where}{key}' must be a string")
    return value


def _networks(raw: dict[str, Any], key: str, where: str) -> tuple[IpNetwork, ...]:
    values = raw.get(key) or []
    if not isinstance(values, list):
        raise PluginConfigError(f"'{where}{key}' must be a list of CIDR ranges")
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise PluginConfigError(f"'{where}{key}': {value!r} is not an IP range") from None
    return tuple(out)


def _thumbnail_sizes(raw: Any) -> tuple[ThumbnailSize, ...]:
    if raw is None:
        return DEFAULT_THUMBNAIL_SIZES
    if not isinstance(raw, list) or not raw:
        raise PluginConfigError("'thumbnails.sizes' must be a non-empty list of {width, height, method}")
    sizes = []
    for i, item in enumerate(raw):
        where = f"thumbnails.sizes[{i}]."
        entry = _block(item, where.rstrip("."), {"width", "height", "method"})
        width = _int(entry, "width", 0, where, minimum=1)
        height = _int(entry, "height", 0, where, minimum=1)
        method = entry.get("method", "scale")
        if method not in ("crop", "scale"):
            raise PluginConfigError(f"'{where}method' must be crop or scale")
        if width > 4096 or height > 4096:
            raise PluginConfigError(f"'{where}width' and 'height' must be at most 4096")
        sizes.append(ThumbnailSize(width, height, method))
    return tuple(sizes)


def parse_media_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> MediaConfig:
    env = os.environ if env is None else env
    top = _block(
        dict(raw or {}),
        "config",
        {
            "max_upload_size",
            "user_quota",
            "storage",
            "restrict_to_rooms",
            "legacy_unauthenticated_download",
            "thumbnails",
            "async_uploads",
            "retention",
            "url_preview",
        },
    )
    d = MediaConfig()

    storage_raw = _block(top.get("storage"), "storage", {"provider", "path", "s3"})
    provider = storage_raw.get("provider", "local")
    if provider not in ("local", "s3"):
        raise PluginConfigError("'storage.provider' must be local or s3")
    s3_raw = _block(
        storage_raw.get("s3"),
        "storage.s3",
        {"endpoint_url", "bucket", "region", "access_key_id", "secret_access_key", "prefix"},
    )
    where = "storage.s3."

    def s3_value(key: str, default: str | None) -> str | None:
        from_env = env.get(ENV_PREFIX + key.upper())
        return from_env if from_env else _str(s3_raw, key, default, where)

    s3 = S3Config(
        endpoint_url=s3_value("endpoint_url", None) or None,
        bucket=s3_value("bucket", "") or "",
        region=s3_value("region", "us-east-1") or "us-east-1",
        access_key_id=s3_value("access_key_id", None) or None,
        secret_access_key=s3_value("secret_access_key", None) or None,
        prefix=(_str(s3_raw, "prefix", "", where) or "").strip("/"),
    )
    if provider == "s3" and not s3.bucket:
        raise PluginConfigError(f"'storage.s3.bucket' (or {ENV_PREFIX}BUCKET) is required with provider s3")
    if s3.endpoint_url and not s3.endpoint_url.startswith(("http://", "https://")):
        raise PluginConfigError("'storage.s3.endpoint_url' must be an http(s) URL")
    storage = StorageConfig(provider, _str(storage_raw, "path", "", "storage.") or "", s3)

    thumbs = _block(top.get("thumbnails"), "thumbnails", {"sizes", "max_image_pixels", "video_posters"})
    asyncs = _block(top.get("async_uploads"), "async_uploads", {"unused_expiry", "max_pending"})
    retention = _block(top.get("retention"), "retention", {"unreferenced_max_age", "interval"})
    preview_raw = _block(
        top.get("url_preview"),
        "url_preview",
        {
            "enabled",
            "max_size",
            "timeout",
            "max_redirects",
            "ip_range_blacklist",
            "ip_range_whitelist",
            "cache",
        },
    )
    pd = PreviewConfig()
    preview = PreviewConfig(
        enabled=_bool(preview_raw, "enabled", pd.enabled, "url_preview."),
        max_size=parse_size(preview_raw.get("max_size", pd.max_size), "url_preview.max_size"),
        timeout_ms=parse_duration(preview_raw.get("timeout", "10s"), "url_preview.timeout"),
        max_redirects=_int(preview_raw, "max_redirects", pd.max_redirects, "url_preview."),
        ip_range_blacklist=_networks(preview_raw, "ip_range_blacklist", "url_preview."),
        ip_range_whitelist=_networks(preview_raw, "ip_range_whitelist", "url_preview."),
        cache_ms=parse_duration(preview_raw.get("cache", "1h"), "url_preview.cache"),
    )
    if preview.timeout_ms <= 0:
        raise PluginConfigError("'url_preview.timeout' must be positive")

    interval = parse_duration(retention.get("interval", "1h"), "retention.interval")
    if interval <= 0:
        raise PluginConfigError("'retention.interval' must be positive")
    max_upload = parse_size(top.get("max_upload_size", d.max_upload_size), "max_upload_size")
    if max_upload <= 0:
        raise PluginConfigError("'max_upload_size' must be positive")
    return MediaConfig(
        max_upload_size=max_upload,
        user_quota=parse_size(top.get("user_quota", d.user_quota), "user_quota"),
        storage=storage,
        restrict_to_rooms=_bool(top, "restrict_to_rooms", d.restrict_to_rooms, ""),
        legacy_unauthenticated_download=_bool(
            top, "legacy_unauthenticated_download", d.legacy_unauthenticated_download, ""
        ),
        thumbnail_sizes=_thumbnail_sizes(thumbs.get("sizes")),
        max_image_pixels=_int(thumbs, "max_image_pixels", d.max_image_pixels, "thumbnails.", minimum=1),
        video_posters=_bool(thumbs, "video_posters", d.video_posters, "thumbnails."),
        unused_expiry_ms=parse_duration(asyncs.get("unused_expiry", "24h"), "async_uploads.unused_expiry"),
        max_pending_uploads=_int(asyncs, "max_pending", d.max_pending_uploads, "async_uploads.", minimum=1),
        unreferenced_max_age_ms=parse_duration(
            retention.get("unreferenced_max_age", 0), "retention.unreferenced_max_age"
        ),
        cleanup_interval_ms=interval,
        url_preview=preview,
    )
