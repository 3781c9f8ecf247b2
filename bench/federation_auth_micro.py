"""Micro-benchmark: inbound X-Matrix signature checks per second on one core.

    .venv/bin/python -m bench.federation_auth_micro [--seconds 3] [--body-bytes 2000]

Signs requests as a remote server would (a GET without a body, and a PUT with a JSON body
of about `body-bytes`), then times what the server does per inbound request once the
origin's key is cached: parse the Authorization header, rebuild the signed JSON, check
the ed25519 signature (RequestAuthenticator.origin_of, the key ring's memory cache).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from signedjson.key import generate_signing_key
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as ReactorClock

from homeserver.config import FederationConfig
from homeserver.core.clock import Clock
from homeserver.core.federation.authenticator import RequestAuthenticator
from homeserver.core.federation.keys import KeyRing, OwnKeys
from homeserver.core.federation.request_auth import authorization_header
from homeserver.signing_key import verify_key_base64
from homeserver.storage.server_keys import StoredKey

US, THEM = "us.example", "them.example"


class _Store:
    async def keys_of(self, server_name: str) -> list[StoredKey]:
        return []

    async def store(self, keys: list[StoredKey], fetched_ts: int) -> None:
        pass


def _rate(seconds: float, check: Any) -> float:
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            d = Deferred.fromCoroutine(check())
            assert d.called  # the key is in memory: no waiting
        done += 100
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--body-bytes", type=int, default=2000)
    args = parser.parse_args()

    reactor_clock = ReactorClock()
    reactor_clock.advance(1_800_000_000)
    clock = Clock(reactor_clock)
    theirs = generate_signing_key("t1")
    own = OwnKeys(US, generate_signing_key("u1"), FederationConfig(), clock)
    ring = KeyRing(_Store(), clock, own, None, None, [])  # type: ignore[arg-type]
    key = StoredKey(THEM, "ed25519:t1", verify_key_base64(theirs), 1_900_000_000_000, None, "{}")
    ring._keys[THEM] = {key.key_id: key}
    auth = RequestAuthenticator(US, ring, clock)

    get_uri = "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aus.example"
    get_header = authorization_header("GET", get_uri, THEM, US, theirs)
    body = {"pdus": [{"type": "m.room.message", "content": {"body": "x" * args.body_bytes}}], "edus": []}
    put_uri = "/_matrix/federation/v1/send/1700000000000"
    put_header = authorization_header("PUT", put_uri, THEM, US, theirs, body)

    get_rate = _rate(args.seconds, lambda: auth.origin_of("GET", get_uri, get_header, None))
    put_rate = _rate(args.seconds, lambda: auth.origin_of("PUT", put_uri, put_header, body))
    print("| request | signed-request checks/s (one core) |")
    print("|---|---|")
    print(f"| GET, no body | {get_rate:,.0f} |")
    print(f"| PUT, ~{args.body_bytes} B JSON body | {put_rate:,.0f} |")


if __name__ == "__main__":
    main()
