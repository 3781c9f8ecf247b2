"""Scheduled backups: a backup set every `every` (default daily), keeping the newest `keep`.

Every `check_interval` it looks at the target's newest complete set and takes a new one
when that is older than `every`, so a server restarted more often than `every` still
backs up on time. The work (database snapshot, signing key, media) is the core's
`homeserver backup`, run through `PluginApi.run_backup` on a worker thread. It imports
only `homeserver.plugins`. See docs/operations.md.
"""

from __future__ import annotations

from typing import Any

from homeserver.plugins import BackupError, PluginApi
from plugins.backup.config import BackupConfig, parse_backup_config


class BackupPlugin:
    NAME = "backup"

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> BackupConfig:
        return parse_backup_config(raw)

    def __init__(self, config: BackupConfig, api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.to = config.to or str(api.data_dir)
        self.running = False
        self.last_success = api.gauge("last_success_seconds", "When the last backup set was completed")
        self.failures = api.counter("failures", "Backups that failed")

    def start(self) -> None:
        self.api.schedule(self.config.check_interval_s, self.check, now=True)

    async def check(self) -> None:
        """Take a backup if the newest set is older than `every` (and none is running)."""
        if self.running:
            return
        self.running = True
        try:
            config = self.config
            sets = await self.api.list_backups(self.to, s3=config.s3)
            now_ms = self.api.clock.time_ms()
            if sets and now_ms - sets[-1][1] < config.every_s * 1000:
                return
            name = await self.api.run_backup(self.to, keep=config.keep, s3=config.s3)
            self.last_success.set(self.api.clock.seconds())
            self.api.log.info("backup {name} written to {to}", name=name, to=self.to)
        except BackupError as e:
            self.failures.inc()
            self.api.log.error("backup to {to} failed: {error}", to=self.to, error=str(e))
        except Exception:
            self.failures.inc()
            self.api.log.failure("backup to {to} failed", to=self.to)
        finally:
            self.running = False
