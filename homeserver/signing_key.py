"""The server's long-lived ed25519 signing key, stored on disk in Synapse's format.

The file holds one key per line: `<algorithm> <version> <unpadded base64 seed>`, e.g.
`ed25519 a_AbC1 <43 base64 chars>`, so keys can be moved between this server and Synapse.
The key ID published to other servers is `<algorithm>:<version>` (Server-Server API,
"Retrieving server keys"); versions must match `[a-zA-Z0-9_]`.
"""

import os
import pathlib
import secrets
import string
import tempfile

from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)
from signedjson.types import SigningKey

_VERSION_ALPHABET = string.ascii_letters + string.digits


def _new_key_version() -> str:
    # Same shape as Synapse's generated key versions: "a_" plus 4 random characters.
    return "a_" + "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(4))


def _read_first_key(path: pathlib.Path) -> SigningKey:
    with path.open(encoding="ascii") as f:
        keys = read_signing_keys(line for line in f if line.strip())
    if not keys:
        raise ValueError(f"no signing key found in {path}")
    return keys[0]


def load_or_create_signing_key(path: pathlib.Path) -> SigningKey:
    """Return the signing key stored at `path`, generating and saving one if it is missing.

    Promises:
    - An existing file is only read, never rewritten; if it holds several keys the first
      one is used. A malformed file raises `ValueError` rather than being replaced, since
      silently changing the server's key would break its identity on federation.
    - A new file is created together with missing parent directories, with mode 0600 from
      the start (the seed is a secret). It appears atomically and is never overwritten, so
      two processes racing to create it end up sharing the one key that was written first.
    """
    try:
        return _read_first_key(path)
    except FileNotFoundError:
        pass

    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_signing_key(_new_key_version())
    # Write a private temporary file in the same directory, then hard-link it into place:
    # the link is atomic and fails if `path` appeared meanwhile, so readers never see a
    # half-written file and a concurrent creator's key is never overwritten.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            # mkstemp already uses 0600; be explicit since the file holds a secret seed.
            os.fchmod(f.fileno(), 0o600)
            write_signing_keys(f, [key])
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return _read_first_key(path)
    finally:
        os.unlink(tmp_name)
    return key


def key_id(key: SigningKey) -> str:
    """Return the key's ID as used in `signatures` and key queries, e.g. `ed25519:a_AbC1`."""
    return f"{key.alg}:{key.version}"


def verify_key_base64(key: SigningKey) -> str:
    """Return the public half of `key` as unpadded base64, as published in `verify_keys`."""
    return encode_verify_key_base64(get_verify_key(key))
