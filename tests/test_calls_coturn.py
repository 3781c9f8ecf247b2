"""coturn as a real part: the credentials the calls plugin hands out allocate a relay on a
real turnserver (Debian's coturn, `use-auth-secret`, tests/coturn.py), and data goes through
it both ways; expired and forged credentials are refused by coturn itself. The same over
TLS: coturn with a self-signed certificate made here, reached through the `turns:` URI the
server hands out, the certificate checked by the client.

The TURN client is aioice's (the ICE library under aiortc), run on its own asyncio loop in a
worker thread, whatever reactor pytest uses.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import ipaddress
import secrets
import ssl
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from aioice import stun
from aioice.turn import create_turn_endpoint
from conftest import ServerProcess
from coturn import Coturn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plugins.calls.config import parse_calls_config
from plugins.calls.turn import turn_credentials


def run_async(coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    turn = Coturn(tmp_path / "coturn", secret=secrets.token_hex(16)).start()
    yield turn
    turn.stop()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (PEM files): coturn's cert and pkey,
    and the one certificate the test's TLS client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turn.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "turn-cert.pem", folder / "turn-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def coturn_tls(tmp_path: Path) -> Iterator[Coturn]:
    tls = self_signed_certificate(tmp_path / "tls")
    turn = Coturn(tmp_path / "coturn", secret=secrets.token_hex(16), tls=tls).start()
    yield turn
    turn.stop()


def server_with_turn(start_server: Any, turn: Coturn) -> ServerProcess:
    config = {"uris": turn.uris(), "shared_secret": turn.secret, "ttl": "1h"}
    server: ServerProcess = start_server(
        {"plugins": [{"module": "plugins.calls.CallsPlugin", "config": {"turn": config}}]}
    )
    return server


def credentials_of(server: ServerProcess, username: str) -> dict[str, Any]:
    user = server.register(username)
    r = requests.get(
        server.url("/_matrix/client/v3/voip/turnServer"),
        headers={"Authorization": f"Bearer {user['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


class Received(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


async def relay_round_trip(
    turn: Coturn,
    username: str,
    password: str,
    transport: str,
    address: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Allocate a relay with these credentials (at `address`, by default coturn's plain port;
    with `tls`, over TLS), send to a plain UDP peer through it and get the peer's answer
    back: what a WebRTC relay candidate does."""
    loop = asyncio.get_running_loop()
    relay, client = await create_turn_endpoint(
        Received, address or turn.address, username, password, transport=transport, ssl=tls
    )
    peer_transport, peer = await loop.create_datagram_endpoint(Received, local_addr=("127.0.0.1", 0))
    try:
        relayed = relay.get_extra_info("sockname")
        peer_addr = peer_transport.get_extra_info("sockname")
        relay.sendto(b"ping from the caller", peer_addr)
        data, seen_from = await asyncio.wait_for(peer.queue.get(), 10)
        peer_transport.sendto(b"pong from the peer", seen_from)
        answer, answer_from = await asyncio.wait_for(client.queue.get(), 10)
        return {
            "relayed": tuple(relayed),
            "peer_got": data,
            "peer_saw": tuple(seen_from),
            "client_got": answer,
            "client_saw": tuple(answer_from),
            "peer": tuple(peer_addr),
        }
    finally:
        relay.close()
        peer_transport.close()


async def allocation_error(
    turn: Coturn,
    username: str,
    password: str,
    address: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
) -> int:
    """The STUN error code coturn answers an ALLOCATE with these credentials."""
    transport = "tcp" if tls else "udp"
    try:
        relay, _ = await create_turn_endpoint(
            Received, address or turn.address, username, password, transport=transport, ssl=tls
        )
    except stun.TransactionFailed as e:
        return int(e.response.attributes["ERROR-CODE"][0])
    relay.close()
    raise AssertionError("coturn allocated a relay")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_handed_out_credentials_allocate_a_relay(start_server: Any, coturn: Coturn, transport: str) -> None:
    server = server_with_turn(start_server, coturn)
    creds = credentials_of(server, f"caller_{transport}")
    assert any(f"transport={transport}" in uri for uri in creds["uris"])
    seen = run_async(relay_round_trip(coturn, creds["username"], creds["password"], transport))
    # The peer sees the relay's address, never the client's: the media would go through coturn.
    assert seen["peer_got"] == b"ping from the caller"
    assert seen["peer_saw"] == seen["relayed"] and seen["relayed"][1] >= coturn.min_port
    assert seen["client_got"] == b"pong from the peer" and seen["client_saw"] == seen["peer"]


def test_expired_and_forged_credentials_are_refused(start_server: Any, coturn: Coturn) -> None:
    server = server_with_turn(start_server, coturn)
    creds = credentials_of(server, "mallory")
    user_id = creds["username"].partition(":")[2]

    # Made by the plugin's own code two hours ago with a one-hour ttl: expired an hour ago.
    config = parse_calls_config(
        {"turn": {"uris": coturn.uris(), "shared_secret": coturn.secret, "ttl": "1h"}}
    )
    expired = turn_credentials(config.turn, user_id, time.time() - 7200)
    assert run_async(allocation_error(coturn, expired["username"], expired["password"])) == 401

    # A later expiry with the old password: the HMAC no longer matches.
    forged_name = f"{int(creds['username'].partition(':')[0]) + 86400}:{user_id}"
    assert run_async(allocation_error(coturn, forged_name, creds["password"])) == 401

    # Signed with another secret.
    wrong = base64.b64encode(hmac.new(b"not the secret", creds["username"].encode(), hashlib.sha1).digest())
    assert run_async(allocation_error(coturn, creds["username"], wrong.decode())) == 401

    # The genuine ones still work after all that.
    seen = run_async(relay_round_trip(coturn, creds["username"], creds["password"], "udp"))
    assert seen["peer_got"] == b"ping from the caller"


def turns_address(uris: list[str]) -> tuple[str, int]:
    """Host and port of the one `turns:` URI (RFC 7065: turns:host:port?transport=tcp)."""
    (uri,) = [u for u in uris if u.startswith("turns:")]
    host, _, port = uri[len("turns:") :].partition("?")[0].rpartition(":")
    return host, int(port)


def test_turns_uri_allocates_a_relay_over_tls(start_server: Any, coturn_tls: Coturn) -> None:
    server = server_with_turn(start_server, coturn_tls)
    creds = credentials_of(server, "tls_caller")
    address = turns_address(creds["uris"])
    assert address == ("127.0.0.1", coturn_tls.tls_port)
    assert coturn_tls.tls is not None
    # The client checks coturn's certificate (and that it is for 127.0.0.1) against the one
    # made for this test: a TLS handshake with anything else fails.
    tls = ssl.create_default_context(cafile=str(coturn_tls.tls[0]))
    seen = run_async(relay_round_trip(coturn_tls, creds["username"], creds["password"], "tcp", address, tls))
    assert seen["peer_got"] == b"ping from the caller" and seen["client_got"] == b"pong from the peer"
    assert seen["peer_saw"] == seen["relayed"] and seen["relayed"][1] >= coturn_tls.min_port
    assert "TLS/TCP" in coturn_tls.log_text()

    # Without trusting that certificate, the client refuses the connection.
    with pytest.raises(ssl.SSLCertVerificationError):
        run_async(
            relay_round_trip(
                coturn_tls, creds["username"], creds["password"], "tcp", address, ssl.create_default_context()
            )
        )


def test_expired_and_forged_credentials_are_refused_over_tls(start_server: Any, coturn_tls: Coturn) -> None:
    server = server_with_turn(start_server, coturn_tls)
    creds = credentials_of(server, "tls_mallory")
    user_id = creds["username"].partition(":")[2]
    address = turns_address(creds["uris"])
    assert coturn_tls.tls is not None
    tls = ssl.create_default_context(cafile=str(coturn_tls.tls[0]))

    config = parse_calls_config(
        {"turn": {"uris": coturn_tls.uris(), "shared_secret": coturn_tls.secret, "ttl": "1h"}}
    )
    expired = turn_credentials(config.turn, user_id, time.time() - 7200)
    assert (
        run_async(allocation_error(coturn_tls, expired["username"], expired["password"], address, tls)) == 401
    )
    forged_name = f"{int(creds['username'].partition(':')[0]) + 86400}:{user_id}"
    assert run_async(allocation_error(coturn_tls, forged_name, creds["password"], address, tls)) == 401
    wrong = base64.b64encode(hmac.new(b"not the secret", creds["username"].encode(), hashlib.sha1).digest())
    assert run_async(allocation_error(coturn_tls, creds["username"], wrong.decode(), address, tls)) == 401
