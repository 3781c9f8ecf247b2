"""Setting up federation from the command line: generate-config's TLS flags, a server
started from that config serving its keys over TLS, and clear refusals of bad settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from conftest import ROOT, VENV_BIN, free_port, start_server_with_config
from federation_harness import make_ca

from homeserver.config import ConfigError, load_config, parse_config


def homeserver(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv
        [str(VENV_BIN / "homeserver"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_generate_config_with_federation_flags_serves_keys_over_tls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue("hs")
    port, federation_port = free_port(), free_port()
    result = homeserver(
        "generate-config",
        "--server-name",
        f"localhost:{federation_port}",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        "--federation-port",
        str(federation_port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--federation-ca",
        str(ca.ca_file),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    config_path = tmp_path / "homeserver.yaml"
    config_path.write_text(result.stdout)
    config = load_config(config_path, env={})
    assert config.federation.port == federation_port
    assert (config.federation.tls_certificate, config.federation.tls_private_key) == (str(cert), str(key))
    assert config.federation.ca_file == str(ca.ca_file)

    raw = yaml.safe_load(result.stdout)
    raw["plugins"] = []
    raw["web_client"] = {"enabled": False}
    server = start_server_with_config(tmp_path, raw)
    try:
        r = requests.get(
            f"https://localhost:{federation_port}/_matrix/key/v2/server", verify=str(ca.ca_file), timeout=10
        )
        assert r.status_code == 200, r.text
        assert r.json()["server_name"] == f"localhost:{federation_port}"
        assert f"federation on https://0.0.0.0:{federation_port}" in server.wait_for_log("federation on")
    finally:
        server.stop()


def test_generate_config_refuses_a_federation_port_without_certificate(tmp_path: Path) -> None:
    result = homeserver(
        "generate-config", "--server-name", "example.org", "--federation-port", "8448", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "--tls-cert and --tls-key" in result.stderr


@pytest.mark.parametrize(
    ("federation", "message"),
    [
        ({"port": 8448}, "'federation.port' needs 'federation.tls_certificate'"),
        ({"port": 0, "tls_certificate": "c", "tls_private_key": "k"}, "'federation.port' must be between"),
        ({"bind_address": "everywhere"}, "'federation.bind_address' must be an IP address"),
        ({"key_validity": "10m"}, "'federation.key_validity' must be at least 1h"),
        ({"old_verify_keys": {"rsa:x": {"key": "abc", "expired_ts": 1}}}, "must be named ed25519:VERSION"),
        (
            {"old_verify_keys": {"ed25519:x": {"kee": "abc"}}},
            "unknown key 'federation.old_verify_keys.ed25519:x.kee'",
        ),
        ({"trusted_key_servers": ["not a name"]}, "is not a valid server name"),
        ({"well_known_server": "host:99999999"}, "is not a valid server name"),
        (
            {"ip_range_whitelist": ["10.0.0.0/33"]},
            "'federation.ip_range_whitelist': '10.0.0.0/33' is not a CIDR",
        ),
    ],
)
def test_bad_federation_settings_are_refused_with_the_key(
    federation: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config({"server_name": "example.org", "federation": federation}, "hs.yaml", env={})


def test_an_unusable_certificate_stops_start_up_with_a_clear_line(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    port, federation_port = free_port(), free_port()
    config = {
        "server_name": "example.org",
        "data_dir": str(tmp_path / "data"),
        "listen": {"port": port},
        "web_client": {"enabled": False},
        "federation": {"port": federation_port, "tls_certificate": str(cert), "tls_private_key": str(cert)},
    }
    path = tmp_path / "hs.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(  # noqa: S603 - fixed argv
        [str(VENV_BIN / "homeserver"), "run", "-c", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"start-up failed: {cert} holds no PEM certificate" in result.stdout + result.stderr
