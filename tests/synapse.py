"""A real Synapse for federation tests: installed from PyPI into its own venv (the bench's
ensure_synapse and bench/synapse-requirements.txt), on SQLite, its federation listener on
TLS with a certificate from the test CA, trusting that CA for its own outbound requests,
loopback allowed. Started and stopped per test module; `kill` (kill -9) and `restart` (the
same data dir, config and ports) for the catch-up tests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from conftest import free_port, stop_process
from federation_harness import TestCA

from bench.servers import ensure_synapse, synapse_python

PASSWORD = "correct horse battery"
LOOPBACK = ["127.0.0.0/8", "::1/128"]


@dataclass
class SynapseServer:
    process: subprocess.Popen[bytes]
    client_port: int
    federation_port: int
    workdir: Path
    shared_secret: str
    ca: TestCA

    @property
    def server_name(self) -> str:
        return f"localhost:{self.federation_port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.client_port}{path}"

    def federation_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.federation_port}{path}"

    def log_text(self) -> str:
        return (self.workdir / "homeserver.log").read_text(errors="replace")

    def register(self, localpart: str, admin: bool = False) -> dict[str, Any]:
        """A user made through the shared-secret admin API: {user_id, access_token, ...}."""
        path = "/_synapse/admin/v1/register"
        nonce = requests.get(self.url(path), timeout=30).json()["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\x00{localpart}\x00{PASSWORD}\x00{'admin' if admin else 'notadmin'}".encode())
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": PASSWORD,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        r = requests.post(self.url(path), json=body, timeout=30)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def kill(self) -> None:
        """kill -9: no shutdown, so what it had not yet sent is only in its database."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """Start it again, once stopped or killed, on the same data dir, config and ports;
        returns once its client API answers."""
        assert self.process.poll() is not None, "Synapse is still running"
        self.process = _spawn(self.workdir)
        _wait_until_up(self)

    def stop(self) -> None:
        stop_process(self.process, 30)


def synapse_federation_config(
    workdir: Path, client_port: int, federation_port: int, ca: TestCA, secret: str
) -> dict[str, Any]:
    cert_file, key_file = ca.issue(f"synapse-{federation_port}")
    unlimited = {"per_second": 1000, "burst_count": 1000}
    return {
        "server_name": f"localhost:{federation_port}",
        "public_baseurl": f"http://127.0.0.1:{client_port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": client_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "resources": [{"names": ["client", "media"], "compress": False}],
            },
            {
                "port": federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "resources": [{"names": ["federation", "keys"], "compress": False}],
            },
        ],
        "tls_certificate_path": str(cert_file),
        "tls_private_key_path": str(key_file),
        # Our servers' certificates come from the test CA.
        "federation_custom_ca_list": [str(ca.ca_file)],
        "federation_verify_certificates": True,
        # Everything here is on loopback, which Synapse refuses to reach by default.
        "ip_range_whitelist": LOOPBACK,
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.yaml"),
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": secret,
        "enable_registration": False,
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "macaroon_secret_key": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "bcrypt_rounds": 4,
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        # The tests send bursts of messages (Synapse allows 10, then one each 5 s).
        "rc_message": unlimited,
        "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 0, "reject_limit": 1000},
    }


def start_synapse(workdir: Path, ca: TestCA) -> SynapseServer:
    """A Synapse named localhost:FEDERATION_PORT, up and answering its client API."""
    ensure_synapse(log=lambda message: print(message))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "media").mkdir(exist_ok=True)
    client_port, federation_port = free_port(), free_port()
    secret = secrets.token_hex(24)
    config_path = workdir / "homeserver.yaml"
    config_path.write_text(
        yaml.safe_dump(synapse_federation_config(workdir, client_port, federation_port, ca, secret))
    )
    (workdir / "log.yaml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "formatter": "precise",
                        "filename": str(workdir / "homeserver.log"),
                    }
                },
                "root": {"level": "INFO", "handlers": ["file"]},
                "disable_existing_loggers": False,
            }
        )
    )
    subprocess.run(  # noqa: S603 - fixed argv
        [str(synapse_python()), "-m", "synapse.app.homeserver", "-c", str(config_path), "--generate-keys"],
        check=True,
        capture_output=True,
        cwd=workdir,
    )
    server = SynapseServer(_spawn(workdir), client_port, federation_port, workdir, secret, ca)
    _wait_until_up(server)
    return server


def _spawn(workdir: Path) -> subprocess.Popen[bytes]:
    log_file = open(workdir / "stdout.log", "ab")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(  # noqa: S603 - fixed argv
        [str(synapse_python()), "-m", "synapse.app.homeserver", "-c", str(workdir / "homeserver.yaml")],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )


def _wait_until_up(server: SynapseServer) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"Synapse exited with {server.process.returncode}:\n{server.log_text()[-3000:]}"
            )
        try:
            if requests.get(server.url("/_matrix/client/versions"), timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Synapse did not start:\n{server.log_text()[-3000:]}")
