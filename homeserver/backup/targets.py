"""Where backup sets are kept: a local directory or an S3 prefix, one set per name.

A set is built in a staging directory and appears only when complete: locally by
renaming the staging directory (same filesystem), on S3 by uploading manifest.json
after every other file. Sets are named `backup-YYYYMMDDTHHMMSSZ` from the clock, so
name order is time order.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from homeserver.backup import s3
from homeserver.backup.manifest import MANIFEST, BackupError
from homeserver.backup.sources import S3Location

NAME_RE = re.compile(r"backup-\d{8}T\d{6}Z(-\d+)?")


def set_name(now_ms: int, taken: set[str]) -> str:
    base = "backup-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ms / 1000))
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def name_time_ms(name: str) -> int:
    """When the set called `name` was taken (its name's time, to the second)."""
    import calendar

    return calendar.timegm(time.strptime(name[len("backup-") :][:16], "%Y%m%dT%H%M%SZ")) * 1000


def _order(name: str) -> tuple[str, int]:
    """Time, then the number of a set taken in the same second (`-2`, `-3`...)."""
    stem, _, n = name.partition("Z")
    return (stem, int(n[1:]) if n else 1)


class LocalTarget:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [
            p.name for p in self.root.iterdir() if NAME_RE.fullmatch(p.name) and (p / MANIFEST).is_file()
        ]
        return sorted(found, key=_order)

    def staging(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{name}.partial"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def store(self, staging: Path, name: str) -> None:
        staging.rename(self.root / name)

    def fetch(self, name: str, work: Path) -> Path:
        return self.root / name

    def delete(self, name: str) -> None:
        shutil.rmtree(self.root / name)

    def is_set(self) -> bool:
        return (self.root / MANIFEST).is_file()


class S3Target:
    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.client: Any = s3.s3_client(location)
        self.url = f"s3://{location.bucket}/{location.prefix}".rstrip("/")

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args)
        except (ClientError, BotoCoreError) as e:
            raise BackupError(f"{self.url}: {what} failed: {e}") from None

    def names(self) -> list[str]:
        keys = self._call(
            "listing", lambda: list(s3.list_keys(self.client, self.location.bucket, self.location.prefix))
        )
        found = {k.split("/", 1)[0] for k in keys if k.count("/") == 1 and k.endswith("/" + MANIFEST)}
        return sorted((n for n in found if NAME_RE.fullmatch(n)), key=_order)

    def staging(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}."))

    def store(self, staging: Path, name: str) -> None:
        files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
        for path in [*files, staging / MANIFEST]:  # the manifest last: it marks the set complete
            key = s3.join_key(self.location.prefix, name, path.relative_to(staging).as_posix())
            self._call(f"upload of {key}", s3.upload, self.client, self.location.bucket, key, path)
        shutil.rmtree(staging)

    def fetch(self, name: str, work: Path) -> Path:
        into = work / name
        prefix = s3.join_key(self.location.prefix, name)
        keys = self._call("listing", lambda: list(s3.list_keys(self.client, self.location.bucket, prefix)))
        for rel in keys:
            if ".." in rel.split("/"):
                raise BackupError(f"{self.url}/{name}: bad object name {rel!r}")
            key = s3.join_key(prefix, rel)
            self._call(f"download of {key}", s3.download, self.client, self.location.bucket, key, into / rel)
        return into

    def delete(self, name: str) -> None:
        prefix = s3.join_key(self.location.prefix, name)
        keys = self._call("listing", lambda: list(s3.list_keys(self.client, self.location.bucket, prefix)))
        # The manifest first: a half-deleted set is then an incomplete one, never a damaged one.
        keys.sort(key=lambda k: k != MANIFEST)
        for rel in keys:
            key = s3.join_key(prefix, rel)
            self._call(
                f"delete of {key}",
                lambda k=key: self.client.delete_object(Bucket=self.location.bucket, Key=k),
            )

    def is_set(self) -> bool:
        from botocore.exceptions import ClientError

        key = s3.join_key(self.location.prefix, MANIFEST)
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise BackupError(f"{self.url}: {e}") from None
        return True


Target = LocalTarget | S3Target


def open_target(url: str, s3_options: S3Location | None = None) -> Target:
    """`url`: a directory, or s3://bucket/prefix (endpoint and credentials from `s3_options`)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise BackupError(f"{url}: an S3 target is s3://BUCKET[/PREFIX]")
        base = s3_options or S3Location(bucket)
        return S3Target(
            S3Location(
                bucket,
                prefix.strip("/"),
                base.endpoint_url,
                base.region,
                base.access_key_id,
                base.secret_access_key,
            )
        )
    if "://" in url:
        raise BackupError(f"{url}: a backup target is a directory or s3://BUCKET[/PREFIX]")
    return LocalTarget(Path(url))
