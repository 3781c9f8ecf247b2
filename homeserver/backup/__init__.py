"""Backups of a running server and their restore: `homeserver backup` / `homeserver restore`,
and `PluginApi.run_backup` for the scheduled ones (plugins/backup). See docs/operations.md."""

from homeserver.backup.manifest import BackupError
from homeserver.backup.run import create_backup, list_backups, prune_backups, restore_backup
from homeserver.backup.sources import BackupSource, S3Location

__all__ = [
    "BackupError",
    "BackupSource",
    "S3Location",
    "create_backup",
    "list_backups",
    "prune_backups",
    "restore_backup",
]
