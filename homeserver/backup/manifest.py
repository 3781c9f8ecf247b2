"""A backup set's manifest.json: what the set holds, and a sha256 per file to verify it.

Written last (on S3 uploaded last): a set without one is incomplete and is neither
listed nor restored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup or a restore failed; the message is for the operator, one line."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_of(root: Path) -> dict[str, dict[str, Any]]:
    """{relative posix path: {size, sha256}} for every file under `root` but the manifest."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            found[path.relative_to(root).as_posix()] = {
                "size": path.stat().st_size,
                "sha256": sha256_file(path),
            }
    return found


def write_manifest(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    manifest = {"format": FORMAT, **info, "files": files_of(root)}
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(root / MANIFEST)
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the set at `root`, after checking every file against it."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{root} is not a backup set (no {MANIFEST})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BackupError(f"backup {root} is damaged: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"backup {root}: unknown manifest format {manifest.get('format')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BackupError(f"backup {root} is damaged: {MANIFEST} lists no files")
    _check_shape(root, manifest, files)
    for name, expected in files.items():
        file = root / name
        if ".." in Path(name).parts or not file.is_file():
            raise BackupError(f"backup {root} is damaged: {name} is missing")
        if file.stat().st_size != expected.get("size") or sha256_file(file) != expected.get("sha256"):
            raise BackupError(f"backup {root} is damaged: {name} does not match its checksum")
    return manifest


def _check_shape(root: Path, manifest: dict[str, Any], files: dict[str, Any]) -> None:
    """The fields restore relies on, each file it names among the checksummed ones."""
    database = manifest.get("database")
    named = [manifest.get("signing_key"), *manifest.get("data_secrets", [])]
    if isinstance(database, dict):
        named.append(database.get("file"))
    ok = (
        isinstance(database, dict)
        and database.get("engine") in ("sqlite", "postgres")
        and isinstance(database.get("tables"), dict)
        and isinstance(manifest.get("server_name"), str)
        and isinstance(manifest.get("sources"), dict)
        and all(isinstance(n, str) and n in files for n in named)
    )
    if not ok:
        raise BackupError(f"backup {root} is damaged: {MANIFEST} lacks what a restore needs")
