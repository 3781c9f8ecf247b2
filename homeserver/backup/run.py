"""Backup, restore and retention: the steps, in the order that keeps a set consistent.

Backup: the database snapshot first, then the signing key (and jwt.secret), then the plugins' files
(media). Media is write-once and stored before its row is committed, so every row in
the snapshot has its file by the time the files are copied; files newer than the
snapshot are harmless extras. Then the manifest (counts, checksums), then the set
appears at the target.

Restore: verify every checksum before touching anything, refuse a target that holds
data (unless forced), put the database back and compare its row counts with the
manifest, then the signing key and the files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homeserver import __version__
from homeserver.backup import files
from homeserver.backup.manifest import BackupError, read_manifest, write_manifest
from homeserver.backup.sources import PluginSource, S3Location, plugin_sources
from homeserver.backup.targets import LocalTarget, Target, name_time_ms, open_target, set_name
from homeserver.storage import snapshot as db_snapshot

if TYPE_CHECKING:
    from homeserver.config import Config

SIGNING_KEY = "signing.key"
# Files of the data dir's top level a restored server needs: the key that signs access
# tokens (made there when auth.jwt_secret is not set), so tokens handed out stay valid.
DATA_SECRETS = ("jwt.secret",)


def create_backup(config: Config, to: str, now_ms: int, s3_options: S3Location | None = None) -> str:
    """Take a backup set of the server described by `config` into `to`; return its name."""
    target = open_target(to, s3_options)
    if not config.signing_key_file.is_file():
        raise BackupError(f"no signing key at {config.signing_key_file}: is this the server's config?")
    sources = plugin_sources(config)
    name = set_name(now_ms, set(target.names()))
    staging = target.staging(name)
    try:
        try:
            snap = db_snapshot.take_snapshot(config.database.url, staging)
        except db_snapshot.SnapshotError as e:
            raise BackupError(str(e)) from None
        shutil.copyfile(config.signing_key_file, staging / SIGNING_KEY)
        secrets = [n for n in DATA_SECRETS if (config.data_path / n).is_file()]
        for secret in secrets:
            shutil.copyfile(config.data_path / secret, staging / secret)
        copied = {s.key: files.copy_out(s.source, staging / s.key) for s in sources}
        write_manifest(
            staging,
            {
                "name": name,
                "created_ms": now_ms,
                "server_name": config.server_name,
                "homeserver_version": __version__,
                "database": {
                    "engine": snap.engine,
                    "file": snap.file.name,
                    "schema": snap.schema,
                    "server_version": snap.server_version,
                    "tables": snap.tables,
                },
                "signing_key": SIGNING_KEY,
                "data_secrets": secrets,
                "sources": {key: {"files": n} for key, n in copied.items()},
            },
        )
        target.store(staging, name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return name


def prune_backups(to: str, keep: int, s3_options: S3Location | None = None) -> list[str]:
    """Delete all but the newest `keep` complete sets at `to`; return the deleted names."""
    if keep < 1:
        raise BackupError("keep must be at least 1")
    target = open_target(to, s3_options)
    old = target.names()[:-keep]
    for name in old:
        target.delete(name)
    return old


def list_backups(to: str, s3_options: S3Location | None = None) -> list[tuple[str, int]]:
    """The complete sets at `to`, oldest first: (name, when it was taken in ms)."""
    return [(name, name_time_ms(name)) for name in open_target(to, s3_options).names()]


def _locate(source: str, s3_options: S3Location | None) -> tuple[Target, str]:
    """The target holding the set and its name: `source` is a set, or a target whose newest
    set is meant."""
    target = open_target(source, s3_options)
    if target.is_set():
        if isinstance(target, LocalTarget):
            return LocalTarget(target.root.parent), target.root.name
        parent, _, name = target.location.prefix.rpartition("/")
        return open_target(f"s3://{target.location.bucket}/{parent}", s3_options), name
    names = target.names()
    if not names:
        raise BackupError(f"no backup set at {source}")
    return target, names[-1]


def restore_backup(
    config: Config, source: str, *, force: bool = False, s3_options: S3Location | None = None
) -> dict[str, Any]:
    """Restore the set at `source` into the data dir, database and media stores of `config`;
    return its manifest."""
    target, name = _locate(source, s3_options)
    with tempfile.TemporaryDirectory(prefix="homeserver-restore.") as work:
        root = target.fetch(name, Path(work))
        manifest = read_manifest(root)
        sources = plugin_sources(config)
        _check_target(config, manifest, sources, force)
        db = manifest["database"]
        snap = db_snapshot.Snapshot(db["engine"], root / db["file"], db["tables"], db.get("schema", ""))
        try:
            counts = db_snapshot.restore_snapshot(config.database.url, snap, force=force)
        except db_snapshot.SnapshotError as e:
            raise BackupError(str(e)) from None
        if counts != db["tables"]:
            differ = sorted(
                t for t in set(counts) | set(db["tables"]) if counts.get(t) != db["tables"].get(t)
            )
            raise BackupError(
                f"the restored database's row counts differ from the manifest's: {', '.join(differ)}"
            )
        _write_key(root / manifest["signing_key"], config.signing_key_file)
        for secret in manifest.get("data_secrets", []):
            if secret in DATA_SECRETS:
                _write_key(root / secret, config.data_path / secret)
        by_key = {s.key: s for s in sources}
        for key in manifest["sources"]:
            files.copy_in(root / key, by_key[key].source)
    return manifest


def _check_target(config: Config, manifest: dict[str, Any], sources: list[PluginSource], force: bool) -> None:
    if manifest.get("server_name") != config.server_name:
        raise BackupError(
            f"the backup is of server {manifest.get('server_name')!r} but the config's server_name is"
            f" {config.server_name!r}: every user and room id names the server, restore under the same name"
        )
    engine = db_snapshot.engine_name(config.database.url)
    if engine != manifest["database"]["engine"]:
        raise BackupError(
            f"the backup holds a {manifest['database']['engine']} database but the config's"
            f" database.url is {engine}: restore into the same engine"
        )
    by_key = {s.key: s for s in sources}
    missing = [key for key in manifest["sources"] if key not in by_key]
    if missing:
        raise BackupError(f"the backup holds {', '.join(missing)} but no configured plugin takes them")
    if force:
        return
    busy = []
    try:
        if not db_snapshot.database_is_empty(config.database.url, manifest["database"].get("schema", "")):
            busy.append("the database has tables")
    except db_snapshot.SnapshotError as e:
        raise BackupError(str(e)) from None
    for path in [config.signing_key_file, *(config.data_path / n for n in manifest.get("data_secrets", []))]:
        if path.exists():
            busy.append(f"{path} exists")
    busy += [f"{key} is not empty" for key in manifest["sources"] if not files.is_empty(by_key[key].source)]
    if busy:
        raise BackupError(
            f"the target is not empty ({'; '.join(busy)}): restore into a fresh one, or pass --force"
        )


def _write_key(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.restoring")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
