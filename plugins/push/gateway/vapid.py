"""Make a VAPID key pair for the gateway's Web Push apps (RFC 8292):

    python -m plugins.push.gateway.vapid /etc/homeserver/vapid.pem

writes a new P-256 private key (PKCS#8 PEM, mode 0600) for the app's `vapid_private_key`
and prints the public key as base64url: the `applicationServerKey` the web client passes
to PushManager.subscribe. Given an existing file, it only prints that key's public key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plugins.push.gateway.webpush import application_server_key, load_vapid_key


def write_new_key(path: Path) -> str:
    """Create the key file; the public key (base64url). FileExistsError if it exists."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return application_server_key(key)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m plugins.push.gateway.vapid PRIVATE_KEY.pem", file=sys.stderr)
        print("  (with an existing file: prints its public key)", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if path.exists():
        print(application_server_key(load_vapid_key(path)))
        return 0
    print(write_new_key(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
