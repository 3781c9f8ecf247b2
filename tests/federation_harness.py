"""Federation test set-up: a throw-away CA, TLS certificates for loopback, and our servers
with federation listeners (server names `localhost:PORT`, PORT being the TLS listener).

Reused by every federation test module (and tests/synapse.py for Synapse's certificate).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import ServerProcess, _merge, base_config, free_port, start_server_with_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signedjson.key import read_signing_keys

from homeserver.core.federation.request_auth import authorization_header

LOOPBACK = ["127.0.0.0/8", "::1/128"]


@dataclass(frozen=True)
class TestCA:
    """A CA made for one test session: `ca_file` is what servers must trust."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, name: str, dns_names: tuple[str, ...] = ("localhost",)) -> tuple[Path, Path]:
        """A leaf certificate for `dns_names`, 127.0.0.1 and ::1: (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_file, key_file


def make_ca(directory: Path) -> TestCA:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Homeserver test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = TestCA(directory, key, cert)
    ca.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


@dataclass
class FederatedServer:
    """One of our servers with its TLS federation listener."""

    process: ServerProcess
    federation_port: int
    ca: TestCA

    @property
    def server_name(self) -> str:
        return self.process.server_name

    def federation_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.federation_port}{path}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """A request to the federation listener, its TLS checked against the test CA."""
        return requests.get(self.federation_url(path), verify=str(self.ca.ca_file), timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.federation_url(path), verify=str(self.ca.ca_file), timeout=30, **kwargs)

    def stop(self) -> None:
        self.process.stop()


def signing_key(server: FederatedServer) -> Any:
    """The key `server` signs its events and requests with, read from its data dir."""
    return read_signing_keys((server.process.data_dir / "signing.key").read_text().splitlines())[0]


def signed_request(
    method: str, origin: FederatedServer, to: FederatedServer, path: str, body: Any = None
) -> requests.Response:
    """A request to `to`'s federation listener signed as `origin`, as its own code sends one."""
    auth = authorization_header(method, path, origin.server_name, to.server_name, signing_key(origin), body)
    return requests.request(
        method,
        to.federation_url(path),
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": auth, "Content-Type": "application/json"},
        verify=str(to.ca.ca_file),
        timeout=30,
    )


def start_federated_server(
    tmp_path: Path, ca: TestCA, overrides: dict[str, Any] | None = None
) -> FederatedServer:
    """Our server named localhost:FEDERATION_PORT, trusting the test CA for outbound TLS."""
    client_port, federation_port = free_port(), free_port()
    cert_file, key_file = ca.issue(f"hs-{federation_port}")
    config = base_config(tmp_path, client_port)
    config["server_name"] = f"localhost:{federation_port}"
    config["federation"] = {
        "port": federation_port,
        "bind_address": "127.0.0.1",
        "tls_certificate": str(cert_file),
        "tls_private_key": str(key_file),
        "ca_file": str(ca.ca_file),
        # Every server of the tests is on loopback, which federation refuses by default.
        "ip_range_whitelist": LOOPBACK,
    }
    config = _merge(config, overrides or {})
    return FederatedServer(start_server_with_config(tmp_path, config), federation_port, ca)


def federated_pair(
    tmp_path_factory: pytest.TempPathFactory,
    ca: TestCA,
    a_overrides: dict[str, Any] | None = None,
    b_overrides: dict[str, Any] | None = None,
) -> Generator[tuple[FederatedServer, FederatedServer], None, tuple[FederatedServer, FederatedServer]]:
    """The body of a module's `servers` fixture (`yield from federated_pair(...)`): two of
    our servers, A and B, each stopped afterwards with exit status 0; returns them then."""
    a = start_federated_server(tmp_path_factory.mktemp("hs-a"), ca, a_overrides)
    b = start_federated_server(tmp_path_factory.mktemp("hs-b"), ca, b_overrides)
    yield a, b
    for server in (a, b):
        assert server.process.stop() == 0
    return a, b


class User:
    """A user of one of our federated servers, on the Client-Server API."""

    def __init__(self, server: FederatedServer, name: str) -> None:
        self.server = server
        account = server.process.register(name)
        self.user_id: str = account["user_id"]
        self.token: str = account["access_token"]

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return requests.request(
            method,
            self.server.process.url("/_matrix/client/v3" + path),
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
        )

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        r = self.call(method, path, body, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def create_room(self, version: str = "10", **body: Any) -> str:
        room_id: str = self.ok("POST", "/createRoom", {"room_version": version, **body})["room_id"]
        return room_id

    def memberships(self, room_id: str) -> dict[str, str]:
        chunk = self.ok("GET", f"/rooms/{quote(room_id)}/members")["chunk"]
        return {ev["state_key"]: ev["content"]["membership"] for ev in chunk}

    def sync(self) -> Any:
        return self.ok("GET", "/sync", timeout="0")

    def say(self, room_id: str, body: str) -> str:
        sent = self.ok(
            "PUT", f"/rooms/{quote(room_id)}/send/m.room.message/{body}", {"msgtype": "m.text", "body": body}
        )
        event_id: str = sent["event_id"]
        return event_id

    def page_back(self, room_id: str, limit: int) -> list[dict[str, Any]]:
        """Every event /messages gives going back from now, page by page."""
        events: list[dict[str, Any]] = []
        token = None
        for _ in range(50):
            params: dict[str, Any] = {"dir": "b", "limit": str(limit)}
            if token is not None:
                params["from"] = token
            page = self.ok("GET", f"/rooms/{quote(room_id)}/messages", **params)
            events.extend(page["chunk"])
            token = page.get("end")
            if token is None:
                return events
        raise AssertionError("paging never ended")
