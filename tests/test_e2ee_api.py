"""End-to-end encryption endpoints against a real server, with real signed keys.

Device keys, one-time/fallback keys and cross-signing keys are made and signed with
signedjson exactly as a client's Olm machine would (ed25519 over canonical JSON), so
the server's signature checks run for real. Covered: bad input (malformed, unsigned or
wrongly signed keys, claims for unknown users and devices, oversized to-device
payloads, replayed transaction ids, keys for someone else's device), each one-time key
handed out once under concurrent claims, device deletion, /keys/changes, cross-signing
signature uploads and their visibility, and the key-backup version rules.
"""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from conftest import ServerProcess
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.core.e2ee import MAX_CLAIM_DEVICES, MAX_QUERY_DEVICES, MAX_QUERY_USERS

PASSWORD = "correct horse battery"
CLIENT = "/_matrix/client/v3"
MEGOLM = "m.megolm.v1.aes-sha2"
OLM = "m.olm.v1.curve25519-aes-sha2"
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"


def b64(n: int = 32) -> str:
    return base64.b64encode(os.urandom(n)).decode().rstrip("=")


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass
class Device:
    """One logged-in device with its own ed25519 signing key, like a client's Olm account."""

    server: ServerProcess
    user_id: str
    device_id: str
    token: str
    localpart: str
    signing_key: Any = None
    curve_key: str = field(default_factory=b64)
    next_batch: str | None = None

    def __post_init__(self) -> None:
        self.signing_key = generate_signing_key(self.device_id)

    @property
    def ed25519(self) -> str:
        return encode_verify_key_base64(get_verify_key(self.signing_key))

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return requests.request(
            method,
            self.server.url(CLIENT + path),
            json=body,
            params=params or None,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=15,
        )

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.request("POST", path, body)

    def device_keys(self) -> dict[str, Any]:
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": [OLM, MEGOLM],
            "keys": {
                f"ed25519:{self.device_id}": self.ed25519,
                f"curve25519:{self.device_id}": self.curve_key,
            },
        }
        signed: dict[str, Any] = sign_json(keys, self.user_id, self.signing_key)
        return signed

    def one_time_keys(self, count: int, start: int = 0) -> dict[str, Any]:
        return {
            f"signed_curve25519:AAAA{i:04d}": sign_json({"key": b64()}, self.user_id, self.signing_key)
            for i in range(start, start + count)
        }

    def upload_keys(self, otks: int = 0, fallback: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"device_keys": self.device_keys()}
        if otks:
            body["one_time_keys"] = self.one_time_keys(otks)
        if fallback:
            body["fallback_keys"] = {
                "signed_curve25519:FALLBACK1": sign_json(
                    {"key": b64(), "fallback": True}, self.user_id, self.signing_key
                )
            }
        r = self.post("/keys/upload", body)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def sync(self, since: str | None = None) -> dict[str, Any]:
        """One /sync without waiting, from `since` (default: where the last one ended)."""
        params: dict[str, Any] = {"timeout": 0}
        since = since if since is not None else self.next_batch
        if since:
            params["since"] = since
        r = self.request("GET", "/sync", **params)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        self.next_batch = body["next_batch"]
        return body

    def query(self, user_ids: list[str]) -> dict[str, Any]:
        r = self.post("/keys/query", {"device_keys": {u: [] for u in user_ids}})
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


def new_user(server: ServerProcess, prefix: str = "e2ee") -> Device:
    localpart = unique(prefix)
    reg = server.register(localpart, PASSWORD)
    return Device(server, reg["user_id"], reg["device_id"], reg["access_token"], localpart)


def new_device(first: Device) -> Device:
    login = first.server.login(first.localpart, PASSWORD)
    return Device(first.server, login["user_id"], login["device_id"], login["access_token"], first.localpart)


def delete_device(owner: Device, device_id: str) -> None:
    r = owner.request("DELETE", f"/devices/{device_id}", {})
    assert r.status_code == 401, r.text
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": owner.localpart},
        "password": PASSWORD,
        "session": r.json()["session"],
    }
    r = owner.request("DELETE", f"/devices/{device_id}", {"auth": auth})
    assert r.status_code == 200, r.text


def share_room(creator: Device, *others: Device) -> str:
    r = creator.post("/createRoom", {"preset": "private_chat", "invite": [o.user_id for o in others]})
    assert r.status_code == 200, r.text
    room_id: str = r.json()["room_id"]
    for other in others:
        r = other.post(f"/join/{room_id}", {})
        assert r.status_code == 200, r.text
    return room_id


def assert_error(r: requests.Response, status: int, errcode: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body.get("errcode") == errcode, body
    return body


def db_rows(server: ServerProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the server's database directly (SQLite file or the test's PostgreSQL schema)."""
    url = str(server.config["database"]["url"] or "")
    if url.startswith("postgres"):
        import psycopg2

        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), args)
                return list(cur.fetchall())
        finally:
            conn.close()
    path = url[len("sqlite:///") :] if url else str(server.data_dir / "homeserver.db")
    conn2 = sqlite3.connect(path)
    try:
        return list(conn2.execute(sql, args).fetchall())
    finally:
        conn2.close()


def to_device_events(device: Device) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = device.sync()["to_device"]["events"]
    return events


def no_tracebacks(server: ServerProcess) -> None:
    assert "Traceback" not in server.log_text()


# Uploading keys ------------------------------------------------------------------------------


def test_upload_query_and_sync_counts(any_server: ServerProcess) -> None:
    alice, bob = new_user(any_server), new_user(any_server)
    counts = alice.upload_keys(otks=5, fallback=True)
    assert counts["one_time_key_counts"] == {"signed_curve25519": 5}

    query = bob.query([alice.user_id])
    device = query["device_keys"][alice.user_id][alice.device_id]
    assert device["keys"][f"ed25519:{alice.device_id}"] == alice.ed25519
    assert device["signatures"] == alice.device_keys()["signatures"]
    assert query["failures"] == {}

    body = alice.sync()
    assert body["device_one_time_keys_count"]["signed_curve25519"] == 5
    assert body["device_unused_fallback_key_types"] == ["signed_curve25519"]

    # Uploading the same device keys again is fine; more one-time keys add up.
    r = alice.post(
        "/keys/upload", {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(3, 5)}
    )
    assert r.status_code == 200, r.text
    assert r.json()["one_time_key_counts"] == {"signed_curve25519": 8}
    # A fresh device with no keys yet says "0", so clients know to upload.
    assert new_device(alice).sync()["device_one_time_keys_count"] == {"signed_curve25519": 0}
    no_tracebacks(any_server)


def test_upload_rejects_malformed_and_unsigned_keys(server: ServerProcess) -> None:
    alice, bob = new_user(server), new_user(server)
    good = alice.device_keys()

    def upload(body: Any) -> requests.Response:
        return alice.post("/keys/upload", body)

    r = requests.post(
        server.url(CLIENT + "/keys/upload"),
        data=b"{not json",
        headers={"Authorization": f"Bearer {alice.token}"},
        timeout=10,
    )
    assert_error(r, 400, "M_NOT_JSON")
    assert_error(upload({"device_keys": "nope"}), 400, "M_BAD_JSON")
    assert_error(upload({"device_keys": {**good, "algorithms": "m.olm"}}), 400, "M_BAD_JSON")
    # Fields a server receiving our device list updates could not read (CVE-2025-61672).
    for odd in (
        {"algorithms": [OLM, 5]},
        {"keys": {**good["keys"], "curve25519:X": 5}},
        {"keys": {**good["keys"], "nocolon": "x"}},
    ):
        assert_error(upload({"device_keys": {**good, **odd}}), 400, "M_BAD_JSON")
    assert_error(upload({"device_keys": {k: v for k, v in good.items() if k != "keys"}}), 400, "M_BAD_JSON")

    unsigned = {k: v for k, v in good.items() if k != "signatures"}
    assert_error(upload({"device_keys": unsigned}), 400, "M_INVALID_SIGNATURE")
    # Signed, but by another key than the one it publishes.
    forged = sign_json(dict(unsigned), alice.user_id, generate_signing_key(alice.device_id))
    assert_error(upload({"device_keys": forged}), 400, "M_INVALID_SIGNATURE")
    # Signed, then changed.
    tampered = {**good, "algorithms": [OLM]}
    assert_error(upload({"device_keys": tampered}), 400, "M_INVALID_SIGNATURE")
    # A malformed public key, and garbage signatures.
    bad_key = sign_json(
        {**unsigned, "keys": {**unsigned["keys"], f"ed25519:{alice.device_id}": "!!not base64!!"}},
        alice.user_id,
        alice.signing_key,
    )
    assert_error(upload({"device_keys": bad_key}), 400, "M_INVALID_SIGNATURE")
    for signatures in ({alice.user_id: {f"ed25519:{alice.device_id}": "AAAA"}}, [], "x", {alice.user_id: []}):
        assert_error(
            upload({"device_keys": {**unsigned, "signatures": signatures}}), 400, "M_INVALID_SIGNATURE"
        )
    # Nothing of the above was stored.
    assert bob.query([alice.user_id])["device_keys"][alice.user_id] == {}

    assert_error(upload({"one_time_keys": ["a"]}), 400, "M_BAD_JSON")
    assert_error(upload({"one_time_keys": {"no-colon": {"key": b64()}}}), 400, "M_BAD_JSON")
    assert_error(upload({"one_time_keys": {"signed_curve25519:AAAB": 7}}), 400, "M_BAD_JSON")
    assert_error(upload({"fallback_keys": "x"}), 400, "M_BAD_JSON")

    # The real keys go in; then they cannot be swapped for other keys of the same device.
    alice.upload_keys(otks=1)
    other = Device(server, alice.user_id, alice.device_id, alice.token, alice.localpart)
    assert_error(upload({"device_keys": other.device_keys()}), 400, "M_INVALID_PARAM")
    # A one-time key id cannot be reused with other content.
    key_id = "signed_curve25519:AAAA0000"
    assert_error(upload({"one_time_keys": {key_id: {"key": b64()}}}), 400, "M_INVALID_PARAM")
    stored = bob.query([alice.user_id])["device_keys"][alice.user_id][alice.device_id]
    assert stored["keys"][f"ed25519:{alice.device_id}"] == alice.ed25519
    no_tracebacks(server)


def test_cannot_upload_keys_for_another_users_device(server: ServerProcess) -> None:
    alice, bob = new_user(server), new_user(server)
    alice_phone = new_device(alice)
    bob.upload_keys()
    before = alice.query([bob.user_id])["device_keys"][bob.user_id]

    # Bob's device id, signed with a key Alice made up: refused whatever the user_id says.
    impostor = Device(server, bob.user_id, bob.device_id, alice.token, alice.localpart)
    r = alice.post("/keys/upload", {"device_keys": impostor.device_keys()})
    assert_error(r, 403, "M_FORBIDDEN")
    impostor = Device(server, alice.user_id, bob.device_id, alice.token, alice.localpart)
    assert_error(alice.post("/keys/upload", {"device_keys": impostor.device_keys()}), 403, "M_FORBIDDEN")
    # Even another device of her own: keys are uploaded by the device they belong to.
    impostor = Device(server, alice.user_id, alice_phone.device_id, alice.token, alice.localpart)
    assert_error(alice.post("/keys/upload", {"device_keys": impostor.device_keys()}), 403, "M_FORBIDDEN")

    assert alice.query([bob.user_id])["device_keys"][bob.user_id] == before
    assert alice_phone.device_id not in alice.query([alice.user_id])["device_keys"][alice.user_id]
    no_tracebacks(server)


def test_refused_upload_changes_nothing(any_server: ServerProcess) -> None:
    """A /keys/upload refused for any field stores none of the others: not the device keys
    before a bad one-time key, not the one-time keys before a bad fallback key."""
    alice, bob = new_user(any_server), new_user(any_server)
    fallback = {
        "signed_curve25519:FALLBACK1": sign_json(
            {"key": b64(), "fallback": True}, alice.user_id, alice.signing_key
        )
    }

    def state(device: Device) -> tuple[Any, Any, Any]:
        body = device.sync()
        keys = bob.query([device.user_id])["device_keys"][device.user_id]
        return (
            device.device_id in keys,
            body["device_one_time_keys_count"],
            body.get("device_unused_fallback_key_types", []),
        )

    empty = (False, {"signed_curve25519": 0}, [])
    assert state(alice) == empty
    # Good device keys and one-time keys, then a malformed fallback key.
    r = alice.post(
        "/keys/upload",
        {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(3), "fallback_keys": "x"},
    )
    assert_error(r, 400, "M_BAD_JSON")
    assert state(alice) == empty
    # Good device keys and fallback key, then a malformed one-time key.
    r = alice.post(
        "/keys/upload",
        {
            "device_keys": alice.device_keys(),
            "one_time_keys": {**alice.one_time_keys(2), "signed_curve25519:BAD": 7},
            "fallback_keys": fallback,
        },
    )
    assert_error(r, 400, "M_BAD_JSON")
    assert state(alice) == empty
    # A one-time key id reused with other content is found only against the stored keys:
    # the device keys, fresh one-time keys and fallback key with it are refused too.
    phone = new_device(alice)
    reused = "signed_curve25519:REUSED"
    r = phone.post("/keys/upload", {"one_time_keys": {reused: {"key": b64()}}})
    assert r.status_code == 200, r.text
    phone_fallback = {
        "signed_curve25519:FB": sign_json({"key": b64(), "fallback": True}, phone.user_id, phone.signing_key)
    }
    r = phone.post(
        "/keys/upload",
        {
            "device_keys": phone.device_keys(),
            "one_time_keys": {**phone.one_time_keys(4), reused: {"key": b64()}},
            "fallback_keys": phone_fallback,
        },
    )
    assert_error(r, 400, "M_INVALID_PARAM")
    assert state(phone) == (False, {"signed_curve25519": 1}, [])

    # The same uploads, valid, go through whole.
    r = alice.post(
        "/keys/upload",
        {
            "device_keys": alice.device_keys(),
            "one_time_keys": alice.one_time_keys(3),
            "fallback_keys": fallback,
        },
    )
    assert r.status_code == 200, r.text
    assert state(alice) == (True, {"signed_curve25519": 3}, ["signed_curve25519"])
    no_tracebacks(any_server)


# Claiming one-time keys ------------------------------------------------------------------------


def test_claim_unknown_users_and_devices(server: ServerProcess) -> None:
    alice, bob = new_user(server), new_user(server)
    bob.upload_keys(otks=1)
    r = alice.post(
        "/keys/claim",
        {
            "one_time_keys": {
                "@nobody:" + server.server_name: {"DEVICE": "signed_curve25519"},
                bob.user_id: {"NOSUCHDEVICE": "signed_curve25519", bob.device_id: "unknown_algorithm"},
                "@someone:elsewhere.example": {"X": "signed_curve25519"},
            },
            "timeout": 10000,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["one_time_keys"] == {}
    assert isinstance(body["failures"], dict)
    # Bob's one real key is still there.
    assert bob.sync()["device_one_time_keys_count"]["signed_curve25519"] == 1

    for bad in (
        {},
        {"one_time_keys": []},
        {"one_time_keys": {bob.user_id: ["x"]}},
        {"one_time_keys": {bob.user_id: {"D": 1}}},
    ):
        assert_error(alice.post("/keys/claim", bad), 400, "M_BAD_JSON")
    assert_error(alice.post("/keys/query", {"device_keys": {bob.user_id: "all"}}), 400, "M_BAD_JSON")
    assert_error(alice.post("/keys/query", {}), 400, "M_BAD_JSON")
    no_tracebacks(server)


def test_query_and_claim_sizes_are_bounded(any_server: ServerProcess) -> None:
    """/keys/query and /keys/claim take what real clients send in one request (the Rust
    SDK's 250-user query batches; matrix-nio's every tracked user; a claim for every
    device of a large room), and refuse more with 413 M_TOO_LARGE, never a 500."""
    alice, bob = new_user(any_server), new_user(any_server)
    bob.upload_keys(otks=1)
    others = [f"@u{i}:{any_server.server_name}" for i in range(MAX_QUERY_USERS)]

    # A Rust SDK batch, and the most one request may name: both answered in full.
    for users in (others[:249], others[: MAX_QUERY_USERS - 1]):
        answer = alice.query([bob.user_id, *users])
        assert bob.device_id in answer["device_keys"][bob.user_id]
        assert len(answer["device_keys"]) == len(users) + 1
    named = {bob.user_id: [bob.device_id, *(f"D{i}" for i in range(MAX_QUERY_DEVICES - 1))]}
    r = alice.post("/keys/query", {"device_keys": named})
    assert r.status_code == 200, r.text
    assert list(r.json()["device_keys"][bob.user_id]) == [bob.device_id]
    # One more user, or one more device id: refused.
    r = alice.post("/keys/query", {"device_keys": {u: [] for u in [bob.user_id, *others]}})
    assert_error(r, 413, "M_TOO_LARGE")
    named[bob.user_id].append("ONE_MORE")
    assert_error(alice.post("/keys/query", {"device_keys": named}), 413, "M_TOO_LARGE")

    # Claims: the most one request may name, over several users; then one more.
    claims: dict[str, dict[str, str]] = {bob.user_id: {bob.device_id: "signed_curve25519"}}
    for i in range(MAX_CLAIM_DEVICES - 1):
        claims.setdefault(others[i % 100], {})[f"D{i}"] = "signed_curve25519"
    claims_over = {**claims, others[200]: {"ONE_MORE": "signed_curve25519"}}
    assert_error(alice.post("/keys/claim", {"one_time_keys": claims_over}), 413, "M_TOO_LARGE")
    # The refused claim took nothing.
    assert bob.sync()["device_one_time_keys_count"]["signed_curve25519"] == 1
    r = alice.post("/keys/claim", {"one_time_keys": claims})
    assert r.status_code == 200, r.text
    assert list(r.json()["one_time_keys"]) == [bob.user_id]
    assert bob.sync()["device_one_time_keys_count"]["signed_curve25519"] == 0
    no_tracebacks(any_server)


def test_claim_returns_keys_as_uploaded(server: ServerProcess) -> None:
    alice, bob = new_user(server), new_user(server)
    bare = b64()
    signed = bob.one_time_keys(1)
    r = bob.post(
        "/keys/upload",
        {"device_keys": bob.device_keys(), "one_time_keys": {"curve25519:AAAAAQ": bare, **signed}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["one_time_key_counts"] == {"curve25519": 1, "signed_curve25519": 1}
    for algorithm, expected in (("curve25519", {"curve25519:AAAAAQ": bare}), ("signed_curve25519", signed)):
        r = alice.post("/keys/claim", {"one_time_keys": {bob.user_id: {bob.device_id: algorithm}}})
        assert r.status_code == 200, r.text
        assert r.json()["one_time_keys"] == {bob.user_id: {bob.device_id: expected}}
    no_tracebacks(server)


def test_each_one_time_key_is_claimed_once_under_concurrency(any_server: ServerProcess) -> None:
    owner = new_user(any_server)
    claimers = [new_user(any_server) for _ in range(4)]
    keys = 40
    owner.upload_keys(otks=keys, fallback=True)

    claimed: list[tuple[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(claimers) * 3)

    def claim_many(claimer: Device) -> None:
        start.wait()
        with requests.Session() as http:
            for _ in range(keys // (len(claimers) * 3) + 2):
                r = http.post(
                    any_server.url(CLIENT + "/keys/claim"),
                    json={"one_time_keys": {owner.user_id: {owner.device_id: "signed_curve25519"}}},
                    headers={"Authorization": f"Bearer {claimer.token}"},
                    timeout=15,
                )
                with lock:
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    for key_id, key in (
                        r.json()["one_time_keys"].get(owner.user_id, {}).get(owner.device_id, {}).items()
                    ):
                        claimed.append((key_id, key))

    claiming = True

    def owner_syncs() -> None:
        # The owner's syncs read the key counts while the claims change them: a count read
        # before a claim committed must not be cached and served afterwards.
        with requests.Session() as http:
            while claiming:
                http.get(
                    any_server.url(CLIENT + "/sync"),
                    params={"timeout": 0},
                    headers={"Authorization": f"Bearer {owner.token}"},
                    timeout=15,
                )

    syncing = [threading.Thread(target=owner_syncs) for _ in range(3)]
    threads = [threading.Thread(target=claim_many, args=(c,)) for c in claimers for _ in range(3)]
    for t in syncing + threads:
        t.start()
    for t in threads:
        t.join()
    claiming = False
    for t in syncing:
        t.join()
    assert errors == []
    one_time = [k for k, _ in claimed if k != "signed_curve25519:FALLBACK1"]
    fallback = [v for k, v in claimed if k == "signed_curve25519:FALLBACK1"]
    # Every one-time key handed out exactly once; then the fallback key, as often as asked.
    assert len(one_time) == len(set(one_time)) == keys
    assert len(claimed) == (keys // (len(claimers) * 3) + 2) * len(claimers) * 3
    assert fallback and all(v.get("fallback") is True for v in fallback)
    body = owner.sync()
    assert body["device_one_time_keys_count"]["signed_curve25519"] == 0
    # The fallback key was used: the owner is told to upload a new one.
    assert body["device_unused_fallback_key_types"] == []
    no_tracebacks(any_server)


# To-device messages --------------------------------------------------------------------------------


def send_to_device(
    sender: Device, txn_id: str, messages: dict[str, Any], event_type: str = "m.test"
) -> requests.Response:
    return sender.request("PUT", f"/sendToDevice/{event_type}/{txn_id}", {"messages": messages})


def test_to_device_delivery_and_replayed_txn_ids(any_server: ServerProcess) -> None:
    alice, bob = new_user(any_server), new_user(any_server)
    bob_laptop = new_device(bob)
    for device in (bob, bob_laptop):
        device.sync()
    content = {"ciphertext": "opaque", "n": 1}
    for _ in range(3):
        r = send_to_device(alice, "txn1", {bob.user_id: {bob.device_id: content}})
        assert r.status_code == 200, r.text
        assert r.json() == {}
    events = to_device_events(bob)
    assert events == [{"type": "m.test", "sender": alice.user_id, "content": content}]
    # The next sync proves receipt: no repeat, even after another replay.
    assert send_to_device(alice, "txn1", {bob.user_id: {bob.device_id: content}}).status_code == 200
    assert to_device_events(bob) == []
    assert to_device_events(bob_laptop) == []

    # A sync that repeats an old `since` (a lost response) gets the messages again.
    since = bob.next_batch
    assert send_to_device(alice, "txn2", {bob.user_id: {"*": {"n": 2}}}).status_code == 200
    first = to_device_events(bob)
    assert [e["content"] for e in first] == [{"n": 2}]
    assert [e["content"] for e in bob.sync(since)["to_device"]["events"]] == [{"n": 2}]
    assert [e["content"] for e in to_device_events(bob_laptop)] == [{"n": 2}]

    # Transaction ids are per device: Alice's other device may use "txn1" too.
    alice_phone = new_device(alice)
    assert send_to_device(alice_phone, "txn1", {bob.user_id: {bob.device_id: {"n": 3}}}).status_code == 200
    assert [e["content"] for e in to_device_events(bob)] == [{"n": 3}]

    # Concurrent replays of one transaction deliver once and all answer 200.
    results: list[int] = []
    barrier = threading.Barrier(8)

    def replay() -> None:
        barrier.wait()
        r = send_to_device(alice, "txn-concurrent", {bob.user_id: {bob.device_id: {"n": 4}}})
        results.append(r.status_code)

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    assert [e["content"] for e in to_device_events(bob)] == [{"n": 4}]
    no_tracebacks(any_server)


def test_to_device_backlog_comes_in_batches(server: ServerProcess) -> None:
    senders = [new_user(server) for _ in range(3)]
    bob = new_user(server)
    bob.sync()
    for i in range(250):
        sender = senders[i % 3]
        r = send_to_device(sender, f"t{i}", {bob.user_id: {bob.device_id: {"i": i}}})
        assert r.status_code == 200, r.text
    received: list[int] = []
    for _ in range(10):
        events = to_device_events(bob)
        if not events:
            break
        assert len(events) <= 100
        received.extend(e["content"]["i"] for e in events)
    assert received == list(range(250))
    assert db_rows(server, "SELECT COUNT(*) FROM to_device_messages WHERE user_id = ?", bob.user_id) == [(0,)]


def test_to_device_bad_input(server: ServerProcess) -> None:
    alice, bob = new_user(server), new_user(server)
    bob.sync()
    assert_error(
        send_to_device(alice, "big", {bob.user_id: {bob.device_id: {"blob": "x" * 70_000}}}),
        413,
        "M_TOO_LARGE",
    )
    # Many devices, each under the per-message limit, still over the request limit.
    many = {bob.user_id: {f"D{i}": {"blob": "x" * 60_000} for i in range(6)}}
    assert_error(send_to_device(alice, "many", many), 413, "M_TOO_LARGE")
    huge = {bob.user_id: {bob.device_id: {"blob": "x" * 1_100_000}}}
    r = send_to_device(alice, "huge", huge)
    assert r.status_code == 413, r.text
    assert_error(alice.request("PUT", "/sendToDevice/m.test/t1", {"messages": []}), 400, "M_BAD_JSON")
    assert_error(alice.request("PUT", "/sendToDevice/m.test/t2", {}), 400, "M_BAD_JSON")
    assert_error(send_to_device(alice, "t3", {bob.user_id: ["x"]}), 400, "M_BAD_JSON")
    assert_error(send_to_device(alice, "t4", {bob.user_id: {bob.device_id: "text"}}), 400, "M_BAD_JSON")
    assert_error(send_to_device(alice, "x" * 300, {bob.user_id: {bob.device_id: {}}}), 400, "M_INVALID_PARAM")
    # Nothing of the refused requests was delivered; a refused txn id can be used again.
    assert to_device_events(bob) == []
    assert send_to_device(alice, "big", {bob.user_id: {bob.device_id: {"ok": True}}}).status_code == 200
    assert [e["content"] for e in to_device_events(bob)] == [{"ok": True}]

    # Messages for devices that do not exist are dropped, not kept for a device that
    # might later log in with that id.
    ghost = "GHOSTDEVICE"
    assert send_to_device(alice, "ghost", {bob.user_id: {ghost: {"early": True}}}).status_code == 200
    assert db_rows(server, "SELECT COUNT(*) FROM to_device_messages WHERE device_id = ?", ghost) == [(0,)]
    login = server.login(bob.localpart, PASSWORD, device_id=ghost)
    ghost_device = Device(server, login["user_id"], login["device_id"], login["access_token"], bob.localpart)
    assert ghost_device.device_id == ghost
    assert to_device_events(ghost_device) == []
    no_tracebacks(server)


# Deleting a device -------------------------------------------------------------------------------


def test_deleting_a_device_removes_its_keys_and_queue(any_server: ServerProcess) -> None:
    alice, bob = new_user(any_server), new_user(any_server)
    bob_old = new_device(bob)
    bob_old.upload_keys(otks=3, fallback=True)
    share_room(alice, bob)
    alice.sync()
    assert bob_old.device_id in alice.query([bob.user_id])["device_keys"][bob.user_id]
    assert (
        send_to_device(alice, "queued", {bob.user_id: {bob_old.device_id: {"queued": 1}}}).status_code == 200
    )
    assert send_to_device(bob_old, "from-old", {alice.user_id: {"*": {"old": 1}}}).status_code == 200
    assert [e["content"] for e in alice.sync()["to_device"]["events"]] == [{"old": 1}]
    before = alice.next_batch

    delete_device(bob, bob_old.device_id)

    # Others see the change in their sync and in /keys/changes, and the keys are gone.
    assert bob.user_id in alice.sync()["device_lists"]["changed"]
    r = alice.request("GET", "/keys/changes", **{"from": before, "to": alice.next_batch})
    assert r.status_code == 200, r.text
    assert bob.user_id in r.json()["changed"]
    assert bob_old.device_id not in alice.query([bob.user_id])["device_keys"][bob.user_id]
    r = alice.post("/keys/claim", {"one_time_keys": {bob.user_id: {bob_old.device_id: "signed_curve25519"}}})
    assert r.json()["one_time_keys"] == {}
    for table in ("device_keys", "one_time_keys", "fallback_keys", "to_device_messages", "to_device_txns"):
        rows = db_rows(
            any_server,
            f"SELECT COUNT(*) FROM {table} WHERE user_id = ? AND device_id = ?",
            bob.user_id,
            bob_old.device_id,
        )
        assert rows == [(0,)], table
    # Logging out is deleting the device too.
    bob_phone = new_device(bob)
    bob_phone.upload_keys(otks=1)
    assert bob.user_id in alice.sync()["device_lists"]["changed"]
    assert bob_phone.post("/logout", {}).status_code == 200
    assert bob.user_id in alice.sync()["device_lists"]["changed"]
    assert bob_phone.device_id not in alice.query([bob.user_id])["device_keys"][bob.user_id]
    # Its token is gone, and nothing new is queued for it.
    assert bob_old.request("GET", "/sync", timeout=0).status_code == 401
    assert send_to_device(alice, "after", {bob.user_id: {bob_old.device_id: {"late": 1}}}).status_code == 200
    assert db_rows(
        any_server, "SELECT COUNT(*) FROM to_device_messages WHERE device_id = ?", bob_old.device_id
    ) == [(0,)]
    # A device logging in later with the same id starts afresh: its transaction ids are new.
    login = any_server.login(bob.localpart, PASSWORD, device_id=bob_old.device_id)
    reborn = Device(any_server, login["user_id"], login["device_id"], login["access_token"], bob.localpart)
    assert send_to_device(reborn, "from-old", {alice.user_id: {"*": {"reborn": 1}}}).status_code == 200
    assert [e["content"] for e in alice.sync()["to_device"]["events"]] == [{"reborn": 1}]
    assert to_device_events(reborn) == []
    no_tracebacks(any_server)


def test_keys_changes(server: ServerProcess) -> None:
    alice, bob, carol = new_user(server), new_user(server), new_user(server)
    room_id = share_room(alice, bob)
    start = alice.sync()["next_batch"]
    bob.upload_keys()
    carol.upload_keys()  # shares no room with Alice
    middle = alice.sync()["next_batch"]

    def changes(since: str, to: str) -> dict[str, Any]:
        r = alice.request("GET", "/keys/changes", **{"from": since, "to": to})
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    assert changes(start, middle) == {"changed": [bob.user_id], "left": []}
    # A user's own new device shows as a change of their own keys.
    new_device(alice).upload_keys()
    own = alice.sync()
    assert own["device_lists"] == {"changed": [alice.user_id], "left": []}
    assert changes(middle, own["next_batch"])["changed"] == [alice.user_id]
    middle = own["next_batch"]
    assert changes(middle, middle) == {"changed": [], "left": []}
    # A new member's keys count as changed; one who leaves every shared room is "left".
    share_carol = alice.post(f"/rooms/{room_id}/invite", {"user_id": carol.user_id})
    assert share_carol.status_code == 200, share_carol.text
    assert carol.post(f"/join/{room_id}", {}).status_code == 200
    joined = alice.sync()["next_batch"]
    assert carol.user_id in changes(middle, joined)["changed"]
    assert bob.post(f"/rooms/{room_id}/leave", {}).status_code == 200
    left = alice.sync()["next_batch"]
    assert changes(joined, left)["left"] == [bob.user_id]

    assert_error(alice.request("GET", "/keys/changes", **{"from": start}), 400, "M_MISSING_PARAM")
    assert_error(
        alice.request("GET", "/keys/changes", **{"from": "garbage", "to": left}), 400, "M_INVALID_PARAM"
    )
    no_tracebacks(server)


# Cross-signing ------------------------------------------------------------------------------------


@dataclass
class CrossSigning:
    user_id: str
    master: Any
    self_signing: Any
    user_signing: Any

    @staticmethod
    def key(user_id: str, usage: str) -> Any:
        sk = generate_signing_key("tmp")
        sk.version = encode_verify_key_base64(get_verify_key(sk))
        return sk

    @classmethod
    def make(cls, user_id: str) -> CrossSigning:
        return cls(user_id, cls.key(user_id, "m"), cls.key(user_id, "s"), cls.key(user_id, "u"))

    def public(self, sk: Any, usage: str, signer: Any = None) -> dict[str, Any]:
        obj = {"user_id": self.user_id, "usage": [usage], "keys": {f"ed25519:{sk.version}": sk.version}}
        signed: dict[str, Any] = sign_json(obj, self.user_id, signer) if signer is not None else obj
        return signed

    def upload_body(self) -> dict[str, Any]:
        return {
            "master_key": self.public(self.master, "master", self.master),
            "self_signing_key": self.public(self.self_signing, "self_signing", self.master),
            "user_signing_key": self.public(self.user_signing, "user_signing", self.master),
        }


def uia_password(device: Device) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": device.localpart},
        "password": PASSWORD,
    }


def test_cross_signing_upload_and_signatures(any_server: ServerProcess) -> None:
    alice, bob, carol = new_user(any_server), new_user(any_server), new_user(any_server)
    for device in (alice, bob, carol):
        device.upload_keys()
    xs = CrossSigning.make(alice.user_id)

    # The self-signing key must be signed by the master key.
    bad = xs.upload_body()
    bad["self_signing_key"] = xs.public(xs.self_signing, "self_signing", xs.user_signing)
    assert_error(alice.post("/keys/device_signing/upload", bad), 400, "M_INVALID_SIGNATURE")
    bad = xs.upload_body()
    bad["master_key"]["usage"] = ["self_signing"]
    assert_error(alice.post("/keys/device_signing/upload", bad), 400, "M_INVALID_PARAM")
    bad = xs.upload_body()
    bad["master_key"]["user_id"] = bob.user_id
    assert_error(alice.post("/keys/device_signing/upload", bad), 400, "M_INVALID_PARAM")
    assert alice.query([alice.user_id])["master_keys"] == {}

    r = alice.post("/keys/device_signing/upload", xs.upload_body())
    assert r.status_code == 200, r.text
    # Replacing the master key needs the password (user-interactive auth).
    other = CrossSigning.make(alice.user_id)
    r = alice.post("/keys/device_signing/upload", other.upload_body())
    assert r.status_code == 401, r.text
    assert "session" in r.json()

    # Alice signs her device with her self-signing key, and her master key with her device.
    device_keys = alice.device_keys()
    signed_device = sign_json(
        {k: v for k, v in device_keys.items() if k != "signatures"}, alice.user_id, xs.self_signing
    )
    master = xs.public(xs.master, "master", xs.master)
    signed_master = sign_json(master, alice.user_id, alice.signing_key)
    r = alice.post(
        "/keys/signatures/upload",
        {alice.user_id: {alice.device_id: signed_device, xs.master.version: signed_master}},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"failures": {}}

    # Wrong signatures, unknown targets and other users' devices are reported per key.
    wrong = sign_json(
        {k: v for k, v in device_keys.items() if k != "signatures"}, alice.user_id, xs.user_signing
    )
    wrong["signatures"][alice.user_id][f"ed25519:{xs.self_signing.version}"] = wrong["signatures"][
        alice.user_id
    ].pop(f"ed25519:{xs.user_signing.version}")
    bob_device = bob.device_keys()
    r = alice.post(
        "/keys/signatures/upload",
        {
            alice.user_id: {alice.device_id: wrong, "NOSUCHKEY": signed_device},
            bob.user_id: {bob.device_id: sign_json(dict(bob_device), alice.user_id, xs.self_signing)},
        },
    )
    assert r.status_code == 200, r.text
    failures = r.json()["failures"]
    assert failures[alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    assert "NOSUCHKEY" in failures[alice.user_id]
    assert bob.device_id in failures[bob.user_id]

    # Alice verifies Bob: his master key signed by her user-signing key.
    bob_xs = CrossSigning.make(bob.user_id)
    assert bob.post("/keys/device_signing/upload", bob_xs.upload_body()).status_code == 200
    bob_master = bob_xs.public(bob_xs.master, "master")
    r = alice.post(
        "/keys/signatures/upload",
        {bob.user_id: {bob_xs.master.version: sign_json(bob_master, alice.user_id, xs.user_signing)}},
    )
    assert r.status_code == 200 and r.json() == {"failures": {}}, r.text

    # What a third user sees: Alice's keys with their signatures, but not her
    # user-signing key, nor whom she verified.
    seen = carol.query([alice.user_id, bob.user_id])
    dev = seen["device_keys"][alice.user_id][alice.device_id]
    assert set(dev["signatures"][alice.user_id]) == {
        f"ed25519:{alice.device_id}",
        f"ed25519:{xs.self_signing.version}",
    }
    assert (
        dev["signatures"][alice.user_id][f"ed25519:{xs.self_signing.version}"]
        == signed_device["signatures"][alice.user_id][f"ed25519:{xs.self_signing.version}"]
    )
    alice_master = seen["master_keys"][alice.user_id]
    assert f"ed25519:{alice.device_id}" in alice_master["signatures"][alice.user_id]
    assert seen["self_signing_keys"][alice.user_id]["keys"] == {
        f"ed25519:{xs.self_signing.version}": xs.self_signing.version
    }
    assert seen["user_signing_keys"] == {}
    assert set(seen["master_keys"][bob.user_id]["signatures"]) == {bob.user_id}
    # Alice sees her own signature on Bob's key, and her own user-signing key.
    mine = alice.query([alice.user_id, bob.user_id])
    assert alice.user_id in mine["master_keys"][bob.user_id]["signatures"]
    assert alice.user_id in mine["user_signing_keys"]
    # Bob sees his own keys as they are, without Alice's signature on his master key.
    assert set(bob.query([bob.user_id])["master_keys"][bob.user_id]["signatures"]) == {bob.user_id}

    # Cross-signing changes show in device_lists of those who share a room.
    share_room(carol, alice)
    carol.sync()
    newer = xs.public(xs.self_signing, "self_signing", xs.master)
    # Once a master key exists, replacing any cross-signing key needs the password (UIA).
    challenge = alice.post("/keys/device_signing/upload", {"self_signing_key": newer})
    assert challenge.status_code == 401 and {"stages": ["m.login.password"]} in challenge.json()["flows"]
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
        "password": PASSWORD,
        "session": challenge.json()["session"],
    }
    r = alice.post("/keys/device_signing/upload", {"self_signing_key": newer, "auth": auth})
    assert r.status_code == 200, r.text
    assert alice.user_id in carol.sync()["device_lists"]["changed"]
    no_tracebacks(any_server)


def test_concurrent_signatures_on_one_key_are_all_kept(any_server: ServerProcess) -> None:
    target = new_user(any_server)
    target_xs = CrossSigning.make(target.user_id)
    assert target.post("/keys/device_signing/upload", target_xs.upload_body()).status_code == 200
    signers = []
    for _ in range(8):
        signer = new_user(any_server)
        xs = CrossSigning.make(signer.user_id)
        assert signer.post("/keys/device_signing/upload", xs.upload_body()).status_code == 200
        signers.append((signer, xs))
    barrier = threading.Barrier(len(signers))
    statuses: list[str] = []

    def sign(signer: Device, xs: CrossSigning) -> None:
        master = target_xs.public(target_xs.master, "master", target_xs.master)
        body = {
            target.user_id: {target_xs.master.version: sign_json(master, signer.user_id, xs.user_signing)}
        }
        barrier.wait()
        r = signer.post("/keys/signatures/upload", body)
        statuses.append(r.text if r.status_code != 200 or r.json() != {"failures": {}} else "ok")

    threads = [threading.Thread(target=sign, args=pair) for pair in signers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == ["ok"] * len(signers)
    # Each signer sees their own signature on the target's master key: none was lost.
    for signer, _ in signers:
        signatures = signer.query([target.user_id])["master_keys"][target.user_id]["signatures"]
        assert set(signatures) == {target.user_id, signer.user_id}
    no_tracebacks(any_server)


# Key backup ---------------------------------------------------------------------------------------


def test_key_backup_versions(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    room = "!room:" + any_server.server_name
    session = {"ciphertext": b64(), "ephemeral": b64(), "mac": b64(8)}

    def key(first: int, forwarded: int = 0, verified: bool = False, data: Any = None) -> dict[str, Any]:
        return {
            "first_message_index": first,
            "forwarded_count": forwarded,
            "is_verified": verified,
            "session_data": data or session,
        }

    assert_error(alice.request("GET", "/room_keys/version"), 404, "M_NOT_FOUND")
    # No backup at all: keys cannot be stored.
    r = alice.request("PUT", f"/room_keys/keys/{room}/s1", key(0), version="1")
    assert_error(r, 404, "M_NOT_FOUND")

    auth_data = {"public_key": b64(), "signatures": {}}
    r = alice.post("/room_keys/version", {"algorithm": BACKUP_ALGORITHM, "auth_data": auth_data})
    assert r.status_code == 200, r.text
    v1 = r.json()["version"]
    assert isinstance(v1, str)
    info = alice.request("GET", "/room_keys/version").json()
    assert info == {
        "version": v1,
        "algorithm": BACKUP_ALGORITHM,
        "auth_data": auth_data,
        "etag": info["etag"],
        "count": 0,
    }
    assert isinstance(info["etag"], str)

    r = alice.request("PUT", f"/room_keys/keys/{room}/s1", key(5), version=v1)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["count"] == 1 and first["etag"] != info["etag"]
    # A worse key (starts later) is ignored: etag and count stay.
    r = alice.request("PUT", f"/room_keys/keys/{room}/s1", key(9), version=v1)
    assert r.json() == first
    # A better one replaces it.
    r = alice.request(
        "PUT", f"/room_keys/keys/{room}", {"sessions": {"s1": key(2), "s2": key(0)}}, version=v1
    )
    second = r.json()
    assert second["count"] == 2 and second["etag"] != first["etag"]
    got = alice.request("GET", f"/room_keys/keys/{room}/s1", version=v1).json()
    assert got["first_message_index"] == 2
    everything = alice.request("GET", "/room_keys/keys", version=v1).json()
    assert set(everything["rooms"][room]["sessions"]) == {"s1", "s2"}

    # Bad key data is refused, not stored.
    for bad in (key("x"), {"session_data": session, "forwarded_count": []}, {"first_message_index": 0}):  # type: ignore[arg-type]
        r = alice.request("PUT", f"/room_keys/keys/{room}/s3", bad, version=v1)
        assert_error(r, 400, "M_BAD_JSON")
    for rooms in (
        [],
        {room: []},
        {room: "x"},
        {room: {"sessions": []}},
        {room: {"sessions": {"s": key(0, data=[1])}}},
    ):
        assert_error(alice.request("PUT", "/room_keys/keys", {"rooms": rooms}, version=v1), 400, "M_BAD_JSON")
    assert alice.request("GET", "/room_keys/version").json()["count"] == 2

    # The algorithm of a version cannot change; the version in the body must match.
    r = alice.request("PUT", f"/room_keys/version/{v1}", {"algorithm": "m.other", "auth_data": auth_data})
    assert_error(r, 400, "M_INVALID_PARAM")
    r = alice.request(
        "PUT",
        f"/room_keys/version/{v1}",
        {"algorithm": BACKUP_ALGORITHM, "auth_data": auth_data, "version": "99"},
    )
    assert_error(r, 400, "M_INVALID_PARAM")
    new_auth = {**auth_data, "signatures": {alice.user_id: {"ed25519:X": "sig"}}}
    r = alice.request(
        "PUT", f"/room_keys/version/{v1}", {"algorithm": BACKUP_ALGORITHM, "auth_data": new_auth}
    )
    assert r.status_code == 200, r.text
    assert alice.request("GET", f"/room_keys/version/{v1}").json()["auth_data"] == new_auth

    # A new version becomes current: writing to the old one is refused with the current version.
    r = alice.post("/room_keys/version", {"algorithm": BACKUP_ALGORITHM, "auth_data": auth_data})
    v2 = r.json()["version"]
    assert v2 != v1
    body = assert_error(
        alice.request("PUT", f"/room_keys/keys/{room}/s1", key(0), version=v1),
        403,
        "M_WRONG_ROOM_KEYS_VERSION",
    )
    assert body["current_version"] == v2
    assert alice.request("GET", "/room_keys/version").json()["count"] == 0
    # The old version's keys are still readable until it is deleted.
    assert alice.request("GET", f"/room_keys/keys/{room}/s2", version=v1).status_code == 200

    r = alice.request("DELETE", f"/room_keys/keys/{room}/s2", version=v1)
    assert r.status_code == 200 and r.json()["count"] == 1, r.text
    assert alice.request("DELETE", f"/room_keys/version/{v1}").status_code == 200
    assert_error(alice.request("GET", f"/room_keys/version/{v1}"), 404, "M_NOT_FOUND")
    assert_error(alice.request("DELETE", f"/room_keys/version/{v1}"), 404, "M_NOT_FOUND")
    assert alice.request("GET", "/room_keys/version").json()["version"] == v2
    # Someone else's backup is not visible.
    assert_error(new_user(any_server).request("GET", f"/room_keys/version/{v2}"), 404, "M_NOT_FOUND")
    no_tracebacks(any_server)


# Rooms are encrypted by default -------------------------------------------------------------------------


def room_encryption(device: Device, room_id: str) -> dict[str, Any] | None:
    r = device.request("GET", f"/rooms/{room_id}/state/m.room.encryption/")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    content: dict[str, Any] = r.json()
    return content


@pytest.mark.parametrize("setting", ["invite", "off", "all"])
def test_private_and_direct_chats_are_encrypted_unless_turned_off(start_server: Any, setting: str) -> None:
    server: ServerProcess = start_server({"encryption": {"enabled_by_default_for_room_type": setting}})
    alice, bob = new_user(server), new_user(server)
    expected = {
        "private_chat": setting != "off",
        "trusted_private_chat": setting != "off",
        "public_chat": setting == "all",
    }
    for preset, encrypted in expected.items():
        body: dict[str, Any] = {"preset": preset, "invite": [bob.user_id]}
        if preset == "trusted_private_chat":
            body["is_direct"] = True
        r = alice.post("/createRoom", body)
        assert r.status_code == 200, r.text
        content = room_encryption(alice, r.json()["room_id"])
        assert content == ({"algorithm": MEGOLM} if encrypted else None), (preset, content)
    # A client may still ask for encryption itself (initial_state), whatever the default.
    r = alice.post(
        "/createRoom",
        {
            "preset": "public_chat",
            "initial_state": [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
            ],
        },
    )
    assert room_encryption(alice, r.json()["room_id"]) == {"algorithm": MEGOLM}

    if setting == "invite":
        # The simple API sends plaintext: its chats are unencrypted unless asked for.
        headers = {"Authorization": f"Bearer {alice.token}"}
        r = requests.post(
            server.url("/api/messages/send"),
            json={"receiverId": bob.user_id, "content": "hi"},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert room_encryption(alice, r.json()["chatId"]) is None
        carol = new_user(server)
        r = requests.post(
            server.url("/api/groups"),
            json={"name": "E2EE", "members": [carol.user_id], "encrypted": True},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert room_encryption(alice, r.json()["chatId"]) == {"algorithm": MEGOLM}
    no_tracebacks(server)


# Deactivation ---------------------------------------------------------------------------------


def publish_all_keys(device: Device) -> CrossSigning:
    """Device keys, one-time and fallback keys, cross-signing keys and a key backup with one
    key in it, as a client set up for encryption has; a second device with one-time keys only."""
    device.upload_keys(otks=3, fallback=True)
    xs = CrossSigning.make(device.user_id)
    r = device.post("/keys/device_signing/upload", xs.upload_body())
    assert r.status_code == 200, r.text
    r = device.post(
        "/keys/signatures/upload",
        {
            device.user_id: {
                device.device_id: sign_json(device.device_keys(), device.user_id, xs.self_signing)
            }
        },
    )
    assert r.status_code == 200 and r.json()["failures"] == {}, r.text
    r = device.post("/room_keys/version", {"algorithm": BACKUP_ALGORITHM, "auth_data": {"public_key": b64()}})
    assert r.status_code == 200, r.text
    session = {
        "first_message_index": 0,
        "forwarded_count": 0,
        "is_verified": False,
        "session_data": {"ciphertext": b64()},
    }
    room = "!room:" + device.server.server_name
    r = device.request("PUT", f"/room_keys/keys/{room}/s1", session, version=r.json()["version"])
    assert r.status_code == 200, r.text
    phone = new_device(device)
    r = phone.post("/keys/upload", {"one_time_keys": phone.one_time_keys(2)})
    assert r.status_code == 200, r.text
    return xs


def assert_keys_gone(owner: Device, viewer: Device, device_ids: list[str]) -> None:
    """What others see of a deactivated account: no devices, no cross-signing keys, nothing to
    claim; and nothing of its keys or backup is left in the database."""
    answer = viewer.query([owner.user_id])
    assert answer["device_keys"] == {owner.user_id: {}}
    assert owner.user_id not in answer["master_keys"]
    assert owner.user_id not in answer["self_signing_keys"]
    r = viewer.post(
        "/keys/claim", {"one_time_keys": {owner.user_id: {d: "signed_curve25519" for d in device_ids}}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["one_time_keys"] == {}
    for table in ("device_keys", "one_time_keys", "fallback_keys", "cross_signing_keys", "room_key_backups"):
        assert db_rows(owner.server, f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", owner.user_id) == [
            (0,)
        ], table
    live = db_rows(
        owner.server,
        "SELECT COUNT(*) FROM room_key_backup_versions WHERE user_id = ? AND deleted = ?",
        owner.user_id,
        False,
    )
    assert live == [(0,)]


def deactivate(device: Device) -> None:
    r = device.post("/account/deactivate", {})
    assert r.status_code == 401, r.text
    auth = {**uia_password(device), "session": r.json()["session"]}
    r = device.post("/account/deactivate", {"auth": auth})
    assert r.status_code == 200, r.text


def test_deactivation_deletes_the_users_keys(any_server: ServerProcess) -> None:
    """POST /account/deactivate takes the account's cross-signing keys, key backup and every
    device's keys with it; those sharing a room hear of the change on their next sync."""
    alice, bob = new_user(any_server), new_user(any_server)
    share_room(alice, bob)
    publish_all_keys(alice)
    device_ids = [d["device_id"] for d in alice.request("GET", "/devices").json()["devices"]]
    assert len(device_ids) == 2
    before = bob.query([alice.user_id])
    assert alice.device_id in before["device_keys"][alice.user_id]
    assert alice.user_id in before["master_keys"] and alice.user_id in before["self_signing_keys"]
    bob.sync()

    deactivate(alice)

    assert_keys_gone(alice, bob, device_ids)
    assert alice.user_id in bob.sync()["device_lists"]["changed"]
    no_tracebacks(any_server)
