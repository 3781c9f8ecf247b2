"""Inbound federation events: transactions of signed PDUs from a remote server reach a local
room (checked, stored, shown in /sync in order), and the room's events are served back.

The remote is the test itself: a small TLS server named `localhost:PORT` that publishes a
signing key and answers `get_missing_events` and `event_auth` from what the test gives it.
The test signs PDUs and requests with that key; our server fetches the key from it.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests
from conftest import free_port
from federation_harness import FederatedServer, TestCA
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.core.federation.request_auth import authorization_header
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.signing import sign_event

V10 = "10"


class FakeRemote:
    """A remote server: its key, the events it serves, and the requests it was sent."""

    def __init__(self, ca: TestCA) -> None:
        self.port = free_port()
        self.name = f"localhost:{self.port}"
        self.key = generate_signing_key("remote1")
        self.missing: list[dict[str, Any]] = []  # get_missing_events answer
        self.auth_chain: list[dict[str, Any]] = []  # event_auth answer
        self.state_ids: dict[str, Any] = {}  # state_ids answer
        self.events: dict[str, dict[str, Any]] = {}  # served at /event/{eventId}
        self.requests: list[str] = []
        cert, key = ca.issue(f"remote-{self.port}")
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: Any, status: int = 200) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                remote.requests.append(f"GET {self.path}")
                if self.path == "/_matrix/key/v2/server":
                    self._answer(remote.key_answer())
                elif self.path.startswith("/_matrix/federation/v1/event_auth/"):
                    self._answer({"auth_chain": remote.auth_chain})
                elif self.path.startswith("/_matrix/federation/v1/state_ids/") and remote.state_ids:
                    self._answer(remote.state_ids)
                elif self.path.startswith("/_matrix/federation/v1/event/"):
                    event_id = unquote(self.path.rsplit("/", 1)[1])
                    if event_id in remote.events:
                        self._answer(
                            {"origin": remote.name, "origin_server_ts": 0, "pdus": [remote.events[event_id]]}
                        )
                    else:
                        self._answer({"errcode": "M_NOT_FOUND", "error": "no"}, 404)
                else:
                    self._answer({"errcode": "M_NOT_FOUND", "error": "no"}, 404)

            def do_POST(self) -> None:  # noqa: N802
                remote.requests.append(f"POST {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.startswith("/_matrix/federation/v1/get_missing_events/"):
                    self._answer({"events": remote.missing})
                else:
                    self._answer({"errcode": "M_NOT_FOUND", "error": "no"}, 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def key_answer(self) -> dict[str, Any]:
        body = {
            "server_name": self.name,
            "valid_until_ts": int(time.time() * 1000) + 3_600_000,
            "verify_keys": {"ed25519:remote1": {"key": encode_verify_key_base64(get_verify_key(self.key))}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.name, self.key)

    def pdu(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        prev: list[str],
        auth: list[str],
        depth: int,
        state_key: str | None = None,
        key: Any = None,
        ts: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """(event ID, the signed PDU); made now unless `ts` says when."""
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": int(time.time() * 1000) if ts is None else ts,
            "depth": depth,
            "prev_events": prev,
            "auth_events": auth,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu = sign_event(add_content_hash(pdu), self.name, key or self.key, V10)
        return compute_event_id(pdu, V10), pdu

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def remote(ca: TestCA) -> Iterator[FakeRemote]:
    r = FakeRemote(ca)
    yield r
    r.stop()


def send_txn(
    ours: FederatedServer, remote: FakeRemote, txn_id: str, pdus: list[dict[str, Any]], **extra: Any
) -> requests.Response:
    body = {"origin": remote.name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus, **extra}
    path = f"/_matrix/federation/v1/send/{txn_id}"
    auth = authorization_header("PUT", path, remote.name, ours.server_name, remote.key, body)
    return requests.put(
        ours.federation_url(path),
        json=body,
        headers={"Authorization": auth},
        verify=str(ours.ca.ca_file),
        timeout=30,
    )


def fed_get(
    ours: FederatedServer, remote: FakeRemote, path: str, method: str = "GET", body: Any = None
) -> requests.Response:
    auth = authorization_header(method, path, remote.name, ours.server_name, remote.key, body)
    return requests.request(
        method,
        ours.federation_url(path),
        json=body,
        headers={"Authorization": auth},
        verify=str(ours.ca.ca_file),
        timeout=30,
    )


class Room:
    """A public room made by a local user, and what a remote needs to build on it."""

    def __init__(self, ours: FederatedServer, name: str) -> None:
        self.ours = ours
        self.user = ours.process.register(name)
        self.headers = {"Authorization": f"Bearer {self.user['access_token']}"}
        r = requests.post(
            ours.process.url("/_matrix/client/v3/createRoom"),
            json={"preset": "public_chat", "room_version": V10},
            headers=self.headers,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        self.room_id = r.json()["room_id"]
        self.depth = 100

    def state_id(self, event_type: str, state_key: str = "") -> str:
        r = requests.get(
            self.ours.process.url(f"/_matrix/client/v3/rooms/{quote(self.room_id)}/state"),
            headers=self.headers,
            timeout=10,
        )
        for ev in r.json():
            if ev["type"] == event_type and ev["state_key"] == state_key:
                return str(ev["event_id"])
        raise KeyError(event_type)

    def latest(self) -> str:
        r = requests.get(
            self.ours.process.url(f"/_matrix/client/v3/rooms/{quote(self.room_id)}/messages"),
            params={"dir": "b", "limit": "1"},
            headers=self.headers,
            timeout=10,
        )
        return str(r.json()["chunk"][0]["event_id"])

    def ts_of(self, event_id: str) -> int:
        """The origin_server_ts of one of the room's events."""
        return int(next(e["origin_server_ts"] for e in self.timeline() if e["event_id"] == event_id))

    def timeline(self) -> list[dict[str, Any]]:
        r = requests.get(
            self.ours.process.url(f"/_matrix/client/v3/rooms/{quote(self.room_id)}/messages"),
            params={"dir": "b", "limit": "100"},
            headers=self.headers,
            timeout=10,
        )
        return list(reversed(r.json()["chunk"]))

    def sync_timeline(self) -> list[dict[str, Any]]:
        r = requests.get(
            self.ours.process.url("/_matrix/client/v3/sync"),
            params={"filter": json.dumps({"room": {"timeline": {"limit": 100}}})},
            headers=self.headers,
            timeout=10,
        )
        return list(r.json()["rooms"]["join"][self.room_id]["timeline"]["events"])

    def send(self, body: str) -> str:
        r = requests.put(
            self.ours.process.url(
                f"/_matrix/client/v3/rooms/{quote(self.room_id)}/send/m.room.message/{time.monotonic_ns()}"
            ),
            json={"msgtype": "m.text", "body": body},
            headers=self.headers,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["event_id"])

    def join(self, remote: FakeRemote, localpart: str) -> tuple[str, str, dict[str, Any]]:
        """A remote user's join PDU built on the room's latest event: (user, event ID, PDU)."""
        user = f"@{localpart}:{remote.name}"
        auth = [
            self.state_id("m.room.create"),
            self.state_id("m.room.join_rules"),
            self.state_id("m.room.power_levels"),
        ]
        self.depth += 1
        event_id, pdu = remote.pdu(
            self.room_id,
            user,
            "m.room.member",
            {"membership": "join"},
            [self.latest()],
            auth,
            self.depth,
            state_key=user,
        )
        return user, event_id, pdu

    def message_auth(self, user: str) -> list[str]:
        return [
            self.state_id("m.room.create"),
            self.state_id("m.room.power_levels"),
            self.state_id("m.room.member", user),
        ]

    def message(
        self, remote: FakeRemote, user: str, body: str, prev: list[str], **kw: Any
    ) -> tuple[str, dict[str, Any]]:
        self.depth += 1
        return remote.pdu(
            self.room_id,
            user,
            "m.room.message",
            {"msgtype": "m.text", "body": body},
            prev,
            kw.pop("auth", None) or self.message_auth(user),
            self.depth,
            **kw,
        )


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


def test_a_remote_join_and_messages_reach_sync_in_order_once(
    ours: FederatedServer, remote: FakeRemote
) -> None:
    room = Room(ours, "alice_order")
    user, join_id, join = room.join(remote, "x")
    r = send_txn(ours, remote, "t-join", [join])
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {join_id: {}}}
    # Our server fetched the remote's key to check the signatures.
    assert "GET /_matrix/key/v2/server" in remote.requests
    m1_id, m1 = room.message(remote, user, "one", [join_id])
    m2_id, m2 = room.message(remote, user, "two", [m1_id])
    m3_id, m3 = room.message(remote, user, "three", [m2_id])
    r = send_txn(ours, remote, "t-msgs", [m1, m2, m3])
    assert r.json() == {"pdus": {m1_id: {}, m2_id: {}, m3_id: {}}}
    timeline = room.sync_timeline()
    assert bodies(timeline) == ["one", "two", "three"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == user for e in timeline)
    assert [e["event_id"] for e in timeline][-3:] == [m1_id, m2_id, m3_id]
    # A retried transaction gets the same answer and changes nothing; the same PDUs in a new
    # transaction are not stored twice.
    again = send_txn(ours, remote, "t-msgs", [m1, m2, m3])
    assert again.json() == r.json()
    send_txn(ours, remote, "t-msgs-copy", [m3, m2])
    assert bodies(room.timeline()) == ["one", "two", "three"]
    # A local message now builds on the remote's last one.
    local = room.send("four")
    ev = fed_get(ours, remote, f"/_matrix/federation/v1/event/{quote(local)}").json()["pdus"][0]
    assert ev["prev_events"] == [m3_id]


def test_forged_malformed_and_unauthorised_pdus_are_refused(
    ours: FederatedServer, remote: FakeRemote
) -> None:
    room = Room(ours, "alice_refuse")
    user, join_id, join = room.join(remote, "x")
    assert send_txn(ours, remote, "r-join", [join]).json()["pdus"][join_id] == {}
    # Signed with a key the remote never published.
    forged_id, forged = room.message(remote, user, "forged", [join_id], key=generate_signing_key("remote1"))
    # Over 64 KiB.
    big_id, big = room.message(remote, user, "x" * 70_000, [join_id])
    # From a remote user who never joined: its auth events give it no membership.
    stranger = f"@y:{remote.name}"
    stranger_id, stranger_msg = room.message(
        remote,
        stranger,
        "stranger",
        [join_id],
        auth=[room.state_id("m.room.create"), room.state_id("m.room.power_levels")],
    )
    # A topic from x (power 0; topics need 50): rejected, and never the room's topic.
    room.depth += 1
    topic_id, topic = remote.pdu(
        room.room_id,
        user,
        "m.room.topic",
        {"topic": "hijacked"},
        [join_id],
        room.message_auth(user),
        room.depth,
        state_key="",
    )
    r = send_txn(ours, remote, "r-bad", [forged, big, stranger_msg, topic])
    assert r.status_code == 200, r.text
    results = r.json()["pdus"]
    assert "signature" in results[forged_id]["error"]
    assert "65536" in results[big_id]["error"]
    assert "error" in results[stranger_id]
    assert "error" in results[topic_id]
    assert bodies(room.timeline()) == []
    topic_now = requests.get(
        ours.process.url(f"/_matrix/client/v3/rooms/{quote(room.room_id)}/state/m.room.topic/"),
        headers=room.headers,
        timeout=10,
    )
    assert topic_now.status_code == 404 or topic_now.json().get("topic") != "hijacked"
    # A rejected event is not served.
    assert fed_get(ours, remote, f"/_matrix/federation/v1/event/{quote(topic_id)}").status_code == 404
    # A malformed transaction is refused as a whole.
    bad = send_txn(ours, remote, "r-malformed", "nope")  # type: ignore[arg-type]
    assert bad.status_code == 400 and bad.json()["errcode"] == "M_BAD_JSON"


def test_a_message_built_on_state_from_before_a_ban_is_soft_failed(
    ours: FederatedServer, remote: FakeRemote
) -> None:
    room = Room(ours, "alice_ban")
    user, join_id, join = room.join(remote, "x")
    send_txn(ours, remote, "b-join", [join])
    other, other_id, other_join = room.join(remote, "w")
    send_txn(ours, remote, "b-join-w", [other_join])
    r = requests.post(
        ours.process.url(f"/_matrix/client/v3/rooms/{quote(room.room_id)}/ban"),
        json={"user_id": user},
        headers=room.headers,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    # x has not heard of the ban: its message names w's join as prev and its own join as auth.
    late_id, late = room.message(
        remote,
        user,
        "after the ban",
        [other_id],
        auth=[room.state_id("m.room.create"), room.state_id("m.room.power_levels"), join_id],
    )
    r = send_txn(ours, remote, "b-late", [late])
    assert r.json() == {"pdus": {late_id: {}}}  # soft-failed: accepted by the transaction, never shown
    assert "after the ban" not in bodies(room.sync_timeline())
    # Not a forward extremity: the next local event does not build on it.
    local = room.send("still here")
    ev = fed_get(ours, remote, f"/_matrix/federation/v1/event/{quote(local)}").json()["pdus"][0]
    assert late_id not in ev["prev_events"]
    # Nor served as an event of the room.
    assert fed_get(ours, remote, f"/_matrix/federation/v1/event/{quote(late_id)}").status_code == 404


def test_missing_prev_events_are_fetched_and_forks_are_merged(
    ours: FederatedServer, remote: FakeRemote
) -> None:
    room = Room(ours, "alice_gap")
    user, join_id, join = room.join(remote, "x")
    send_txn(ours, remote, "g-join", [join])
    m1_id, m1 = room.message(remote, user, "g1", [join_id])
    m2_id, m2 = room.message(remote, user, "g2", [m1_id])
    m3_id, m3 = room.message(remote, user, "g3", [m2_id])
    remote.missing = [m2, m1]
    r = send_txn(ours, remote, "g-gap", [m3])
    remote.missing = []
    assert r.json() == {"pdus": {m3_id: {}}}
    assert any(q.startswith("POST /_matrix/federation/v1/get_missing_events/") for q in remote.requests)
    assert bodies(room.sync_timeline()) == ["g1", "g2", "g3"]
    # A fork: a local message and a remote one both built on g3; the next local event
    # names both as prev_events.
    local = room.send("local branch")
    f_id, fork = room.message(remote, user, "remote branch", [m3_id])
    assert send_txn(ours, remote, "g-fork", [fork]).json() == {"pdus": {f_id: {}}}
    merge = room.send("merge")
    ev = fed_get(ours, remote, f"/_matrix/federation/v1/event/{quote(merge)}").json()["pdus"][0]
    assert sorted(ev["prev_events"]) == sorted([local, f_id])
    assert bodies(room.timeline())[-3:] == ["local branch", "remote branch", "merge"]


def test_unknown_auth_events_come_from_event_auth(ours: FederatedServer, remote: FakeRemote) -> None:
    room = Room(ours, "alice_auth")
    user, join_id, join = room.join(remote, "x")
    send_txn(ours, remote, "a-join", [join])
    # x changes its display name on its side; we never get that event in a transaction.
    room.depth += 1
    rename_id, rename = remote.pdu(
        room.room_id,
        user,
        "m.room.member",
        {"membership": "join", "displayname": "X"},
        [join_id],
        [
            room.state_id("m.room.create"),
            room.state_id("m.room.join_rules"),
            room.state_id("m.room.power_levels"),
            join_id,
        ],
        room.depth,
        state_key=user,
    )
    msg_id, msg = room.message(
        remote,
        user,
        "renamed",
        [rename_id],
        auth=[room.state_id("m.room.create"), room.state_id("m.room.power_levels"), rename_id],
    )
    remote.auth_chain = [rename, join]
    remote.missing = []
    r = send_txn(ours, remote, "a-msg", [msg])
    remote.auth_chain = []
    assert r.json() == {"pdus": {msg_id: {}}}
    assert any(q.startswith("GET /_matrix/federation/v1/event_auth/") for q in remote.requests)
    assert "renamed" in bodies(room.sync_timeline())


def test_events_are_served_to_servers_in_the_room(ours: FederatedServer, remote: FakeRemote) -> None:
    room = Room(ours, "alice_serve")
    first = room.send("before")
    other = FakeRemote(ours.ca)
    try:
        # Before anyone of its joins: 403.
        r = fed_get(
            ours, remote, f"/_matrix/federation/v1/state_ids/{quote(room.room_id)}?event_id={quote(first)}"
        )
        assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"
        user, join_id, join = room.join(remote, "x")
        send_txn(ours, remote, "s-join", [join])
        msg = room.send("served")
        r = fed_get(
            ours, remote, f"/_matrix/federation/v1/state_ids/{quote(room.room_id)}?event_id={quote(msg)}"
        )
        assert r.status_code == 200, r.text
        assert join_id in r.json()["pdu_ids"] and room.state_id("m.room.create") in r.json()["pdu_ids"]
        state = fed_get(
            ours, remote, f"/_matrix/federation/v1/state/{quote(room.room_id)}?event_id={quote(msg)}"
        ).json()
        assert {compute_event_id(p, V10) for p in state["pdus"]} == set(r.json()["pdu_ids"])
        auth = fed_get(
            ours, remote, f"/_matrix/federation/v1/event_auth/{quote(room.room_id)}/{quote(msg)}"
        ).json()
        assert room.state_id("m.room.create") in {compute_event_id(p, V10) for p in auth["auth_chain"]}
        back = fed_get(
            ours, remote, f"/_matrix/federation/v1/backfill/{quote(room.room_id)}?v={quote(msg)}&limit=3"
        ).json()
        assert [compute_event_id(p, V10) for p in back["pdus"]][:3] == [msg, join_id, first]
        missing = fed_get(
            ours,
            remote,
            f"/_matrix/federation/v1/get_missing_events/{quote(room.room_id)}",
            "POST",
            {"earliest_events": [first], "latest_events": [msg], "limit": 10},
        ).json()
        assert [compute_event_id(p, V10) for p in missing["events"]] == [join_id]
        bad = fed_get(
            ours,
            remote,
            f"/_matrix/federation/v1/get_missing_events/{quote(room.room_id)}",
            "POST",
            {"latest_events": 3},
        )
        assert bad.status_code == 400 and bad.json()["errcode"] == "M_BAD_JSON"
        # A server with no one in the room is refused, and fetching its key works.
        r = fed_get(ours, other, f"/_matrix/federation/v1/event/{quote(msg)}")
        assert r.status_code == 403
    finally:
        other.stop()


def test_an_auth_chain_reaching_into_another_room_is_rejected(
    ours: FederatedServer, remote: FakeRemote
) -> None:
    # (A loop in auth_events cannot be built with reference-hash event IDs; the event layer
    # refuses one anyway: tests/fast/test_pdu_checks.py.)
    room = Room(ours, "alice_chain")
    elsewhere = Room(ours, "alice_chain_other")
    user, join_id, join = room.join(remote, "x")
    send_txn(ours, remote, "c-join", [join])
    other_pl = elsewhere.state_id("m.room.power_levels")
    msg_id, msg = room.message(
        remote, user, "cross-room", [join_id], auth=[room.state_id("m.room.create"), other_pl, join_id]
    )
    r = send_txn(ours, remote, "c-msg", [msg])
    assert "error" in r.json()["pdus"][msg_id]
    assert "cross-room" not in bodies(room.timeline())


def test_a_state_fork_is_resolved_into_the_current_state(ours: FederatedServer, remote: FakeRemote) -> None:
    room = Room(ours, "alice_statefork")
    user, join_id, join = room.join(remote, "x")
    send_txn(ours, remote, "sf-join", [join])
    url = ours.process.url(f"/_matrix/client/v3/rooms/{quote(room.room_id)}/state")
    levels = requests.get(f"{url}/m.room.power_levels/", headers=room.headers, timeout=10).json()
    levels["users"][user] = 50
    r = requests.put(f"{url}/m.room.power_levels/", json=levels, headers=room.headers, timeout=10)
    assert r.status_code == 200, r.text
    levels_id = r.json()["event_id"]
    # Both sides set the topic on top of the new power levels, ours first.
    r = requests.put(f"{url}/m.room.topic/", json={"topic": "ours"}, headers=room.headers, timeout=10)
    assert r.status_code == 200, r.text
    # The remote's topic is later: the tie-break of equal mainline positions.
    ours_ts = room.ts_of(r.json()["event_id"])
    room.depth += 1
    topic_id, topic = remote.pdu(
        room.room_id,
        user,
        "m.room.topic",
        {"topic": "theirs"},
        [levels_id],
        [room.state_id("m.room.create"), levels_id, join_id],
        room.depth,
        state_key="",
        ts=ours_ts + 1,
    )
    assert send_txn(ours, remote, "sf-topic", [topic]).json() == {"pdus": {topic_id: {}}}
    now = requests.get(f"{url}/m.room.topic/", headers=room.headers, timeout=10).json()
    assert now == {"topic": "theirs"}
    # The merged head goes on: a local event after it sees the resolved state.
    room.send("after the merge")
    assert room.state_id("m.room.topic") == topic_id
    # And the other way: a remote topic made before ours (an earlier timestamp) arrives after
    # it. It is accepted into the timeline, but the resolution keeps ours as the topic.
    base = room.latest()
    room.depth += 1
    early_id, early = remote.pdu(
        room.room_id,
        user,
        "m.room.topic",
        {"topic": "theirs, earlier"},
        [base],
        [room.state_id("m.room.create"), levels_id, join_id],
        room.depth,
        state_key="",
        ts=room.ts_of(base) - 1,  # before anything made after `base`, "ours, later" among them
    )
    r = requests.put(f"{url}/m.room.topic/", json={"topic": "ours, later"}, headers=room.headers, timeout=10)
    assert r.status_code == 200, r.text
    assert send_txn(ours, remote, "sf-early", [early]).json() == {"pdus": {early_id: {}}}
    assert "theirs, earlier" in [e["content"].get("topic") for e in room.timeline()]
    now = requests.get(f"{url}/m.room.topic/", headers=room.headers, timeout=10).json()
    assert now == {"topic": "ours, later"}


def test_history_a_server_may_not_see_is_served_redacted(ours: FederatedServer, remote: FakeRemote) -> None:
    room = Room(ours, "alice_hidden")
    url = ours.process.url(f"/_matrix/client/v3/rooms/{quote(room.room_id)}/state/m.room.history_visibility/")
    r = requests.put(url, json={"history_visibility": "joined"}, headers=room.headers, timeout=10)
    assert r.status_code == 200, r.text
    secret = room.send("before you came")
    user, join_id, join = room.join(remote, "x")
    send_txn(ours, remote, "h-join", [join])
    seen = room.send("after you came")
    back = fed_get(
        ours, remote, f"/_matrix/federation/v1/backfill/{quote(room.room_id)}?v={quote(seen)}&limit=4"
    )
    pdus = {compute_event_id(p, V10): p for p in back.json()["pdus"]}
    assert pdus[seen]["content"]["body"] == "after you came"
    assert pdus[secret]["content"] == {}  # redacted: the DAG without the content
    assert (
        fed_get(ours, remote, f"/_matrix/federation/v1/event/{quote(secret)}").json()["pdus"][0]["content"]
        == {}
    )


def test_a_gap_is_crossed_with_the_state_the_origin_gives(ours: FederatedServer, remote: FakeRemote) -> None:
    """x was kicked on the remote's side in events we never got, and get_missing_events
    does not close the gap: the state at the gap, from /state_ids and /event, rejects x's
    next message, which its own auth events and our current state would allow."""
    room = Room(ours, "alice_gapstate")
    x, x_join_id, x_join = room.join(remote, "x")
    send_txn(ours, remote, "gs-x", [x_join])
    k, k_join_id, k_join = room.join(remote, "k")
    send_txn(ours, remote, "gs-k", [k_join])
    url = ours.process.url(f"/_matrix/client/v3/rooms/{quote(room.room_id)}/state")
    levels = requests.get(f"{url}/m.room.power_levels/", headers=room.headers, timeout=10).json()
    levels["users"][k] = 50
    r = requests.put(f"{url}/m.room.power_levels/", json=levels, headers=room.headers, timeout=10)
    levels_id = r.json()["event_id"]
    create_id = room.state_id("m.room.create")
    room.depth += 1
    kick_id, kick = remote.pdu(
        room.room_id,
        k,
        "m.room.member",
        {"membership": "leave"},
        [levels_id],
        [create_id, levels_id, k_join_id, x_join_id],
        room.depth,
        state_key=x,
    )
    p_id, p = room.message(remote, k, "k talks", [kick_id], auth=[create_id, levels_id, k_join_id])
    e_id, e = room.message(remote, x, "kicked, still talking", [p_id], auth=[create_id, levels_id, x_join_id])
    state = requests.get(url, headers=room.headers, timeout=10).json()
    before_p = [ev["event_id"] for ev in state if (ev["type"], ev["state_key"]) != ("m.room.member", x)] + [
        kick_id
    ]
    remote.missing = []
    remote.state_ids = {"pdu_ids": before_p, "auth_chain_ids": []}
    remote.events = {kick_id: kick, p_id: p}
    try:
        r = send_txn(ours, remote, "gs-e", [e])
    finally:
        remote.state_ids, remote.events = {}, {}
    assert any(q.startswith("GET /_matrix/federation/v1/state_ids/") for q in remote.requests)
    assert "state before it" in r.json()["pdus"][e_id]["error"]
    assert "kicked, still talking" not in bodies(room.sync_timeline())
