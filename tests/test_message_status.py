"""Message status (sent -> delivered -> read), chats and groups of the simple API
(/api/messages, /api/chats, /api/groups) together with Matrix /sync and receipts."""

from __future__ import annotations

import itertools
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
_txn = itertools.count()


class Client:
    def __init__(self, server: ServerProcess, registered: dict[str, Any]) -> None:
        self.server = server
        self.user_id: str = registered["user_id"]
        self.token: str = registered["access_token"]
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.server.url(path), **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    # Simple API

    def send_message(
        self, content: Any, *, to: str | None = None, chat_id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"content": content}
        if to is not None:
            body["receiverId"] = to
        if chat_id is not None:
            body["chatId"] = chat_id
        return dict(self.ok("POST", "/api/messages/send", status=201, json=body))

    def messages(self, chat_id: str, **params: Any) -> list[dict[str, Any]]:
        """The first spec's answer: a bare array of messages, newest first."""
        return list(self.ok("GET", f"/api/messages/{chat_id}", params=params))

    def messages_page(self, url: str) -> tuple[list[dict[str, Any]], str | None]:
        """One page and the absolute URL of the next (older) one, from the `Link` header."""
        r = self.session.get(url, timeout=60)
        assert r.status_code == 200, r.text
        return list(r.json()), r.links.get("next", {}).get("url")

    def status(self, chat_id: str, message_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/api/messages/{chat_id}/{message_id}/status"))

    def chats(self) -> list[dict[str, Any]]:
        return list(self.ok("GET", "/api/chats")["chats"])

    # Matrix

    def join(self, room_id: str) -> None:
        self.ok("POST", f"{CS}/join/{room_id}", json={})

    def sync(self, since: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": str(timeout_ms)}
        if since:
            params["since"] = since
        return dict(self.ok("GET", f"{CS}/sync", params=params))

    def receipt(self, room_id: str, event_id: str) -> None:
        self.ok("POST", f"{CS}/rooms/{room_id}/receipt/m.read/{event_id}", json={})


def new_client(server: ServerProcess, prefix: str) -> Client:
    return Client(server, server.register(f"{prefix}_{secrets.token_hex(4)}"))


def timeline_ids(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync["rooms"]["join"].get(room_id) or {}
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]


def breakdown(status: dict[str, Any]) -> dict[str, str]:
    return {r["userId"]: r["status"] for r in status["recipients"]}


def listed_status(client: Client, chat_id: str, message_id: str) -> str:
    found = [m for m in client.messages(chat_id) if m["messageId"] == message_id]
    assert len(found) == 1
    return str(found[0]["status"])


def test_direct_message_goes_sent_delivered_read(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    sent = alice.send_message("hello bob", to=bob.user_id)
    assert sent["status"] == "sent"
    chat_id, message_id = sent["chatId"], sent["messageId"]
    assert alice.status(chat_id, message_id) == {
        "messageId": message_id,
        "status": "sent",
        "recipients": [{"userId": bob.user_id, "status": "sent"}],
    }
    assert listed_status(alice, chat_id, message_id) == "sent"

    # Bob is only invited: a sync showing the invite does not deliver the message.
    first = bob.sync()
    assert chat_id in first["rooms"]["invite"]
    bob.sync(first["next_batch"])
    assert alice.status(chat_id, message_id)["status"] == "sent"

    bob.join(chat_id)
    got = bob.sync()
    assert message_id in timeline_ids(got, chat_id)
    # Served, but not yet proven received.
    assert alice.status(chat_id, message_id)["status"] == "sent"
    assert listed_status(alice, chat_id, message_id) == "sent"

    bob.sync(got["next_batch"])
    assert alice.status(chat_id, message_id) == {
        "messageId": message_id,
        "status": "delivered",
        "recipients": [{"userId": bob.user_id, "status": "delivered"}],
    }
    assert listed_status(alice, chat_id, message_id) == "delivered"

    bob.receipt(chat_id, message_id)
    assert alice.status(chat_id, message_id)["status"] == "read"
    assert breakdown(alice.status(chat_id, message_id)) == {bob.user_id: "read"}
    assert listed_status(alice, chat_id, message_id) == "read"
    # The recipient sees the same status of the message they read.
    assert bob.status(chat_id, message_id)["status"] == "read"

    # A newer message starts over at "sent", while the read one stays read.
    second = alice.send_message("again", chat_id=chat_id)
    assert alice.status(chat_id, second["messageId"])["status"] == "sent"
    assert alice.status(chat_id, message_id)["status"] == "read"
    # A long-poll that wakes for the message, then the next sync, delivers it.
    token = bob.sync()["next_batch"]
    third = alice.send_message("third", chat_id=chat_id)
    woke = bob.sync(token, timeout_ms=10_000)
    assert third["messageId"] in timeline_ids(woke, chat_id)
    assert alice.status(chat_id, third["messageId"])["status"] == "sent"
    bob.sync(woke["next_batch"])
    assert alice.status(chat_id, third["messageId"])["status"] == "delivered"
    assert alice.status(chat_id, second["messageId"])["status"] == "delivered"
    # Reading the newest one reads the older ones too.
    bob.receipt(chat_id, third["messageId"])
    assert alice.status(chat_id, second["messageId"])["status"] == "read"


def test_group_status_needs_every_member(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    carol = new_client(server, "carol")
    chat_id = alice.ok(
        "POST", "/api/groups", status=201, json={"name": "Three", "members": [bob.user_id, carol.user_id]}
    )["chatId"]
    bob.join(chat_id)
    carol.join(chat_id)
    sent = alice.send_message("hi both", chat_id=chat_id)
    message_id = sent["messageId"]
    assert breakdown(alice.status(chat_id, message_id)) == {bob.user_id: "sent", carol.user_id: "sent"}

    bob_sync = bob.sync()
    assert message_id in timeline_ids(bob_sync, chat_id)
    bob.sync(bob_sync["next_batch"])
    status = alice.status(chat_id, message_id)
    assert status["status"] == "sent"
    assert breakdown(status) == {bob.user_id: "delivered", carol.user_id: "sent"}

    bob.receipt(chat_id, message_id)
    status = alice.status(chat_id, message_id)
    assert status["status"] == "sent"
    assert breakdown(status) == {bob.user_id: "read", carol.user_id: "sent"}

    carol_sync = carol.sync()
    carol.sync(carol_sync["next_batch"])
    status = alice.status(chat_id, message_id)
    assert status["status"] == "delivered"
    assert breakdown(status) == {bob.user_id: "read", carol.user_id: "delivered"}
    assert listed_status(alice, chat_id, message_id) == "delivered"

    carol.receipt(chat_id, message_id)
    status = alice.status(chat_id, message_id)
    assert status["status"] == "read"
    assert breakdown(status) == {bob.user_id: "read", carol.user_id: "read"}
    # Any member may ask; the sender is never one of the recipients.
    assert breakdown(bob.status(chat_id, message_id)) == {bob.user_id: "read", carol.user_id: "read"}

    # A member added later is not a recipient of what was sent before they came.
    dave = new_client(server, "dave")
    alice.ok("POST", f"/api/groups/{chat_id}/members", json={"userId": dave.user_id})
    assert alice.status(chat_id, message_id)["status"] == "read"
    later = alice.send_message("with dave", chat_id=chat_id)["messageId"]
    assert set(breakdown(alice.status(chat_id, later))) == {bob.user_id, carol.user_id, dave.user_id}


def test_sender_id_must_be_the_authenticated_user(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    r = alice.request(
        "POST",
        "/api/messages/send",
        json={"senderId": bob.user_id, "receiverId": bob.user_id, "content": "forged"},
    )
    assert r.status_code == 403, r.text
    assert r.json()["errcode"] == "M_FORBIDDEN"
    assert alice.chats() == [] and bob.chats() == []
    # Naming yourself is fine.
    r = alice.request(
        "POST",
        "/api/messages/send",
        json={"senderId": alice.user_id, "receiverId": bob.user_id, "content": "real"},
    )
    assert r.status_code == 201, r.text


def test_first_message_creates_the_direct_chat_and_later_ones_reuse_it(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    assert alice.chats() == [] and bob.chats() == []
    first = alice.send_message("one", to=bob.user_id)
    chat_id = first["chatId"]
    for client in (alice, bob):
        chats = client.chats()
        assert [c["chatId"] for c in chats] == [chat_id], client.user_id
        assert chats[0]["isGroup"] is False
        assert {m["userId"] for m in chats[0]["members"]} == {alice.user_id, bob.user_id}
        assert chats[0]["lastMessage"] is None or chats[0]["lastMessage"]["messageId"] == first["messageId"]
    assert alice.chats()[0]["lastMessage"]["content"] == "one"

    second = alice.send_message("two", to=bob.user_id)
    assert second["chatId"] == chat_id
    # Bob answering by receiverId lands in the same chat as well.
    reply = bob.send_message("hi alice", to=alice.user_id)
    assert reply["chatId"] == chat_id
    assert [c["chatId"] for c in alice.chats()] == [chat_id]
    assert [m["content"] for m in alice.messages(chat_id)] == ["hi alice", "two", "one"]

    # Another user gets another chat.
    carol = new_client(server, "carol")
    other = alice.send_message("hi carol", to=carol.user_id)
    assert other["chatId"] != chat_id
    assert {c["chatId"] for c in alice.chats()} == {chat_id, other["chatId"]}
    assert [c["chatId"] for c in carol.chats()] == [other["chatId"]]
    # Newest conversation first.
    assert alice.chats()[0]["chatId"] == other["chatId"]


def chat_of(client: Client, chat_id: str) -> dict[str, Any]:
    return next(c for c in client.chats() if c["chatId"] == chat_id)


def test_a_direct_chat_stays_direct_for_both_after_the_receiver_joins(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    chat_id = alice.send_message("hi bob", to=bob.user_id)["chatId"]
    assert chat_of(bob, chat_id)["membership"] == "invite"
    bob.send_message("hi alice", chat_id=chat_id)  # answering in the chat joins it
    for client in (alice, bob):
        chat = chat_of(client, chat_id)
        assert chat["membership"] == "join", client.user_id
        assert chat["isGroup"] is False, client.user_id

    # A group stays a group once its members join.
    r = alice.request("POST", "/api/groups", json={"name": "Pair", "members": [bob.user_id]})
    group_id = r.json()["chatId"]
    bob.send_message("here", chat_id=group_id)
    assert chat_of(alice, group_id)["isGroup"] is True and chat_of(bob, group_id)["isGroup"] is True


def test_a_direct_chat_from_a_matrix_client_stays_direct_after_joining(server: ServerProcess) -> None:
    carol = new_client(server, "carol")
    bob = new_client(server, "bob")
    # Carol's client does what Element does: an is_direct invite, and the room in her m.direct.
    body = {"preset": "trusted_private_chat", "is_direct": True, "invite": [bob.user_id]}
    room_id = carol.ok("POST", f"{CS}/createRoom", json=body)["room_id"]
    carol.ok("PUT", f"{CS}/user/{carol.user_id}/account_data/m.direct", json={bob.user_id: [room_id]})
    assert chat_of(bob, room_id)["isGroup"] is False

    # Bob accepts over Matrix with a client that keeps no m.direct of its own.
    bob.join(room_id)
    assert chat_of(bob, room_id)["isGroup"] is False
    assert chat_of(carol, room_id)["isGroup"] is False
    # Bob's Matrix clients show it as a direct chat too.
    direct = bob.ok("GET", f"{CS}/user/{bob.user_id}/account_data/m.direct")
    assert direct == {carol.user_id: [room_id]}


def test_message_list_fields_order_and_pagination(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    sent = [alice.send_message(f"message {i}", to=bob.user_id) for i in range(7)]
    chat_id = sent[0]["chatId"]
    bob_msg = bob.send_message(
        {"msgtype": "m.text", "body": "rich", "format": "org.matrix.custom.html"}, chat_id=chat_id
    )

    messages = alice.messages(chat_id)
    assert [m["messageId"] for m in messages] == [bob_msg["messageId"]] + [
        s["messageId"] for s in reversed(sent)
    ]
    newest = messages[0]
    assert set(newest) >= {"messageId", "senderId", "content", "timestamp", "status"}
    assert newest["senderId"] == bob.user_id
    assert newest["content"] == {"msgtype": "m.text", "body": "rich", "format": "org.matrix.custom.html"}
    assert messages[1]["senderId"] == alice.user_id and messages[1]["content"] == "message 6"
    assert messages[1]["timestamp"] == sent[6]["timestamp"]
    assert messages[1]["timestampMs"] == sent[6]["timestampMs"]
    assert all(m["status"] in ("sent", "delivered", "read") for m in messages)
    # ISO 8601 in UTC to the millisecond, the same instant as `timestampMs`.
    for m in messages:
        moment = datetime.strptime(m["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert int(moment.timestamp() * 1000) == m["timestampMs"], m
    timestamps = [m["timestampMs"] for m in messages]
    assert timestamps == sorted(timestamps, reverse=True)

    # Pages of 3, following the `Link` header's next page, see every message once, newest first.
    seen: list[str] = []
    url: str | None = server.url(f"/api/messages/{chat_id}?limit=3")
    pages = 0
    while url is not None and pages < 10:
        page, url = alice.messages_page(url)
        pages += 1
        assert 1 <= len(page) <= 3
        seen += [m["messageId"] for m in page]
    assert pages == 3 and url is None
    assert seen == [m["messageId"] for m in messages]
    # The link carries `before` and `limit` as query parameters.
    first = alice.request("GET", f"/api/messages/{chat_id}", params={"limit": "3"})
    link = first.links["next"]["url"]
    assert link.startswith(server.url(f"/api/messages/{quote(chat_id, safe='')}?before="))
    assert link.endswith("&limit=3")
    assert "Link" in first.headers["Access-Control-Expose-Headers"]
    # Bob sees the same list.
    assert [m["messageId"] for m in bob.messages(chat_id)] == seen


def test_non_member_cannot_list_or_send(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    eve = new_client(server, "eve")
    sent = alice.send_message("private", to=bob.user_id)
    chat_id = sent["chatId"]
    attempts = [
        eve.request("GET", f"/api/messages/{chat_id}"),
        eve.request("GET", f"/api/messages/{chat_id}/{sent['messageId']}/status"),
        eve.request("POST", "/api/messages/send", json={"chatId": chat_id, "content": "let me in"}),
        eve.request("POST", f"/api/groups/{chat_id}/members", json={"userId": eve.user_id}),
        eve.request("GET", f"/api/messages/!nothere:{server.server_name}"),
    ]
    for r in attempts:
        assert r.status_code == 403, r.text
        assert r.json()["errcode"] == "M_FORBIDDEN"
        assert "private" not in r.text
    assert eve.chats() == []
    assert [m["content"] for m in alice.messages(chat_id)] == ["private"]


def test_group_membership_is_admin_only(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    carol = new_client(server, "carol")
    r = alice.request("POST", "/api/groups", json={"name": "Team", "members": [bob.user_id]})
    assert r.status_code == 201, r.text
    chat_id = r.json()["chatId"]
    chat = next(c for c in bob.chats() if c["chatId"] == chat_id)
    assert chat["name"] == "Team" and chat["isGroup"] is True
    # Bob joins by using the chat.
    bob.messages(chat_id)
    members = {m["userId"]: m for m in next(c for c in alice.chats() if c["chatId"] == chat_id)["members"]}
    assert members[alice.user_id]["isAdmin"] is True and members[bob.user_id]["isAdmin"] is False

    r = bob.request("POST", f"/api/groups/{chat_id}/members", json={"userId": carol.user_id})
    assert r.status_code == 403, r.text
    r = bob.request("DELETE", f"/api/groups/{chat_id}/members/{alice.user_id}")
    assert r.status_code == 403, r.text
    assert carol.chats() == []

    alice.ok("POST", f"/api/groups/{chat_id}/members", json={"userId": carol.user_id})
    assert [c["chatId"] for c in carol.chats()] == [chat_id]
    carol.send_message("hello team", chat_id=chat_id)
    r = carol.request("DELETE", f"/api/groups/{chat_id}/members/{bob.user_id}")
    assert r.status_code == 403, r.text

    alice.ok("DELETE", f"/api/groups/{chat_id}/members/{carol.user_id}")
    for r in (
        carol.request("GET", f"/api/messages/{chat_id}"),
        carol.request("POST", "/api/messages/send", json={"chatId": chat_id, "content": "still here?"}),
    ):
        assert r.status_code == 403, r.text
    assert carol.chats() == []
    members = {m["userId"] for m in next(c for c in alice.chats() if c["chatId"] == chat_id)["members"]}
    assert members == {alice.user_id, bob.user_id}
    # Bad input.
    assert alice.request("POST", "/api/groups", json={"name": "  ", "members": []}).status_code == 400
    assert alice.request("POST", "/api/groups", json={"members": []}).status_code == 400
    assert alice.request("POST", "/api/groups", json={"name": "x", "members": [1]}).status_code == 400


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import start_server_process

    # A thousand users' clients, each with its keep-alive connection, all from 127.0.0.1.
    overrides = {"rate_limits": {"enabled": False}, "listen": {"max_connections_per_ip": 100_000}}
    s = start_server_process(tmp_path_factory.mktemp("hs_big"), overrides)
    yield s
    s.stop()


def test_group_of_a_thousand_members(big_server: ServerProcess) -> None:
    """A group of 1,000 works end to end. How long each stage takes is measured by
    `python -m bench.big_group_micro` (docs/api.md, "Groups"), not here."""
    tag = secrets.token_hex(3)

    def register(i: int) -> Client:
        return Client(big_server, big_server.register(f"m{tag}_{i:04}"))

    with ThreadPoolExecutor(16) as pool:
        clients = list(pool.map(register, range(1000)))
    admin, members = clients[0], clients[1:]
    r = admin.request(
        "POST", "/api/groups", json={"name": "Everyone", "members": [c.user_id for c in members]}
    )
    assert r.status_code == 201, r.text
    chat_id = r.json()["chatId"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda c: c.join(chat_id), members))
    joined = admin.ok("GET", f"{CS}/rooms/{chat_id}/joined_members")["joined"]
    assert len(joined) == 1000

    reader = members[500]
    token = reader.sync()["next_batch"]
    sent = admin.send_message("hello, everyone", chat_id=chat_id)
    woke = reader.sync(token, timeout_ms=10_000)
    assert sent["messageId"] in timeline_ids(woke, chat_id)
    status = admin.status(chat_id, sent["messageId"])
    assert status["status"] == "sent"
    assert len(status["recipients"]) == 999
    assert {r["userId"] for r in status["recipients"]} == {c.user_id for c in members}
    reader.sync(woke["next_batch"])
    status = admin.status(chat_id, sent["messageId"])
    assert breakdown(status)[reader.user_id] == "delivered"
    assert status["status"] == "sent"
    # Listing the group's messages is fine with 999 recipients too.
    assert admin.messages(chat_id)[0]["messageId"] == sent["messageId"]


def test_a_token_from_the_future_delivers_nothing(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    chat_id = alice.send_message("first", to=bob.user_id)["chatId"]
    bob.join(chat_id)
    # A client holding a token past the server's position (a bug, or a reset server)...
    r = bob.request("GET", f"{CS}/sync", params={"since": "s999999999_0_0_0_0", "timeout": "0"})
    assert r.status_code in (200, 400), r.text
    # ...has not received what is sent after it.
    later = alice.send_message("later", chat_id=chat_id)
    assert alice.status(chat_id, later["messageId"])["status"] == "sent"
    got = bob.sync()
    assert later["messageId"] in timeline_ids(got, chat_id)
    assert alice.status(chat_id, later["messageId"])["status"] == "sent"
    bob.sync(got["next_batch"])
    assert alice.status(chat_id, later["messageId"])["status"] == "delivered"


def test_an_older_receipt_does_not_unread(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    first = alice.send_message("one", to=bob.user_id)
    chat_id = first["chatId"]
    bob.join(chat_id)
    second = alice.send_message("two", chat_id=chat_id)
    bob.receipt(chat_id, second["messageId"])
    bob.receipt(chat_id, first["messageId"])
    assert alice.status(chat_id, second["messageId"])["status"] == "read"
    assert alice.status(chat_id, first["messageId"])["status"] == "read"


def test_concurrent_first_messages_make_one_direct_chat(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    others = [new_client(server, f"friend{i}") for i in range(4)]
    barrier = threading.Barrier(10)

    def first_message(pair: tuple[Client, Client]) -> str:
        sender, receiver = pair
        barrier.wait(timeout=10)
        return str(sender.send_message(f"hi from {sender.user_id}", to=receiver.user_id)["chatId"])

    # Both write at once, alice several times, and alice starts chats with others meanwhile.
    pairs = [(alice, bob), (bob, alice), (alice, bob), (bob, alice), (alice, bob), (alice, bob)]
    pairs += [(alice, other) for other in others]
    with ThreadPoolExecutor(len(pairs)) as pool:
        chat_ids = list(pool.map(first_message, pairs))
    assert len(set(chat_ids[:6])) == 1, chat_ids
    assert len(set(chat_ids)) == 5
    assert {c["chatId"] for c in alice.chats()} == set(chat_ids)
    assert [c["chatId"] for c in bob.chats()] == [chat_ids[0]]
    # Every chat is still found afterwards: no m.direct entry was lost.
    for other, chat_id in zip(others, chat_ids[6:], strict=True):
        assert alice.send_message("again", to=other.user_id)["chatId"] == chat_id
        assert other.send_message("back", to=alice.user_id)["chatId"] == chat_id
    assert bob.send_message("again", to=alice.user_id)["chatId"] == chat_ids[0]
    assert len(alice.messages(chat_ids[0])) == 7
