"""Federation's rules in process: X-Matrix headers, server discovery (with a real DNS stub
for SRV), and the key ring's validity windows, coalescing and failure cache."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from signedjson.key import encode_verify_key_base64, generate_signing_key
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as ReactorClock

from homeserver.config import FederationConfig
from homeserver.core.clock import Clock
from homeserver.core.federation.discovery import Destination, ServerResolver, WellKnownAnswer
from homeserver.core.federation.keys import KeyNotFound, KeyRing, OwnKeys
from homeserver.core.federation.request_auth import (
    authorization_header,
    check_signature,
    parse_authorization,
    signed_request_json,
)
from homeserver.errors import Unauthorized
from homeserver.storage.server_keys import StoredKey

START_S = 1_800_000_000.0


def make_clock() -> tuple[Clock, ReactorClock]:
    time = ReactorClock()
    time.advance(START_S)
    return Clock(time), time


# X-Matrix ---------------------------------------------------------------------------------


def test_authorization_header_round_trip_and_parsing_variants() -> None:
    key = generate_signing_key("k1")
    header = authorization_header(
        "PUT", "/_matrix/federation/v1/send/1", "a.example", "b.example", key, {"x": 1}
    )
    auth = parse_authorization(header)
    assert (auth.origin, auth.destination, auth.key_id) == ("a.example", "b.example", "ed25519:k1")
    request = signed_request_json("PUT", "/_matrix/federation/v1/send/1", "a.example", "b.example", {"x": 1})
    from signedjson.key import get_verify_key

    check_signature(request, auth, get_verify_key(key))
    # Another body, method or path is refused.
    for changed in (dict(request, content={"x": 2}), dict(request, method="GET"), dict(request, uri="/x")):
        with pytest.raises(Unauthorized):
            check_signature(changed, auth, get_verify_key(key))
    # Unquoted values, spaces, other case of the scheme and names (RFC 9110 auth-params).
    loose = parse_authorization(
        'x-matrix Origin=a.example, destination="b.example" ,key="ed25519:k1",sig=abc'
    )
    assert (loose.origin, loose.destination, loose.signature) == ("a.example", "b.example", "abc")
    for bad in ("", "X-Matrix", 'X-Matrix origin="a"', 'X-Matrix origin="a,key="k",sig="s"', "Basic abc"):
        with pytest.raises(Unauthorized):
            parse_authorization(bad)


# Discovery --------------------------------------------------------------------------------


class WellKnown:
    def __init__(self, answers: dict[str, WellKnownAnswer]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str) -> WellKnownAnswer:
        self.asked.append(host)
        return self.answers.get(host, WellKnownAnswer(404))


def no_srv() -> Any:
    async def lookup(name: str) -> list[tuple[int, int, str, int]]:
        return []

    return lookup


def answer(m_server: str, cache_control: str | None = None) -> WellKnownAnswer:
    return WellKnownAnswer(200, json.dumps({"m.server": m_server}).encode(), cache_control)


@pytest_twisted.ensureDeferred
async def test_discovery_literals_ports_well_known_and_defaults() -> None:
    clock, _ = make_clock()
    well_known = WellKnown(
        {
            "deleg.example": answer("matrix.deleg.example:8443"),
            "ip.example": answer("10.1.2.3"),
            "bare.example": answer("host.bare.example"),
            "bad.example": WellKnownAnswer(200, b"{not json"),
        }
    )
    resolver = ServerResolver(clock, well_known, no_srv())
    cases = {
        "1.2.3.4": Destination("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4"),
        "[::1]:9000": Destination("::1", 9000, "[::1]:9000", "::1"),
        "example.org:1234": Destination("example.org", 1234, "example.org:1234", "example.org"),
        "deleg.example": Destination(
            "matrix.deleg.example", 8443, "matrix.deleg.example:8443", "matrix.deleg.example"
        ),
        "ip.example": Destination("10.1.2.3", 8448, "10.1.2.3", "10.1.2.3"),
        "bare.example": Destination("host.bare.example", 8448, "host.bare.example", "host.bare.example"),
        "bad.example": Destination("bad.example", 8448, "bad.example", "bad.example"),
        "none.example": Destination("none.example", 8448, "none.example", "none.example"),
    }
    for name, expected in cases.items():
        assert await resolver.resolve(name) == expected, name
    # Explicit ports and literals never ask .well-known.
    assert sorted(well_known.asked) == [
        "bad.example",
        "bare.example",
        "deleg.example",
        "ip.example",
        "none.example",
    ]


@pytest_twisted.ensureDeferred
async def test_well_known_is_kept_for_its_lifetime() -> None:
    clock, time = make_clock()
    well_known = WellKnown({"a.example": answer("one.example:1", "public, max-age=3600")})
    resolver = ServerResolver(clock, well_known, no_srv())
    assert (await resolver.resolve("a.example")).port == 1
    well_known.answers["a.example"] = answer("two.example:2")
    time.advance(3599)
    assert (await resolver.resolve("a.example")).port == 1
    time.advance(2)
    assert (await resolver.resolve("a.example")).port == 2  # no Cache-Control: a day
    well_known.answers["a.example"] = answer("three.example:3")
    time.advance(23 * 3600)
    assert (await resolver.resolve("a.example")).port == 2
    time.advance(3600)
    assert (await resolver.resolve("a.example")).port == 3
    # A failure is asked again after 10 minutes, not a day.
    well_known.answers["b.example"] = WellKnownAnswer(None)
    assert (await resolver.resolve("b.example")).port == 8448
    well_known.answers["b.example"] = answer("b2.example:5")
    time.advance(599)
    assert (await resolver.resolve("b.example")).port == 8448
    time.advance(2)
    assert (await resolver.resolve("b.example")).port == 5


@pytest_twisted.ensureDeferred
async def test_srv_records_from_a_dns_server() -> None:
    """SRV through a real DNS exchange: a twisted.names server on loopback UDP."""
    from twisted.internet import reactor
    from twisted.internet.defer import fail, succeed
    from twisted.names import client, dns, error, server
    from twisted.names.common import ResolverBase

    from homeserver.core.federation.client import srv_lookup

    records = {
        b"_matrix-fed._tcp.fed.example": [
            (10, 5, "backup.fed.example", 9001),
            (5, 5, "main.fed.example", 9000),
        ],
        b"_matrix._tcp.old.example": [(0, 0, "legacy.old.example", 7000)],
        b"_matrix-fed._tcp.deleg-target.example": [(0, 0, "srv.deleg-target.example", 6000)],
    }

    class Zone(ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:  # noqa: A002
            if type != dns.SRV or name not in records:
                return fail(error.DomainError(name))
            answers = [
                dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(p, w, port, target, ttl=60))
                for p, w, target, port in records[name]
            ]
            return succeed((answers, [], []))

    factory = server.DNSServerFactory(authorities=[Zone()])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    try:
        dns_client = client.Resolver(servers=[("127.0.0.1", port.getHost().port)])
        clock, _ = make_clock()
        well_known = WellKnown({"deleg.example": answer("deleg-target.example")})
        resolver = ServerResolver(clock, well_known, srv_lookup(dns_client))
        # The lowest priority wins; Host and the certificate stay the server name's.
        assert await resolver.resolve("fed.example") == Destination(
            "main.fed.example", 9000, "fed.example", "fed.example"
        )
        assert await resolver.resolve("old.example") == Destination(
            "legacy.old.example", 7000, "old.example", "old.example"
        )
        assert await resolver.resolve("deleg.example") == Destination(
            "srv.deleg-target.example", 6000, "deleg-target.example", "deleg-target.example"
        )
        assert await resolver.resolve("plain.example") == Destination(
            "plain.example", 8448, "plain.example", "plain.example"
        )
    finally:
        await port.stopListening()


# The key ring -----------------------------------------------------------------------------


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StoredKey] = {}

    async def keys_of(self, server_name: str) -> list[StoredKey]:
        return [k for (s, _), k in self.rows.items() if s == server_name]

    async def store(self, keys: list[StoredKey], fetched_ts: int) -> None:
        for key in keys:
            self.rows[(key.server_name, key.key_id)] = key


class Remote:
    """A remote server's key endpoint that answers when told to."""

    def __init__(self, name: str, valid_until_ts: int) -> None:
        self.name = name
        self.key = generate_signing_key("r1")
        self.valid_until_ts = valid_until_ts
        self.calls = 0
        self.pending: list[Deferred[Any]] = []
        self.fail = False

    async def get_json(self, server_name: str, path: str) -> Any:
        from signedjson.sign import sign_json

        from homeserver.signing_key import verify_key_base64

        assert (server_name, path) == (self.name, "/_matrix/key/v2/server")
        self.calls += 1
        gate: Deferred[Any] = Deferred()
        self.pending.append(gate)
        await gate
        if self.fail:
            raise ConnectionError("refused")
        body = {
            "server_name": self.name,
            "valid_until_ts": self.valid_until_ts,
            "verify_keys": {"ed25519:r1": {"key": verify_key_base64(self.key)}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.name, self.key)

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for gate in pending:
            gate.callback(None)


def make_ring(remote: Remote) -> tuple[KeyRing, MemoryStore, ReactorClock]:
    clock, time = make_clock()
    own = OwnKeys("us.example", generate_signing_key("o1"), FederationConfig(), clock)

    async def post_json(server: str, path: str, body: Any) -> Any:
        raise AssertionError("no notary configured")

    store = MemoryStore()
    return KeyRing(store, clock, own, remote.get_json, post_json, []), store, time  # type: ignore[arg-type]


async def _settle() -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_key_ring_coalesces_fetches_and_keeps_keys() -> None:
    now_ms = int(START_S * 1000)
    remote = Remote("r.example", now_ms + 3_600_000)
    ring, store, _ = make_ring(remote)
    waits = [Deferred.fromCoroutine(ring.verify_key("r.example", "ed25519:r1", now_ms)) for _ in range(5)]
    await _settle()
    assert remote.calls == 1  # five lookups, one request
    remote.release()
    keys = [await w for w in waits]
    assert {k.version for k in keys} == {"r1"}
    assert ("r.example", "ed25519:r1") in store.rows
    # Known now: no further request for times within its validity.
    await ring.verify_key("r.example", "ed25519:r1", now_ms + 3_600_000)
    assert remote.calls == 1


async def _answered(remote: Remote, lookup: Any) -> Any:
    """Run `lookup` while the remote answers its fetch."""
    d = Deferred.fromCoroutine(lookup)
    await _settle()
    remote.release()
    return await d


@pytest_twisted.ensureDeferred
async def test_a_key_counts_only_while_valid_and_fetches_are_bounded() -> None:
    now_ms = int(START_S * 1000)
    remote = Remote("r.example", now_ms + 1000)
    ring, _, time = make_ring(remote)
    await _answered(remote, ring.verify_key("r.example", "ed25519:r1", now_ms))
    # An event from after the key's valid_until_ts: refused. The server answered less than
    # 30 s ago, so it is not asked again (nor for made-up key ids).
    for kid in ("ed25519:r1", "ed25519:made_up"):
        with pytest.raises(KeyNotFound, match="asked 30 s ago"):
            await ring.verify_key("r.example", kid, now_ms + 5000)
    assert remote.calls == 1
    # Later the server is asked again; it still says 1000 ms: refused.
    time.advance(31)
    with pytest.raises(KeyNotFound, match="not valid at"):
        await _answered(remote, ring.verify_key("r.example", "ed25519:r1", now_ms + 5000))
    assert remote.calls == 2
    # The server goes away: the failure is remembered for 30 s (no request meanwhile).
    time.advance(31)
    remote.fail = True
    with pytest.raises(KeyNotFound, match="could not fetch"):
        await _answered(remote, ring.verify_key("r.example", "ed25519:other", now_ms))
    assert remote.calls == 3
    with pytest.raises(KeyNotFound, match="failed recently"):
        await ring.verify_key("r.example", "ed25519:other", now_ms)
    assert remote.calls == 3
    # The key it had still checks what falls within its validity meanwhile.
    assert (await ring.verify_key("r.example", "ed25519:r1", now_ms)).version == "r1"
    time.advance(31)
    remote.fail = False
    with pytest.raises(KeyNotFound, match="has no key"):
        await _answered(remote, ring.verify_key("r.example", "ed25519:other", now_ms))
    assert remote.calls == 4


@pytest_twisted.ensureDeferred
async def test_keys_for_the_event_layers_synchronous_lookup() -> None:
    """ensure_keys fetches what the event checks will ask; cached_key answers from memory,
    and only for times within a key's validity (an event's origin_server_ts)."""
    now_ms = int(START_S * 1000)
    remote = Remote("r.example", now_ms + 60_000)
    ring, _, _ = make_ring(remote)
    assert ring.cached_key("r.example", "ed25519:r1", now_ms) is None  # nothing fetched yet
    d = Deferred.fromCoroutine(ring.ensure_keys([("r.example", "ed25519:r1", now_ms)]))
    await _settle()
    remote.release()
    await d
    assert ring.cached_key("r.example", "ed25519:r1", now_ms + 60_000) is not None
    assert ring.cached_key("r.example", "ed25519:r1", now_ms + 60_001) is None
    assert ring.cached_key("r.example", "ed25519:unknown", now_ms) is None
    # Our own key, and an unreachable server leaves no key and raises nothing.
    own = f"{ring.own.signing_key.alg}:{ring.own.signing_key.version}"
    assert ring.cached_key("us.example", own, now_ms) is not None
    remote.fail = True
    d = Deferred.fromCoroutine(ring.ensure_keys([("s.example", "ed25519:x", now_ms)]))
    await d
    assert ring.cached_key("s.example", "ed25519:x", now_ms) is None


@pytest_twisted.ensureDeferred
async def test_one_notary_query_fetches_at_most_ten_servers() -> None:
    from homeserver.core.federation.keys import Notary
    from homeserver.errors import BadJson

    clock, _ = make_clock()
    own = OwnKeys("us.example", generate_signing_key("o1"), FederationConfig(), clock)
    asked: list[str] = []

    async def get_json(server_name: str, path: str) -> Any:
        asked.append(server_name)
        raise ConnectionError("not there")

    async def post_json(server: str, path: str, body: Any) -> Any:
        raise AssertionError("no notary configured")

    ring = KeyRing(MemoryStore(), clock, own, get_json, post_json, [])  # type: ignore[arg-type]
    notary = Notary(own, ring, clock)
    query = {"server_keys": {f"s{i}.example": {} for i in range(15)} | {"us.example": {}}}
    answer = await notary.query(query)
    assert [a["server_name"] for a in answer["server_keys"]] == ["us.example"]
    assert len(asked) == 10
    with pytest.raises(BadJson):
        await notary.query({"server_keys": {"not a server name": {}}})
    with pytest.raises(BadJson):
        await notary.query({"server_keys": {f"s{i}.example": {} for i in range(101)}})


@pytest_twisted.ensureDeferred
async def test_trusted_key_servers_vouch_when_the_server_cannot_be_reached() -> None:
    from signedjson.sign import sign_json

    from homeserver.signing_key import verify_key_base64

    now_ms = int(START_S * 1000)
    clock, _ = make_clock()
    own = OwnKeys("us.example", generate_signing_key("o1"), FederationConfig(), clock)
    origin_key, notary_key, rogue_key = (
        generate_signing_key("r1"),
        generate_signing_key("n1"),
        generate_signing_key("n1"),
    )

    def key_answer(name: str, key: Any) -> dict[str, Any]:
        body = {
            "server_name": name,
            "valid_until_ts": now_ms + 3_600_000,
            "verify_keys": {f"ed25519:{key.version}": {"key": verify_key_base64(key)}},
        }
        return sign_json(body, name, key)

    async def get_json(server_name: str, path: str) -> Any:
        if server_name == "notary.example":
            return key_answer("notary.example", notary_key)
        raise ConnectionError(f"{server_name} is down")

    countersigner = {"key": notary_key}

    async def post_json(server: str, path: str, body: Any) -> Any:
        assert (server, path) == ("notary.example", "/_matrix/key/v2/query")
        assert list(body["server_keys"]) == ["r.example"]
        return {
            "server_keys": [
                sign_json(key_answer("r.example", origin_key), "notary.example", countersigner["key"])
            ]
        }

    ring = KeyRing(MemoryStore(), clock, own, get_json, post_json, ["notary.example"])  # type: ignore[arg-type]
    key = await ring.verify_key("r.example", "ed25519:r1", now_ms)
    assert encode_verify_key_base64(key) == verify_key_base64(origin_key)

    # An answer the notary did not really sign (another key under its key id) is refused.
    ring = KeyRing(MemoryStore(), clock, own, get_json, post_json, ["notary.example"])  # type: ignore[arg-type]
    countersigner["key"] = rogue_key
    with pytest.raises(KeyNotFound):
        await ring.verify_key("r.example", "ed25519:r1", now_ms)
