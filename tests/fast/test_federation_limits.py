"""Inbound federation safety, in-process on a clock the test moves: per-origin request
rates and concurrency (one noisy server is limited, another is not), body size caps per
federation path, and strict JSON in what other servers send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import TestClock, connect, make_server, parse_response, turn, until
from remote_server import Origin, profile_uri, signed, start
from twisted.internet.defer import Deferred

from homeserver.api.federation.auth import require_origin
from homeserver.api.http import ApiRequest
from homeserver.errors import LimitExceeded
from homeserver.server import HomeServer

NOISY, QUIET = "noisy.example", "quiet.example"
HOLD = "/_matrix/federation/v1/test_hold"


async def limited_server(tmp_path: Path, clock: TestClock, **federation: Any) -> HomeServer:
    hs = await make_server(tmp_path, clock, rate_limits={"enabled": True}, federation=federation)
    return hs


@pytest_twisted.ensureDeferred
async def test_a_noisy_origin_is_limited_and_another_is_not(tmp_path: Path) -> None:
    clock = TestClock()
    # 0.5 a second: an empty bucket has its next token in 2 s.
    hs = await limited_server(tmp_path, clock, rc_requests={"per_second": 0.5, "burst": 3})
    try:
        noisy, quiet = Origin(NOISY), Origin(QUIET)
        for origin in (noisy, quiet):
            await origin.introduce(hs)
        user_id = await hs.accounts.register("alice", "correct horse battery")
        uri = profile_uri(user_id)
        # Forged requests in the noisy server's name spend nothing of its allowance.
        forger = Origin(NOISY)
        for _ in range(5):
            status, _, body = await signed(hs, forger, "GET", uri)
            assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
        for _ in range(3):
            status, _, body = await signed(hs, noisy, "GET", uri)
            assert status == 200, body
        status, headers, body = await signed(hs, noisy, "GET", uri)
        assert (status, body["errcode"], body["retry_after_ms"]) == (429, "M_LIMIT_EXCEEDED", 2000)
        assert headers["retry-after"] == "2"
        # The quiet server is not held back by the noisy one.
        for _ in range(3):
            status, _, body = await signed(hs, quiet, "GET", uri)
            assert status == 200, body
        await turn()
        clock.advance(1.9)
        assert (await signed(hs, noisy, "GET", uri))[0] == 429
        clock.advance(0.1)
        assert (await signed(hs, noisy, "GET", uri))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_an_origins_requests_wait_their_turn_past_its_concurrency(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, rc_concurrent=2, rc_queued=1)
    try:
        noisy, quiet = Origin(NOISY), Origin(QUIET)
        for origin in (noisy, quiet):
            await origin.introduce(hs)
        entered: list[str] = []
        holds: list[Deferred[None]] = []

        async def hold(request: ApiRequest) -> dict[str, Any]:
            origin = await require_origin(hs, request)
            entered.append(origin)
            held: Deferred[None] = Deferred()
            holds.append(held)
            await held
            return {"origin": origin}

        hs.router.add("GET", HOLD, hold)
        answers = [signed(hs, noisy, "GET", HOLD) for _ in range(3)]
        await until(lambda: len(entered) == 2, "two of the noisy server's requests running")
        # The third waits; a fourth finds the queue full.
        status, _, body = await signed(hs, noisy, "GET", HOLD)
        assert (status, body["errcode"], body["retry_after_ms"]) == (429, "M_LIMIT_EXCEEDED", 1000)
        quiet_answer = signed(hs, quiet, "GET", HOLD)
        await until(lambda: entered == [NOISY, NOISY, QUIET], "the quiet server's request running")
        assert hs.federation.origin_limits.waiting(NOISY) == 1
        # One noisy request answered: the waiting one takes its slot.
        holds[0].callback(None)
        assert (await answers[0])[0] == 200
        await until(lambda: len(entered) == 4, "the waiting request running")
        assert entered[3] == NOISY
        for held in holds[1:]:
            held.callback(None)
        for answer in (*answers[1:], quiet_answer):
            status, _, body = await answer
            assert status == 200, body
        assert hs.federation.origin_limits.running(NOISY) == 0
        assert hs.federation.origin_limits.waiting(NOISY) == 0
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_federation_bodies_are_capped_per_path(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    try:
        big = json.dumps({"server_keys": {}, "pad": "x" * 70_000}).encode()
        status, _, body = await start(hs, "POST", "/_matrix/key/v2/query", body=big)
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        # Any federation request past 512 KiB, before its signature is looked at...
        status, _, body = await start(
            hs, "PUT", "/_matrix/federation/v2/send_join/!r/$e", body=b" " * 600_000
        )
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        # ...but a transaction may carry up to 4 MiB (50 PDUs of 64 KiB and EDUs).
        txn = json.dumps({"pdus": [], "edus": [], "pad": "x" * 2_000_000}).encode()
        status, _, body = await start(hs, "PUT", "/_matrix/federation/v1/send/t1", body=txn)
        assert status != 413, body
        # A huge one is answered at once, without waiting for the body.
        assert hs.http is not None
        _, transport = connect(hs.http)
        transport.protocol.dataReceived(
            b"PUT /_matrix/federation/v1/send/t2 HTTP/1.1\r\nHost: test\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        await transport.closed
        status, _, data = parse_response(transport.value())
        assert (status, json.loads(data)["errcode"]) == (413, "M_TOO_LARGE")
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_json_two_parsers_could_read_differently_is_refused(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    try:
        origin = Origin(NOISY)
        await origin.introduce(hs)

        async def echo(request: ApiRequest) -> dict[str, Any]:
            return {"origin": await require_origin(hs, request)}

        hs.router.add("PUT", HOLD, echo)
        cases = [
            (b'{"a": 1, "a": 2}', "M_BAD_JSON"),
            (b'{"a": NaN}', "M_NOT_JSON"),
            (b'{"a": -Infinity}', "M_NOT_JSON"),
            (b'{"a": 9007199254740992}', "M_BAD_JSON"),
            (b'{"a": 1e400}', "M_BAD_JSON"),
            (b'{"a": ' + b"9" * 5000 + b"}", "M_BAD_JSON"),
            (b"[" * 50_000, "M_NOT_JSON"),
            (b'{"a": "\\ud800"}', "M_BAD_JSON"),  # a lone surrogate: no UTF-8 for it
            (b'{"\\uDFFF": 1}', "M_BAD_JSON"),
        ]
        for raw, errcode in cases:
            for method, uri in (("PUT", HOLD), ("POST", "/_matrix/key/v2/query")):
                auth = origin.header(hs, method, uri, {"a": 1})
                status, _, body = await start(hs, method, uri, auth, raw)
                assert (status, body.get("errcode")) == (400, errcode), (raw[:40], uri, body)
        # Canonical JSON's extremes pass.
        content = {"a": 9007199254740991, "b": -9007199254740991, "c": [{"d": None}], "e": "\U0001f600"}
        status, _, body = await signed(hs, origin, "PUT", HOLD, content)
        assert (status, body) == (200, {"origin": NOISY})
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_the_unsigned_key_routes_are_limited_per_client_address(tmp_path: Path) -> None:
    # They name no origin server, and a notary query makes us fetch from others: a bucket
    # per address keeps one client from making us its fetcher.
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, rc_key_requests_per_ip={"per_second": 1, "burst": 3})
    try:
        routes = [
            ("GET", "/_matrix/key/v2/server", None),
            ("GET", f"/_matrix/key/v2/query/{hs.config.server_name}", None),
            ("POST", "/_matrix/key/v2/query", b'{"server_keys": {}}'),
        ]
        for method, uri, body in routes:
            status, _, answer = await start(hs, method, uri, body=body)
            assert status == 200, answer
        for method, uri, body in routes:
            status, headers, answer = await start(hs, method, uri, body=body)
            assert (status, answer["errcode"], answer["retry_after_ms"]) == (429, "M_LIMIT_EXCEEDED", 1000)
        await turn()
        clock.advance(1)
        assert (await start(hs, "GET", "/_matrix/key/v2/server"))[0] == 200
        # Signed federation requests spend a server's allowance, not this one.
        origin = Origin(QUIET)
        await origin.introduce(hs)
        user_id = await hs.accounts.register("bob", "correct horse battery")
        assert (await signed(hs, origin, "GET", profile_uri(user_id)))[0] == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_the_key_routes_bucket_an_ipv6_client_by_its_slash_64(tmp_path: Path) -> None:
    # A host given a /64 could take a new address for each request: each its own bucket,
    # no limit at all. One bucket per /64; IPv4 (mapped or not) per address.
    clock = TestClock()
    hs = await limited_server(tmp_path, clock, rc_key_requests_per_ip={"per_second": 1, "burst": 3})
    try:
        limits = hs.federation.origin_limits
        for n in range(1, 4):
            limits.check_key_request(f"2001:db8:1:2::{n}")
        with pytest.raises(LimitExceeded):
            limits.check_key_request("2001:db8:1:2:ffff::9")
        limits.check_key_request("2001:db8:1:3::1")  # another /64
        for _ in range(3):
            limits.check_key_request("::ffff:192.0.2.1")
        with pytest.raises(LimitExceeded):
            limits.check_key_request("192.0.2.1")  # the same address, mapped or not
        limits.check_key_request("192.0.2.2")
    finally:
        await hs.stop(None)
