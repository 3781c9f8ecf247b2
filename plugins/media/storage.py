"""Where media bytes live: one small interface, a provider per backend.

Every method blocks (disk or network I/O): the plugin runs them on its worker
threads (`api.run_blocking`), never on the reactor. Keys are made by the plugin
(`originals/ab/cd/MEDIAID`, `thumbnails/MEDIAID/32x32-crop`, ...).

`put` copies a readable file in bounded chunks - nothing is held whole in memory -
and is all-or-nothing: the object becomes visible only when complete, and a
failed or interrupted copy leaves nothing behind (a temporary file that is
removed, or an S3 multipart upload that is aborted).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any, Protocol

from plugins.media.config import S3Config, StorageConfig

CHUNK = 256 * 1024
# A temporary file untouched this long is a crash's leftover.
STALE_TMP_S = 6 * 3600
_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_.\-]+)*")


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Slice:
    """At most `length` bytes of `reader`, after skipping its first `skip` bytes."""

    def __init__(self, reader: Reader, skip: int, length: int) -> None:
        self._reader = reader
        self._skip = skip
        self._left = length

    def read(self, size: int = -1, /) -> bytes:
        while self._skip:
            skipped = self._reader.read(min(self._skip, CHUNK))
            if not skipped:
                return b""
            self._skip -= len(skipped)
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._reader.read(want)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._reader.close()


class MediaStorage(ABC):
    """The storage provider interface (all methods block)."""

    name = ""

    @abstractmethod
    def check(self) -> None:
        """Fail fast at start-up if the backend is unusable (raise with a clear message)."""

    @abstractmethod
    def put(self, key: str, src: IO[bytes], content_type: str) -> None:
        """Store everything from `src` (read from its start) under `key`, atomically."""

    @abstractmethod
    def open(self, key: str) -> Reader:
        """A reader over the object; FileNotFoundError if there is none."""

    def open_range(self, key: str, start: int, length: int) -> Reader:
        """A reader over `length` bytes of the object from offset `start` (an HTTP Range
        download); FileNotFoundError if there is no object. This one reads past the first
        `start` bytes; a provider that can start at an offset (a file seek, an S3 ranged
        GET) does so instead."""
        return Slice(self.open(key), start, length)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path of the object, if the backend has one."""
        return None


def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key) or ".." in key:
        raise ValueError(f"bad storage key {key!r}")
    return key


class LocalStorage(MediaStorage):
    """Files under a directory (default: DATA_DIR/plugins/media/store)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / ".tmp"

    def check(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Leftovers of a crash in the middle of a copy (old ones only: another
        # process sharing the store may be copying right now).
        cutoff = time.time() - STALE_TMP_S
        for stale in self._tmp.iterdir():
            try:
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()
            except OSError:
                pass
        probe = self._tmp / f"probe-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, src: IO[bytes], content_type: str) -> None:
        final = self._path(key)
        tmp = self._tmp / f"{secrets.token_hex(8)}.part"
        self._tmp.mkdir(parents=True, exist_ok=True)
        src.seek(0)
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def open(self, key: str) -> Reader:
        return open(self._path(key), "rb")

    def open_range(self, key: str, start: int, length: int) -> Reader:
        f = open(self._path(key), "rb")  # noqa: SIM115 - the caller closes the reader
        try:
            f.seek(start)
        except BaseException:
            f.close()
            raise
        return Slice(f, 0, length)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop emptied shard directories (best effort).
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class S3Storage(MediaStorage):
    """Objects in a bucket of any S3-compatible server (AWS, SeaweedFS, MinIO, ...)."""

    name = "s3"

    def __init__(self, config: S3Config) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = config.bucket
        self.prefix = f"{config.prefix}/" if config.prefix else ""
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if config.endpoint_url else "auto"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        # Multipart above 8 MiB, 8 MiB parts: memory per upload stays bounded.
        self.transfer = TransferConfig(
            multipart_threshold=8 * 1024 * 1024,
            multipart_chunksize=8 * 1024 * 1024,
            max_concurrency=2,
            use_threads=True,
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as e:
            raise RuntimeError(f"media storage: S3 bucket {self.bucket!r} is not usable: {e}") from None

    def put(self, key: str, src: IO[bytes], content_type: str) -> None:
        src.seek(0)
        # upload_fileobj reads in parts and aborts the multipart upload if anything fails.
        self.client.upload_fileobj(
            src, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type}, Config=self.transfer
        )

    def _get(self, key: str, **extra: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(key) from None
            raise

    def open(self, key: str) -> Reader:
        body: Reader = self._get(key)["Body"]
        return body

    def open_range(self, key: str, start: int, length: int) -> Reader:
        obj = self._get(key, Range=f"bytes={start}-{start + length - 1}")
        body: Reader = obj["Body"]
        # An S3 server that ignores Range answers 200 with the whole object (no
        # Content-Range): skip to the start ourselves rather than send the wrong bytes.
        skip = 0 if obj.get("ContentRange") else start
        return Slice(body, skip, length)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def make_storage(config: StorageConfig, data_dir: Path) -> MediaStorage:
    if config.provider == "s3":
        return S3Storage(config.s3)
    root = Path(config.path) if config.path else data_dir / "store"
    return LocalStorage(root)
