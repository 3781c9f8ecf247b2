"""The backup plugin's config block, checked before the server starts.

S3 credentials may come from the environment, which wins over the file:
HOMESERVER_BACKUP_S3_ENDPOINT_URL, HOMESERVER_BACKUP_S3_REGION,
HOMESERVER_BACKUP_S3_ACCESS_KEY_ID and HOMESERVER_BACKUP_S3_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.plugins import PluginConfigError, S3Location

ENV_PREFIX = "HOMESERVER_BACKUP_S3_"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_S3_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key")


@dataclass(frozen=True)
class BackupConfig:
    to: str = ""  # empty: the plugin's own data dir
    every_s: int = 86400
    keep: int = 7
    check_interval_s: int = 600
    s3: S3Location | None = None


def _duration_s(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(\d+)(s|m|h|d)", str(value).strip())
    if isinstance(value, bool) or not m or int(m.group(1)) == 0:
        raise PluginConfigError(f"'{key}' must be a duration such as 30m, 24h or 7d, got {value!r}")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_backup_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> BackupConfig:
    env = os.environ if env is None else env
    raw = dict(raw or {})
    unknown = set(raw) - {"to", "every", "keep", "check_interval", "s3"}
    if unknown:
        raise PluginConfigError(f"unknown key '{sorted(unknown)[0]}'")
    to = raw.get("to") or ""
    if not isinstance(to, str):
        raise PluginConfigError("'to' must name a directory or s3://BUCKET[/PREFIX]")
    if "://" in to and not re.fullmatch(r"s3://[^/\s]+(/\S*)?", to):
        raise PluginConfigError(f"'to' must be a directory or s3://BUCKET[/PREFIX], got {to!r}")
    keep = raw.get("keep", 7)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise PluginConfigError(f"'keep' must be a whole number of at least 1, got {keep!r}")
    s3_raw = raw.get("s3") or {}
    if not isinstance(s3_raw, dict) or set(s3_raw) - set(_S3_KEYS):
        raise PluginConfigError(f"'s3' takes only {', '.join(_S3_KEYS)}")
    s3 = None
    if to.startswith("s3://"):
        values = {key: env.get(ENV_PREFIX + key.upper()) or s3_raw.get(key) or None for key in _S3_KEYS}
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise PluginConfigError(f"'s3.{key}' must be a string")
        bucket = to[len("s3://") :].split("/", 1)[0]
        s3 = S3Location(
            bucket,
            endpoint_url=values["endpoint_url"],
            region=values["region"] or "us-east-1",
            access_key_id=values["access_key_id"],
            secret_access_key=values["secret_access_key"],
        )
    return BackupConfig(
        to=to.strip(),
        every_s=_duration_s(raw.get("every", "24h"), "every"),
        keep=keep,
        check_interval_s=_duration_s(raw.get("check_interval", "10m"), "check_interval"),
        s3=s3,
    )
