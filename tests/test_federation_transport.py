"""Federation identity and transport between two of our servers over TLS: keys, the
notary, X-Matrix signatures refused when wrong, and the profile query both ways."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import requests
from federation_harness import LOOPBACK, FederatedServer, TestCA, start_federated_server
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from signedjson.key import decode_verify_key_bytes, generate_signing_key
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from homeserver.core.federation.request_auth import authorization_header

OLD_KEY = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer]]:
    old = {"old_verify_keys": {"ed25519:a_old": {"key": OLD_KEY, "expired_ts": 1_600_000_000_000}}}
    a = start_federated_server(tmp_path_factory.mktemp("hs-a"), ca, {"federation": old})
    b = start_federated_server(tmp_path_factory.mktemp("hs-b"), ca)
    yield a, b
    # After federation traffic both ways, each still shuts down cleanly (kept-alive
    # federation connections closed).
    for server in (a, b):
        assert server.process.stop() == 0
        assert "shut down cleanly" in server.process.log_text()


def _check_self_signed(body: dict[str, Any], server_name: str) -> None:
    assert body["server_name"] == server_name
    for key_id, entry in body["verify_keys"].items():
        verify_signed_json(body, server_name, decode_verify_key_bytes(key_id, decode_base64(entry["key"])))


def test_keys_are_served_over_tls_and_signed_by_themselves(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    a, _ = servers
    r = a.get("/_matrix/key/v2/server")
    assert r.status_code == 200, r.text
    body = r.json()
    _check_self_signed(body, a.server_name)
    week = 7 * 86_400_000
    assert abs(body["valid_until_ts"] - (time.time() * 1000 + week)) < 600_000
    assert body["old_verify_keys"] == {"ed25519:a_old": {"key": OLD_KEY, "expired_ts": 1_600_000_000_000}}
    # The main listener serves the same paths (for a TLS-terminating proxy in front of it).
    assert (
        requests.get(a.process.url("/_matrix/key/v2/server"), timeout=10).json()["server_name"]
        == a.server_name
    )
    # A client that does not trust the test CA refuses the certificate.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(a.federation_url("/_matrix/key/v2/server"), timeout=10)


def test_the_notary_vouches_for_another_servers_keys(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    a, b = servers
    r = a.post("/_matrix/key/v2/query", json={"server_keys": {b.server_name: {}}})
    assert r.status_code == 200, r.text
    [answer] = r.json()["server_keys"]
    _check_self_signed(answer, b.server_name)
    a_keys = a.get("/_matrix/key/v2/server").json()
    ((a_key_id, a_key),) = a_keys["verify_keys"].items()
    verify_signed_json(answer, a.server_name, decode_verify_key_bytes(a_key_id, decode_base64(a_key["key"])))
    # The GET form, and an unknown server is left out, not an error.
    r = a.get(f"/_matrix/key/v2/query/{b.server_name}")
    assert [k["server_name"] for k in r.json()["server_keys"]] == [b.server_name]
    r = a.post("/_matrix/key/v2/query", json={"server_keys": {"localhost:1": {}}})
    assert r.status_code == 200 and r.json() == {"server_keys": []}
    r = a.post("/_matrix/key/v2/query", json={"server_keys": ["nope"]})
    assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON"


def _profile_path(user_id: str) -> str:
    return f"/_matrix/federation/v1/query/profile?user_id={requests.utils.quote(user_id, safe='')}"


def test_requests_without_a_valid_signature_are_refused(
    servers: tuple[FederatedServer, FederatedServer], tmp_path: Path
) -> None:
    a, b = servers
    alice = a.process.register("alice_sig")["user_id"]
    path = _profile_path(alice)

    def signed(origin: str, destination: str, key: Any, uri: str = path) -> dict[str, str]:
        return {"Authorization": authorization_header("GET", uri, origin, destination, key)}

    def refused(r: requests.Response, reason: str) -> None:
        assert r.status_code == 401, r.text
        assert r.json()["errcode"] == "M_UNAUTHORIZED"
        assert reason in r.json()["error"]

    refused(a.get(path), "Missing Authorization")
    refused(a.get(path, headers={"Authorization": "Bearer abc"}), "X-Matrix")
    refused(a.get(path, headers={"Authorization": 'X-Matrix origin="x",key=,'}), "Malformed")

    def odd(origin: str, key: str) -> dict[str, str]:
        return {
            "Authorization": f'X-Matrix origin="{origin}",destination="{a.server_name}",key="{key}",sig="abc"'
        }

    refused(a.get(path, headers=odd("a b", "ed25519:x")), "is not a server name")
    refused(a.get(path, headers=odd("b.example", "rsa:x")), "ed25519 only")
    # Forged: B's name and key id, another key's signature.
    b_key_id = next(iter(b.get("/_matrix/key/v2/server").json()["verify_keys"]))
    forger = generate_signing_key(b_key_id.split(":")[1])
    refused(a.get(path, headers=signed(b.server_name, a.server_name, forger)), "Invalid X-Matrix signature")
    # A key B does not have; a server that does not exist.
    refused(a.get(path, headers=signed(b.server_name, a.server_name, generate_signing_key("nope"))), "no key")
    refused(a.get(path, headers=signed("localhost:1", a.server_name, forger)), "Cannot check the signature")
    # Signed for another destination, or for another path.
    refused(a.get(path, headers=signed(b.server_name, b.server_name, forger)), "not this server")
    other = _profile_path("@someone:" + a.server_name)
    b_signing_key = _read_signing_key(b)
    refused(a.get(path, headers=signed(b.server_name, a.server_name, b_signing_key, other)), "Invalid")
    # And the genuine signature passes.
    r = a.get(path, headers=signed(b.server_name, a.server_name, b_signing_key))
    assert r.status_code == 200, r.text


def _read_signing_key(server: FederatedServer) -> Any:
    from signedjson.key import read_signing_keys

    return read_signing_keys((server.process.data_dir / "signing.key").read_text().splitlines())[0]


def test_every_federation_route_checks_the_signature(
    servers: tuple[FederatedServer, FederatedServer], tmp_path: Path
) -> None:
    """Routes added later are covered too: each /_matrix/federation path answers 401 unsigned."""
    from twisted.internet import reactor

    from homeserver.api.federation.auth import FEDERATION
    from homeserver.config import parse_config
    from homeserver.server import HomeServer

    a, _ = servers
    hs = HomeServer(parse_config({"server_name": "t.example", "data_dir": str(tmp_path)}, env={}), reactor)
    templates = hs.router.templates()
    hs.storage.close()
    # Only the paths the spec serves without a signature are exempt.
    exempt = {f"{FEDERATION}/v1/version", f"{FEDERATION}/v1/openid/userinfo"}
    checked = [t for t in templates if t.startswith(FEDERATION) and t not in exempt]
    assert f"{FEDERATION}/v1/query/profile" in checked
    assert f"{FEDERATION}/v1/query/directory" in checked
    assert f"{FEDERATION}/v1/publicRooms" in checked
    for template in checked:
        path = template.replace("{", "x").replace("}", "")
        for method in ("GET", "PUT", "POST"):
            r = requests.request(
                method, a.federation_url(path), verify=str(a.ca.ca_file), json={}, timeout=10
            )
            if r.status_code == 405:
                continue
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["errcode"] == "M_UNAUTHORIZED"


def test_profiles_are_queried_both_ways_over_tls(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, b = servers
    alice = a.process.register("alice")
    bob = b.process.register("bob")
    for server, user, name in ((a, alice, "Alice of A"), (b, bob, "Bob of B")):
        r = requests.put(
            server.process.url(f"/_matrix/client/v3/profile/{user['user_id']}/displayname"),
            json={"displayname": name},
            headers={"Authorization": f"Bearer {user['access_token']}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text

    def profile(server: FederatedServer, token: str, user_id: str, field: str = "") -> requests.Response:
        return requests.get(
            server.process.url(f"/_matrix/client/v3/profile/{user_id}" + (f"/{field}" if field else "")),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    r = profile(b, bob["access_token"], alice["user_id"])
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": "Alice of A"}
    r = profile(a, alice["access_token"], bob["user_id"], "displayname")
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": "Bob of B"}
    # A user the other server does not have: its 404 is passed on.
    r = profile(b, bob["access_token"], f"@nobody:{a.server_name}")
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text
    # A server that is not there: 502, not a 500.
    r = profile(b, bob["access_token"], "@x:localhost:1")
    assert r.status_code == 502, r.text
    # A answered B's signed query, and the signature was B's.
    log = a.process.wait_for_log("GET /_matrix/federation/v1/query/profile 200")
    assert "GET /_matrix/federation/v1/query/profile 200" in log


def test_version(servers: tuple[FederatedServer, FederatedServer]) -> None:
    a, _ = servers
    r = a.get("/_matrix/federation/v1/version")
    assert r.status_code == 200 and r.json()["server"]["name"] == "homeserver"


@pytest.fixture(scope="module")
def delegating(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA, servers: tuple[FederatedServer, FederatedServer]
) -> Iterator[FederatedServer]:
    """A third server whose /.well-known/matrix/server delegates to server A, and which
    keeps the default of refusing to connect to loopback."""
    a, _ = servers
    overrides = {"federation": {"well_known_server": a.server_name, "ip_range_whitelist": []}}
    server = start_federated_server(tmp_path_factory.mktemp("hs-c"), ca, overrides)
    yield server
    server.stop()


@pytest_twisted.ensureDeferred
async def test_well_known_delegation_is_served_and_followed(
    servers: tuple[FederatedServer, FederatedServer], delegating: FederatedServer
) -> None:
    a, _ = servers
    r = delegating.get("/.well-known/matrix/server")
    assert r.status_code == 200 and r.json() == {"m.server": a.server_name}
    assert a.get("/.well-known/matrix/server").status_code == 404  # none configured

    from twisted.internet import reactor

    from homeserver.config import FederationConfig
    from homeserver.core.clock import Clock
    from homeserver.core.federation.client import FederationClient
    from homeserver.core.federation.discovery import Destination

    client = FederationClient(
        reactor,
        Clock(reactor),
        "tester.example",
        generate_signing_key("t"),
        FederationConfig(ca_file=str(a.ca.ca_file), ip_range_whitelist=LOOPBACK),
    )
    # The bare name "localhost" has no port: its .well-known is asked (on the delegating
    # server's TLS port, standing in for 443), and the request goes where it points, with
    # the Host header and certificate of the delegated name.
    client.well_known_port = delegating.federation_port
    host, port = a.server_name.split(":")
    assert await client.resolver.resolve("localhost") == Destination(host, int(port), a.server_name, host)
    keys = await client.get_json("localhost", "/_matrix/key/v2/server")
    assert keys["server_name"] == a.server_name


def test_private_addresses_are_not_reached_unless_allowed(
    servers: tuple[FederatedServer, FederatedServer], delegating: FederatedServer
) -> None:
    """A user cannot make the server probe its own network through a server name."""
    a, _ = servers
    carol = delegating.process.register("carol")
    alice = a.process.register("alice_private")
    asked_before = a.process.log_text().count("/_matrix/federation/v1/query/profile")
    r = requests.get(
        delegating.process.url(f"/_matrix/client/v3/profile/{alice['user_id']}"),
        headers={"Authorization": f"Bearer {carol['access_token']}"},
        timeout=30,
    )
    assert r.status_code == 502, r.text
    log = delegating.process.wait_for_log("blocked address range")
    assert "not connecting to localhost at 127.0.0.1" in log
    assert a.process.log_text().count("/_matrix/federation/v1/query/profile") == asked_before


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@seed(18)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=_JSON | st.dictionaries(st.just("server_keys"), _JSON),
    name=st.text(max_size=30),
    header=st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=80).map(
        str.strip
    ),
)
def test_odd_input_to_keys_and_queries_is_never_a_server_error(
    servers: tuple[FederatedServer, FederatedServer], body: Any, name: str, header: str
) -> None:
    a, _ = servers
    quoted = requests.utils.quote(name, safe="")
    for r in (
        a.post("/_matrix/key/v2/query", json=body),
        a.get(f"/_matrix/key/v2/query/{quoted}?minimum_valid_until_ts={quoted}"),
        a.get(
            f"/_matrix/federation/v1/query/profile?user_id={quoted}",
            headers={"Authorization": ("X-Matrix " + header).encode()},
        ),
    ):
        assert r.status_code < 500, (r.request.url, r.text)
        assert "errcode" in r.json() or r.status_code == 200
