"""Backup pieces that need no process: finding pg_dump, set names, the plugin's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeserver.backup import BackupError, prune_backups
from homeserver.backup.manifest import read_manifest, write_manifest
from homeserver.backup.targets import LocalTarget, name_time_ms, open_target, set_name
from homeserver.plugins import PluginConfigError
from homeserver.storage.snapshot import SnapshotError, find_pg_tool
from plugins.backup.config import parse_backup_config

NOW_MS = 1_800_000_000_000


def test_a_missing_pg_dump_says_what_to_install() -> None:
    with pytest.raises(SnapshotError, match=r"pg_dump not found: install postgresql-client-15"):
        find_pg_tool("pg_dump", 15, search=())


def test_set_names_sort_by_time_and_never_collide(tmp_path: Path) -> None:
    first = set_name(NOW_MS, set())
    assert first == "backup-20270115T080000Z" and name_time_ms(first) == NOW_MS
    assert set_name(NOW_MS, {first}) == first + "-2"
    target = LocalTarget(tmp_path)
    for name in (first, first + "-2", set_name(NOW_MS + 1000, set()), "backup-20270115T075959Z"):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, {"name": name})
    (tmp_path / ".backup-20270115T080002Z.partial").mkdir()  # being written: not a set
    (tmp_path / "backup-20270115T080003Z").mkdir()  # no manifest: incomplete
    assert target.names() == ["backup-20270115T075959Z", first, first + "-2", "backup-20270115T080001Z"]
    assert prune_backups(str(tmp_path), 2) == ["backup-20270115T075959Z", first]
    assert target.names() == [first + "-2", "backup-20270115T080001Z"]


def test_a_manifest_catches_a_missing_or_changed_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"data")
    (tmp_path / "k").write_bytes(b"key")
    info = {"server_name": "x", "signing_key": "k", "sources": {}}
    write_manifest(tmp_path, {**info, "database": {"engine": "sqlite", "file": "a/f", "tables": {}}})
    assert read_manifest(tmp_path)["files"]["a/f"]["size"] == 4
    write_manifest(tmp_path, {**info, "database": {"engine": "sqlite", "file": "../etc/x", "tables": {}}})
    with pytest.raises(BackupError, match="lacks what a restore needs"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {**info, "database": {"engine": "sqlite", "file": "a/f", "tables": {}}})
    (tmp_path / "a" / "f").write_bytes(b"date")
    with pytest.raises(BackupError, match="a/f does not match its checksum"):
        read_manifest(tmp_path)
    (tmp_path / "a" / "f").unlink()
    with pytest.raises(BackupError, match="a/f is missing"):
        read_manifest(tmp_path)


def test_targets() -> None:
    with pytest.raises(BackupError, match="a directory or s3://"):
        open_target("ftp://host/dir")
    with pytest.raises(BackupError, match="s3://BUCKET"):
        open_target("s3:///prefix")


def test_plugin_config() -> None:
    config = parse_backup_config({"to": "/var/backups/hs"}, env={})
    assert (config.every_s, config.keep, config.check_interval_s, config.s3) == (86400, 7, 600, None)
    config = parse_backup_config(
        {"to": "s3://bucket/nightly", "every": "12h", "keep": 3, "s3": {"endpoint_url": "http://s3.test"}},
        env={"HOMESERVER_BACKUP_S3_SECRET_ACCESS_KEY": "secret"},
    )
    assert config.every_s == 43200 and config.s3 is not None
    assert (config.s3.bucket, config.s3.endpoint_url, config.s3.secret_access_key) == (
        "bucket",
        "http://s3.test",
        "secret",
    )
    for raw, message in (
        ({"to": 5}, "'to' must name"),
        ({"to": "http://x"}, "'to' must be a directory or s3://"),
        ({"to": "d", "keep": 0}, "'keep'"),
        ({"to": "d", "every": "daily"}, "'every'"),
        ({"to": "d", "evrey": "1d"}, "unknown key 'evrey'"),
        ({"to": "d", "s3": {"bucket": "b"}}, "'s3' takes only"),
    ):
        with pytest.raises(PluginConfigError, match=message):
            parse_backup_config(raw, env={})
