"""PUT /rooms/{roomId}/send/{eventType}/{txnId} is idempotent per device (spec: Client-Server
API, "Transaction identifiers"), on both storage engines."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_user(server: ServerProcess) -> dict[str, Any]:
    return server.register("idem_" + secrets.token_hex(5))


def create_room(server: ServerProcess, token: str) -> str:
    r = requests.post(server.url(f"{CS}/createRoom"), json={}, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


def send(server: ServerProcess, token: str, room_id: str, txn_id: str, body: str) -> requests.Response:
    return requests.put(
        server.url(f"{CS}/rooms/{room_id}/send/m.room.message/{txn_id}"),
        json={"msgtype": "m.text", "body": body},
        headers=auth(token),
        timeout=20,
    )


def messages(server: ServerProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    r = requests.get(
        server.url(f"{CS}/rooms/{room_id}/messages"),
        params={"dir": "b", "limit": "100"},
        headers=auth(token),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [e for e in r.json()["chunk"] if e["type"] == "m.room.message"]


def test_same_txn_id_twice_gives_one_event(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    token = alice["access_token"]
    room_id = create_room(any_server, token)

    first = send(any_server, token, room_id, "txn-1", "hello")
    assert first.status_code == 200, first.text
    again = send(any_server, token, room_id, "txn-1", "hello")
    assert again.status_code == 200, again.text
    assert again.json()["event_id"] == first.json()["event_id"]
    # A retry with a different body is still the first request's answer.
    changed = send(any_server, token, room_id, "txn-1", "different")
    assert changed.status_code == 200, changed.text
    assert changed.json()["event_id"] == first.json()["event_id"]

    chunk = messages(any_server, token, room_id)
    assert [e["event_id"] for e in chunk] == [first.json()["event_id"]]
    assert chunk[0]["content"]["body"] == "hello"

    # A new txn id is a new event.
    other = send(any_server, token, room_id, "txn-2", "hello")
    assert other.status_code == 200 and other.json()["event_id"] != first.json()["event_id"]
    assert len(messages(any_server, token, room_id)) == 2


def test_same_txn_id_sent_concurrently_gives_one_event(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    token = alice["access_token"]
    room_id = create_room(any_server, token)
    barrier = threading.Barrier(10)

    def attempt(_: int) -> requests.Response:
        barrier.wait(timeout=10)
        return send(any_server, token, room_id, "concurrent-txn", "just once")

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(attempt, range(10)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    event_ids = {r.json()["event_id"] for r in responses}
    assert len(event_ids) == 1, event_ids
    chunk = messages(any_server, token, room_id)
    assert [e["event_id"] for e in chunk] == list(event_ids)

    # A later retry still answers with the same event.
    late = send(any_server, token, room_id, "concurrent-txn", "just once")
    assert late.json()["event_id"] in event_ids


def test_same_txn_id_from_another_device_is_another_event(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    localpart = alice["user_id"][1:].split(":")[0]
    phone = alice["access_token"]
    laptop = any_server.login(localpart)
    assert laptop["device_id"] != alice["device_id"]
    room_id = create_room(any_server, phone)

    a = send(any_server, phone, room_id, "shared-txn", "from phone")
    b = send(any_server, laptop["access_token"], room_id, "shared-txn", "from laptop")
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert a.json()["event_id"] != b.json()["event_id"]
    # Each device's retry maps to its own event.
    assert send(any_server, phone, room_id, "shared-txn", "x").json()["event_id"] == a.json()["event_id"]
    assert (
        send(any_server, laptop["access_token"], room_id, "shared-txn", "x").json()["event_id"]
        == b.json()["event_id"]
    )
    chunk = messages(any_server, phone, room_id)
    assert sorted(e["content"]["body"] for e in chunk) == ["from laptop", "from phone"]

    # Another user with the same txn id gets their own event too.
    bob = new_user(any_server)
    r = requests.post(
        any_server.url(f"{CS}/rooms/{room_id}/invite"),
        json={"user_id": bob["user_id"]},
        headers=auth(phone),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    r = requests.post(
        any_server.url(f"{CS}/rooms/{room_id}/join"), json={}, headers=auth(bob["access_token"]), timeout=10
    )
    assert r.status_code == 200, r.text
    c = send(any_server, bob["access_token"], room_id, "shared-txn", "from bob")
    assert c.status_code == 200 and c.json()["event_id"] not in (a.json()["event_id"], b.json()["event_id"])
    assert len(messages(any_server, phone, room_id)) == 3


def test_txn_id_is_echoed_only_to_the_sending_device(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    localpart = alice["user_id"][1:].split(":")[0]
    phone = alice["access_token"]
    laptop = any_server.login(localpart)["access_token"]
    room_id = create_room(any_server, phone)
    event_id = send(any_server, phone, room_id, "echo-txn", "echo").json()["event_id"]

    def timeline_event(token: str) -> dict[str, Any]:
        r = requests.get(any_server.url(f"{CS}/sync"), headers=auth(token), timeout=10)
        assert r.status_code == 200, r.text
        events = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
        return next(e for e in events if e["event_id"] == event_id)

    assert timeline_event(phone).get("unsigned", {}).get("transaction_id") == "echo-txn"
    assert "transaction_id" not in timeline_event(laptop).get("unsigned", {})


def test_same_txn_id_in_another_room_is_another_event(server: ServerProcess) -> None:
    """Spec: a retransmission is the same txn id on the same endpoint; another room is another endpoint."""
    alice = new_user(server)
    token = alice["access_token"]
    first_room, second_room = create_room(server, token), create_room(server, token)
    a = send(server, token, first_room, "per-room-txn", "to the first room")
    b = send(server, token, second_room, "per-room-txn", "to the second room")
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert [e["content"]["body"] for e in messages(server, token, second_room)] == ["to the second room"]
    assert a.json()["event_id"] != b.json()["event_id"]


def test_redaction_txn_ids(any_server: ServerProcess) -> None:
    alice = new_user(any_server)
    token = alice["access_token"]
    room_id = create_room(any_server, token)
    target = send(any_server, token, room_id, "shared-id", "to redact").json()["event_id"]

    def redact(txn_id: str) -> requests.Response:
        return requests.put(
            any_server.url(f"{CS}/rooms/{room_id}/redact/{target}/{txn_id}"),
            json={"reason": "r"},
            headers=auth(token),
            timeout=10,
        )

    first = redact("shared-id")
    assert first.status_code == 200, first.text
    redaction = first.json()["event_id"]
    # The same txn id on another endpoint (send above) is another request...
    assert redaction != target
    # ...and on the same endpoint, the same one.
    assert redact("shared-id").json()["event_id"] == redaction
    r = requests.get(any_server.url(f"{CS}/sync"), headers=auth(token), timeout=10)
    events = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    echoed = next(e for e in events if e["event_id"] == redaction)
    assert echoed["unsigned"]["transaction_id"] == "shared-id"
    assert sum(e["type"] == "m.room.redaction" for e in events) == 1
