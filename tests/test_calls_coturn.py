"""coturn as a real part: the credentials the calls plugin hands out allocate a relay on a
real turnserver (Debian's coturn, `use-auth-secret`, tests/coturn.py), and data goes through
it both ways; expired and forged credentials are refused by coturn itself.

The TURN client is aioice's (the ICE library under aiortc), run on its own asyncio loop in a
worker thread, whatever reactor pytest uses.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import secrets
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aioice import stun
from aioice.turn import create_turn_endpoint
from conftest import ServerProcess
from coturn import Coturn

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


async def relay_round_trip(turn: Coturn, username: str, password: str, transport: str) -> dict[str, Any]:
    """Allocate a relay with these credentials, send to a plain UDP peer through it and
    get the peer's answer back: what a WebRTC relay candidate does."""
    loop = asyncio.get_running_loop()
    relay, client = await create_turn_endpoint(
        Received, turn.address, username, password, transport=transport
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


async def allocation_error(turn: Coturn, username: str, password: str) -> int:
    """The STUN error code coturn answers an ALLOCATE with these credentials."""
    try:
        relay, _ = await create_turn_endpoint(Received, turn.address, username, password)
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
