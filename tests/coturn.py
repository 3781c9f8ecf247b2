"""coturn as a real part for the calls tests: Debian's `turnserver`, on loopback.

`ensure_turnserver()` installs the `coturn` package when it is missing (CI runs as root,
as for ffmpeg in test_media.py). `Coturn` runs one turnserver on 127.0.0.1 with free
ports and `use-auth-secret` (coturn's REST-API scheme, the one the calls plugin hands
out), its pid file and database in the test's own folder, and stops it by its pid.

With `tls=(cert, key)` it also listens for TURN over TLS (`turns:`) on a second port.

`--allow-loopback-peers` is test-only: every peer here is on 127.0.0.1, which coturn
refuses to relay to by default (CREATE_PERMISSION -> 403 Forbidden IP).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import stop_process


def ensure_turnserver() -> str:
    found = shutil.which("turnserver")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"]
            + ["--no-install-recommends", "coturn"],
            capture_output=True,
            timeout=600,
            check=False,
            env=env,
        )
        found = shutil.which("turnserver")
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError("turnserver (Debian package coturn) is missing and could not be installed")
        pytest.skip("turnserver (coturn) is not installed")
    return found


def _free_port_both() -> int:
    """A port free for TCP and UDP on 127.0.0.1 (TURN listens on both)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Coturn:
    def __init__(
        self, workdir: Path, secret: str, realm: str = "turn.test", tls: tuple[Path, Path] | None = None
    ) -> None:
        self.binary = ensure_turnserver()
        self.workdir = workdir
        self.secret = secret
        self.realm = realm
        self.port = _free_port_both()
        self.tls = tls
        self.tls_port = _free_port_both() if tls else None
        # Relay ports: a random block, so parallel test workers rarely share one.
        self.min_port = random.randrange(40000, 60000, 100)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "turnserver.log"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def uris(self) -> list[str]:
        uris = [
            f"turn:127.0.0.1:{self.port}?transport=udp",
            f"turn:127.0.0.1:{self.port}?transport=tcp",
        ]
        if self.tls_port is not None:
            uris.append(f"turns:127.0.0.1:{self.tls_port}?transport=tcp")
        return uris

    def start(self) -> Coturn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}",
            "--use-auth-secret",
            f"--static-auth-secret={self.secret}",
            f"--realm={self.realm}",
            "--allow-loopback-peers",
            "--no-cli",
            *self._tls_args(),
            "--no-dtls",
            "--fingerprint",
            f"--min-port={self.min_port}",
            f"--max-port={self.min_port + 99}",
            "--log-file=stdout",
            "--simple-log",
            "--verbose",
            f"--pidfile={self.workdir / 'turnserver.pid'}",
            f"--db={self.workdir / 'turndb'}",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.process.returncode}:\n{self.log_text()}")
            if all(_listening(port) for port in (self.port, self.tls_port) if port is not None):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"turnserver did not start:\n{self.log_text()}")

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return ["--no-tls"]
        cert, key = self.tls
        return [f"--tls-listening-port={self.tls_port}", f"--cert={cert}", f"--pkey={key}"]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
