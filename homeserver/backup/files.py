"""Copying a plugin's files (a BackupSource) into a backup set and back out.

The files are write-once (media): a file seen is complete, and one written after the
database snapshot is only an extra the restored database does not name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from homeserver.backup import s3
from homeserver.backup.manifest import BackupError
from homeserver.backup.sources import BackupSource


def _local_files(source: BackupSource) -> Iterator[tuple[str, Path]]:
    root = source.path
    assert root is not None
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in source.exclude]
            filenames = [f for f in filenames if f not in source.exclude]
        for name in filenames:
            path = here / name
            yield path.relative_to(root).as_posix(), path


def copy_out(source: BackupSource, dest: Path) -> int:
    """Copy every file of `source` under `dest`; return how many."""
    count = 0
    if source.s3 is not None:
        client = s3.s3_client(source.s3)
        try:
            for rel in list(s3.list_keys(client, source.s3.bucket, source.s3.prefix)):
                s3.download(client, source.s3.bucket, s3.join_key(source.s3.prefix, rel), dest / rel)
                count += 1
        except Exception as e:
            raise BackupError(f"copying {source.name} from s3://{source.s3.bucket} failed: {e}") from None
        return count
    for rel, path in _local_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, target)
        except FileNotFoundError:
            continue  # deleted since the listing (a purge): the snapshot may not name it either
        count += 1
    return count


def is_empty(source: BackupSource) -> bool:
    if source.s3 is not None:
        client = s3.s3_client(source.s3)
        try:
            return next(iter(s3.list_keys(client, source.s3.bucket, source.s3.prefix)), None) is None
        except Exception as e:
            raise BackupError(f"cannot list s3://{source.s3.bucket}/{source.s3.prefix}: {e}") from None
    return next(_local_files(source), None) is None


def copy_in(src: Path, source: BackupSource) -> int:
    """Put the files a backup holds under `src` into `source`; return how many."""
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
    if source.s3 is not None:
        client = s3.s3_client(source.s3)
        try:
            for path in files:
                s3.upload(
                    client,
                    source.s3.bucket,
                    s3.join_key(source.s3.prefix, path.relative_to(src).as_posix()),
                    path,
                )
        except Exception as e:
            raise BackupError(f"restoring {source.name} to s3://{source.s3.bucket} failed: {e}") from None
        return len(files)
    assert source.path is not None
    for path in files:
        target = source.path / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.restoring")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return len(files)
