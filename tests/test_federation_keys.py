"""End-to-end encryption across two of our servers over TLS: a client of one server
gets the device keys, cross-signing keys and one-time keys of a user of the other
(`/keys/query`, `/keys/claim` asking `/user/keys/query`, `/user/keys/claim`), servers
that cannot answer are named in `failures` without holding up the rest, and the
federation routes serve only what our users publish, with strict input checks.

A list kept for a member of a shared room (fetched, updated by an EDU, fetched again
after a gap) is shown with our server in this process and A; the EDU handlers are called
directly (our server has no room shared with A's users yet); a to-device message comes
through A's /send. More EDU cases are in tests/fast/test_federation_key_edus.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import requests
from conftest import base_config, free_port
from federation_harness import (
    LOOPBACK,
    FederatedServer,
    TestCA,
    federated_pair,
    signed_request,
)
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json
from test_e2ee_api import CrossSigning, Device, new_device, new_user

from homeserver.core.e2ee import MAX_CLAIM_DEVICES, MAX_QUERY_DEVICES, MAX_QUERY_USERS
from homeserver.core.federation.remote_keys import parse_user_devices

OTK = "signed_curve25519"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer]]:
    a, b = yield from federated_pair(tmp_path_factory, ca)
    for server in (a, b):
        assert "Traceback" not in server.process.log_text()


@pytest.fixture(scope="module")
def alice(servers: tuple[FederatedServer, FederatedServer]) -> tuple[Device, CrossSigning]:
    """A user of A with device keys, two one-time keys and cross-signing keys."""
    a, _ = servers
    device = new_user(a.process, "alice")
    device.upload_keys(otks=2)
    xs = CrossSigning.make(device.user_id)
    r = device.post("/keys/device_signing/upload", xs.upload_body())
    assert r.status_code == 200, r.text
    return device, xs


def test_a_client_queries_and_claims_keys_of_a_user_on_another_server(
    servers: tuple[FederatedServer, FederatedServer], alice: tuple[Device, CrossSigning]
) -> None:
    _, b = servers
    device, xs = alice
    bob = new_user(b.process, "bob")
    bob.upload_keys()

    answer = bob.query([device.user_id, bob.user_id])
    assert answer["failures"] == {}
    keys = answer["device_keys"][device.user_id][device.device_id]
    # Alice's own signature still checks: what A served is what her device signed.
    verify_signed_json(
        keys, device.user_id, decode_verify_key_base64("ed25519", device.device_id, device.ed25519)
    )
    assert "device_display_name" not in keys.get("unsigned", {})
    assert answer["master_keys"][device.user_id]["keys"] == xs.public(xs.master, "master")["keys"]
    assert answer["self_signing_keys"][device.user_id]["usage"] == ["self_signing"]
    assert device.user_id not in answer.get("user_signing_keys", {})
    # Bob's own keys, from his own server, in the same answer.
    assert list(answer["device_keys"][bob.user_id]) == [bob.device_id]

    # Each one-time key once; then nothing (no fallback key).
    claim = {"one_time_keys": {device.user_id: {device.device_id: OTK}}}
    claimed = []
    for _ in range(3):
        r = bob.post("/keys/claim", claim)
        assert r.status_code == 200, r.text
        assert r.json()["failures"] == {}
        claimed.append(r.json()["one_time_keys"].get(device.user_id, {}).get(device.device_id))
    first, second, third = claimed
    assert first and second and third is None
    assert first != second
    [(key_id, key)] = first.items()
    assert key_id.startswith(f"{OTK}:")
    verify_signed_json(
        key, device.user_id, decode_verify_key_base64("ed25519", device.device_id, device.ed25519)
    )


def test_unreachable_and_silent_servers_are_named_in_failures(
    servers: tuple[FederatedServer, FederatedServer], alice: tuple[Device, CrossSigning]
) -> None:
    _, b = servers
    device, _ = alice
    bob = new_user(b.process, "bob")
    # A server that accepts connections and never answers, and one that is not there.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    silent_name = f"localhost:{silent.getsockname()[1]}"
    try:
        # Both named in `failures` over real sockets; that the silent one is given up at the
        # timeout, holding nothing up past it, is timed on a test clock in
        # tests/fast/test_federation_fanout.py.
        body = {
            "device_keys": {device.user_id: [], f"@x:{silent_name}": [], "@y:localhost:1": []},
            "timeout": 1500,
        }
        r = bob.post("/keys/query", body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer["failures"]) == {silent_name, "localhost:1"}
        assert all(isinstance(f["status"], int) for f in answer["failures"].values())
        assert device.device_id in answer["device_keys"][device.user_id]

        r = bob.post(
            "/keys/claim",
            {"one_time_keys": {f"@x:{silent_name}": {"D": OTK}}, "timeout": 1000},
        )
        assert r.status_code == 200, r.text
        assert set(r.json()["failures"]) == {silent_name}
        assert r.json()["one_time_keys"] == {}
        # The timeout must be a number of milliseconds.
        r = bob.post("/keys/query", {"device_keys": {}, "timeout": "soon"})
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    finally:
        silent.close()


def test_user_devices_and_the_federation_key_routes_check_their_input(
    servers: tuple[FederatedServer, FederatedServer], alice: tuple[Device, CrossSigning]
) -> None:
    a, b = servers
    device, xs = alice
    path = f"/_matrix/federation/v1/user/devices/{quote(device.user_id)}"
    r = signed_request("GET", b, a, path)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["user_id"] == device.user_id
    assert answer["stream_id"] > 0
    assert [d["device_id"] for d in answer["devices"]] == [device.device_id]
    assert answer["devices"][0]["keys"]["keys"][f"ed25519:{device.device_id}"] == device.ed25519
    assert "device_display_name" not in answer["devices"][0]
    assert answer["master_key"]["keys"] == xs.public(xs.master, "master")["keys"]
    assert "self_signing_key" in answer and "user_signing_key" not in answer
    # What we keep of a remote list is read from exactly this answer.
    kept = parse_user_devices(device.user_id, answer)
    assert list(kept.devices) == [device.device_id] and kept.master_key == answer["master_key"]
    # Unsigned: refused.
    assert a.get(path).status_code == 401

    def refused(r: requests.Response, errcode: str) -> None:
        assert r.status_code == 400, r.text
        assert r.json()["errcode"] == errcode, r.text

    # Not a user of A; not a user id.
    refused(
        signed_request("GET", b, a, f"/_matrix/federation/v1/user/devices/{quote('@x:' + b.server_name)}"),
        "M_INVALID_PARAM",
    )
    refused(signed_request("GET", b, a, "/_matrix/federation/v1/user/devices/nobody"), "M_INVALID_PARAM")
    query = "/_matrix/federation/v1/user/keys/query"
    claim = "/_matrix/federation/v1/user/keys/claim"
    refused(signed_request("POST", b, a, query, {"device_keys": []}), "M_BAD_JSON")
    refused(signed_request("POST", b, a, query, {"device_keys": {device.user_id: "all"}}), "M_BAD_JSON")
    refused(signed_request("POST", b, a, query, {"device_keys": {"alice": []}}), "M_INVALID_PARAM")
    refused(
        signed_request("POST", b, a, claim, {"one_time_keys": {device.user_id: {device.device_id: 5}}}),
        "M_BAD_JSON",
    )
    # As many keys as our own clients may ask for at once, no more (413 M_TOO_LARGE).
    many = {device.user_id: {f"D{i}": OTK for i in range(MAX_CLAIM_DEVICES)}}
    r = signed_request("POST", b, a, claim, {"one_time_keys": many})
    assert r.status_code == 200, r.text
    many[device.user_id]["ONE_MORE"] = OTK
    r = signed_request("POST", b, a, claim, {"one_time_keys": many})
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE"), r.text
    users = {f"@u{i}:{a.server_name}": [] for i in range(MAX_QUERY_USERS + 1)}
    r = signed_request("POST", b, a, query, {"device_keys": users})
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE"), r.text
    named = {device.user_id: [f"D{i}" for i in range(MAX_QUERY_DEVICES + 1)]}
    r = signed_request("POST", b, a, query, {"device_keys": named})
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE"), r.text
    # Users of other servers are left out of A's answers.
    r = signed_request("POST", b, a, query, {"device_keys": {device.user_id: [], f"@z:{b.server_name}": []}})
    assert r.status_code == 200, r.text
    assert list(r.json()["device_keys"]) == [device.user_id]
    assert "user_signing_keys" not in r.json()


def test_to_device_over_federation_reaches_our_device_once(
    servers: tuple[FederatedServer, FederatedServer], alice: tuple[Device, CrossSigning]
) -> None:
    """B's transaction (PUT /send) carries an m.direct_to_device EDU; sent again under
    another transaction id, the same message_id is not delivered twice."""
    a, b = servers
    device, _ = alice
    device.sync()
    content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "k", "ciphertext": {}}
    edu = {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": f"@bob:{b.server_name}",
            "type": "m.room.encrypted",
            "message_id": "fed-m1",
            "messages": {device.user_id: {device.device_id: content}},
        },
    }
    for txn_id in ("t1", "t2"):
        body = {
            "origin": b.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": [],
            "edus": [edu],
        }
        r = signed_request("PUT", b, a, f"/_matrix/federation/v1/send/{txn_id}", body)
        assert r.status_code == 200, r.text
    events = device.sync()["to_device"]["events"]
    assert events == [{"type": "m.room.encrypted", "sender": f"@bob:{b.server_name}", "content": content}]


def _devices_of(a: FederatedServer, b: FederatedServer, user_id: str) -> dict[str, Any]:
    r = signed_request("GET", b, a, f"/_matrix/federation/v1/user/devices/{quote(user_id)}")
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


@pytest_twisted.ensureDeferred
async def test_a_shared_rooms_remote_list_is_kept_updated_and_resynced(
    servers: tuple[FederatedServer, FederatedServer], ca: TestCA, tmp_path: Any
) -> None:
    """Our server in this process (with its own TLS listener, so A can check its signature):
    a member of a shared room on A has their list fetched once and kept; an update EDU that
    follows it is applied; one after a gap makes us fetch the list from A again."""
    from twisted.internet import reactor

    from homeserver.config import parse_config
    from homeserver.server import HomeServer

    a, b = servers
    carol = new_user(a.process, "carol")
    carol.upload_keys()

    port = free_port()
    cert_file, key_file = ca.issue(f"hs-{port}")
    raw = base_config(tmp_path, free_port())
    raw["server_name"] = f"localhost:{port}"
    raw["database"] = {"url": f"sqlite:///{tmp_path / 'hs.db'}"}
    raw["plugins"] = []
    raw["federation"] = {
        "port": port,
        "bind_address": "127.0.0.1",
        "tls_certificate": str(cert_file),
        "tls_private_key": str(key_file),
        "ca_file": str(ca.ca_file),
        "ip_range_whitelist": LOOPBACK,
    }
    hs = HomeServer(parse_config(raw, "in-process.yaml", env={}), reactor)
    await hs.start()
    site, tls = hs.federation_site()  # type: ignore[misc]
    hs.federation_port = reactor.listenSSL(port, site, tls, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        dora = await hs.accounts.register("dora", "correct horse battery")
        room = await hs.rooms.create_room(dora, {"preset": "public_chat"})
        # Stand-in for carol's join over federation: it only has to put her in the room here.
        await hs.events.send(
            carol.user_id, room, "m.room.member", {"membership": "join"}, state_key=carol.user_id
        )

        answer = await hs.keys.query(dora, {"device_keys": {carol.user_id: []}})
        assert answer["failures"] == {}, answer
        assert list(answer["device_keys"][carol.user_id]) == [carol.device_id]
        first = _devices_of(a, b, carol.user_id)["stream_id"]
        [kept] = (await hs.storage.remote_devices.get([carol.user_id])).values()
        assert kept.stream_id == first

        # Carol adds a device; A's update follows the list we hold: applied as it is.
        phone = new_device(carol)
        phone.upload_keys()
        listed = _devices_of(a, b, carol.user_id)
        phone_keys = next(d["keys"] for d in listed["devices"] if d["device_id"] == phone.device_id)
        update = {
            "user_id": carol.user_id,
            "device_id": phone.device_id,
            "stream_id": listed["stream_id"],
            "prev_id": [first],
            "keys": phone_keys,
        }
        await hs.federation_edus.receive_all(
            a.server_name, [{"edu_type": "m.device_list_update", "content": update}]
        )
        [kept] = (await hs.storage.remote_devices.get([carol.user_id])).values()
        assert (kept.stream_id, sorted(kept.devices)) == (
            listed["stream_id"],
            sorted([carol.device_id, phone.device_id]),
        )

        # A third device, and an update after a gap naming a device A never had: the whole
        # list is fetched from A again, and it is A's list that is kept.
        tablet = new_device(carol)
        tablet.upload_keys()
        latest = _devices_of(a, b, carol.user_id)["stream_id"]
        gap = {
            "user_id": carol.user_id,
            "device_id": "GHOST",
            "stream_id": latest + 9,
            "prev_id": [latest + 8],
        }
        gap["keys"] = {**phone_keys, "device_id": "GHOST"}
        await hs.federation_edus.receive_all(
            a.server_name, [{"edu_type": "m.device_list_update", "content": gap}]
        )
        [kept] = (await hs.storage.remote_devices.get([carol.user_id])).values()
        assert kept.stream_id == latest
        assert sorted(kept.devices) == sorted([carol.device_id, phone.device_id, tablet.device_id])
        answer = await hs.keys.query(dora, {"device_keys": {carol.user_id: []}})
        assert sorted(answer["device_keys"][carol.user_id]) == sorted(kept.devices)
    finally:
        await hs.stop(None)


# With Synapse ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[Any]:
    from synapse import start_synapse

    server = start_synapse(tmp_path_factory.mktemp("synapse"), ca)
    yield server
    server.stop()


def test_keys_of_a_synapse_user_and_ours_both_ways(
    servers: tuple[FederatedServer, FederatedServer], alice: tuple[Device, CrossSigning], synapse: Any
) -> None:
    a, _ = servers
    device, xs = alice
    reg = synapse.register("sam")
    sam = Device(synapse, reg["user_id"], reg["device_id"], reg["access_token"], "sam")
    sam.upload_keys(otks=1)
    sam_xs = CrossSigning.make(sam.user_id)
    r = sam.post("/keys/device_signing/upload", sam_xs.upload_body())
    assert r.status_code == 200, r.text

    # Our client asks Synapse.
    bob = new_user(a.process, "bob")
    answer = bob.query([sam.user_id])
    assert answer["failures"] == {}, answer
    keys = answer["device_keys"][sam.user_id][sam.device_id]
    verify_signed_json(keys, sam.user_id, decode_verify_key_base64("ed25519", sam.device_id, sam.ed25519))
    assert answer["master_keys"][sam.user_id]["keys"] == sam_xs.public(sam_xs.master, "master")["keys"]
    assert sam.user_id in answer["self_signing_keys"]
    r = bob.post("/keys/claim", {"one_time_keys": {sam.user_id: {sam.device_id: OTK}}})
    assert r.status_code == 200, r.text
    [(key_id, _)] = r.json()["one_time_keys"][sam.user_id][sam.device_id].items()
    assert key_id.startswith(f"{OTK}:")

    # Synapse's /user/devices (what a resync reads) as we read it.
    r = signed_request("GET", a, synapse, f"/_matrix/federation/v1/user/devices/{quote(sam.user_id)}")
    assert r.status_code == 200, r.text
    kept = parse_user_devices(sam.user_id, r.json())
    assert kept.devices[sam.device_id] is not None
    assert kept.devices[sam.device_id]["keys"] == keys["keys"]  # type: ignore[index]
    assert kept.master_key is not None and kept.self_signing_key is not None

    # Synapse's client asks us.
    answer = sam.query([device.user_id])
    assert answer.get("failures") == {}, answer
    assert device.device_id in answer["device_keys"][device.user_id]
    assert answer["master_keys"][device.user_id]["keys"] == xs.public(xs.master, "master")["keys"]
    r = sam.post("/keys/claim", {"one_time_keys": {device.user_id: {device.device_id: OTK}}})
    assert r.status_code == 200, r.text
    assert r.json()["failures"] == {}
