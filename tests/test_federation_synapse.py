"""Federation with a real Synapse (from PyPI, over TLS checked against the test CA):
each side fetches and checks the other's keys, and each side's client API reads the
other's users' profiles through signed federation queries."""

from __future__ import annotations

from typing import Any

import requests
from federation_harness import FederatedServer
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from synapse import SynapseServer
from unpaddedbase64 import decode_base64


def _verify(body: dict[str, Any], signer: str, keys: dict[str, Any]) -> None:
    for key_id, entry in keys["verify_keys"].items():
        verify_signed_json(body, signer, decode_verify_key_bytes(key_id, decode_base64(entry["key"])))


def _set_displayname(base: str, user: dict[str, Any], name: str) -> None:
    r = requests.put(
        f"{base}/_matrix/client/v3/profile/{user['user_id']}/displayname",
        json={"displayname": name},
        headers={"Authorization": f"Bearer {user['access_token']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def _profile(base: str, token: str, user_id: str) -> requests.Response:
    return requests.get(
        f"{base}/_matrix/client/v3/profile/{user_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def test_keys_both_ways(ours: FederatedServer, synapse: SynapseServer) -> None:
    # We fetch Synapse's keys (our notary answers with them, checked and countersigned).
    r = ours.post("/_matrix/key/v2/query", json={"server_keys": {synapse.server_name: {}}})
    assert r.status_code == 200, r.text
    [answer] = r.json()["server_keys"]
    assert answer["server_name"] == synapse.server_name
    _verify(answer, synapse.server_name, answer)
    _verify(answer, ours.server_name, ours.get("/_matrix/key/v2/server").json())
    # Synapse fetches ours: its notary vouches for them with its own signature (it fetches
    # only for named key ids).
    our_keys = ours.get("/_matrix/key/v2/server").json()
    r = requests.post(
        synapse.federation_url("/_matrix/key/v2/query"),
        json={
            "server_keys": {
                ours.server_name: dict.fromkeys(our_keys["verify_keys"], {"minimum_valid_until_ts": 0})
            }
        },
        verify=str(synapse.ca.ca_file),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    [theirs] = r.json()["server_keys"]
    assert theirs["verify_keys"] == our_keys["verify_keys"]
    _verify(theirs, ours.server_name, our_keys)
    _verify(theirs, synapse.server_name, answer)


def test_profiles_both_ways(ours: FederatedServer, synapse: SynapseServer) -> None:
    alice = ours.process.register("alice")
    _set_displayname(ours.process.base_url, alice, "Alice (ours)")
    sam = synapse.register("sam")
    _set_displayname(synapse.url(""), sam, "Sam (Synapse)")

    # Our client API asks Synapse, signed; Synapse checked our signature to answer.
    r = _profile(ours.process.base_url, alice["access_token"], sam["user_id"])
    assert r.status_code == 200, r.text
    assert r.json().get("displayname") == "Sam (Synapse)"

    # Synapse's client API asks us; we checked Synapse's signature against its fetched key.
    r = _profile(synapse.url(""), sam["access_token"], alice["user_id"])
    assert r.status_code == 200, r.text
    assert r.json().get("displayname") == "Alice (ours)"
    log = ours.process.wait_for_log("GET /_matrix/federation/v1/query/profile 200")
    assert "GET /_matrix/federation/v1/query/profile 200" in log

    # A user we do not have: Synapse passes our 404 on.
    r = _profile(synapse.url(""), sam["access_token"], f"@nobody:{ours.server_name}")
    assert r.status_code == 404, r.text
