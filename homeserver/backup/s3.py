"""boto3 for backups: a client for an S3Location, listing, upload and download of files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from homeserver.backup.sources import S3Location


def s3_client(location: S3Location) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=location.endpoint_url,
        region_name=location.region,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if location.endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


def join_key(prefix: str, *parts: str) -> str:
    return "/".join(p.strip("/") for p in (prefix, *parts) if p.strip("/"))


def list_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    """Every key under `prefix` (a directory: `prefix/...`), relative to it."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            yield obj["Key"][len(base) :]


def download(client: Any, bucket: str, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, key, str(dest))


def upload(client: Any, bucket: str, key: str, src: Path) -> None:
    client.upload_file(str(src), bucket, key)
