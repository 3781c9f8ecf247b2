"""What besides the database a backup carries: the files plugins keep (media).

A plugin class may define `backup_sources(config, data_dir) -> list[BackupSource]`
(a staticmethod, like `parse_config`): where its files live for the parsed `config`,
a local directory or an S3 prefix. Backup and restore call it without constructing or
starting the plugin, so the CLI can use it while the server runs. The core never names
a plugin: it only asks each configured one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homeserver.config import Config


@dataclass(frozen=True)
class S3Location:
    """A bucket (and key prefix) on any S3-compatible server; None credentials: boto3's own chain."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None


@dataclass(frozen=True)
class BackupSource:
    """A set of write-once files to back up: `path` (a directory) or `s3` (a prefix)."""

    name: str
    path: Path | None = None
    s3: S3Location | None = None
    # Top-level entries under `path` that are never copied (temporary files of uploads).
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginSource:
    plugin: str
    source: BackupSource

    @property
    def key(self) -> str:
        """Its directory in a backup set."""
        return f"plugins/{self.plugin}/{self.source.name}"


def plugin_sources(config: Config) -> list[PluginSource]:
    """Every configured plugin's backup sources, for `config`'s data dir."""
    from homeserver.plugins import PluginLoadError, parse_plugin_config, plugin_name

    found = []
    for index, entry in enumerate(config.plugins):
        cls, parsed = parse_plugin_config(index, entry.module, entry.config, config.source)
        hook = getattr(cls, "backup_sources", None)
        if hook is None:
            continue
        name = plugin_name(cls)
        for source in hook(parsed, config.data_path / "plugins" / name):
            if not re.fullmatch(r"[a-z0-9_]{1,64}", source.name) or (source.path is None) == (
                source.s3 is None
            ):
                raise PluginLoadError(f"plugin {name}: bad backup source {source!r}")
            found.append(PluginSource(name, source))
    return found
