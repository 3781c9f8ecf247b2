"""The simple API's everyday actions (docs/api.md): mark as read, edit and delete a message,
leave and rename a group, `createdAt` on chats and profiles, each against a real server, with
what a Matrix client sees of it and who may not do it (a non-member, a left member)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import requests
from conftest import ServerProcess
from test_message_status import CS, Client, new_client


def iso_ms(text: str) -> int:
    """An ISO 8601 UTC timestamp as the API writes it, in milliseconds since the epoch."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def error(r: requests.Response, status: int, errcode: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["errcode"] == errcode, r.text
    assert isinstance(r.json()["error"], str)


def chat_of(client: Client, chat_id: str) -> dict[str, Any] | None:
    return next((c for c in client.chats() if c["chatId"] == chat_id), None)


def group(admin: Client, name: str, *members: Client) -> str:
    body = {"name": name, "members": [m.user_id for m in members]}
    chat_id = str(admin.ok("POST", "/api/groups", status=201, json=body)["chatId"])
    for member in members:
        member.messages(chat_id)  # joins (first access)
    return chat_id


def matrix_event(client: Client, room_id: str, event_id: str) -> dict[str, Any]:
    return dict(client.ok("GET", f"{CS}/rooms/{room_id}/event/{event_id}"))


# Mark as read ---------------------------------------------------------------------------------


def test_mark_as_read_makes_messages_read_and_clears_the_unread_count(server: ServerProcess) -> None:
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    first = alice.send_message("one", to=bob.user_id)
    chat_id = first["chatId"]
    second = alice.send_message("two", chat_id=chat_id)
    bob.messages(chat_id)  # joins
    # Both messages count (and the invitation before them, as Matrix's push rules say).
    assert chat_of(bob, chat_id)["unreadCount"] >= 2  # type: ignore[index]

    # Up to a given message: that one is read, the newer one not.
    assert bob.ok("POST", f"/api/messages/{chat_id}/read", json={"messageId": first["messageId"]}) == {
        "chatId": chat_id,
        "messageId": first["messageId"],
    }
    assert alice.status(chat_id, first["messageId"])["status"] == "read"
    assert alice.status(chat_id, second["messageId"])["status"] != "read"
    assert chat_of(bob, chat_id)["unreadCount"] == 1  # type: ignore[index]

    # Without a body: up to the newest message.
    assert bob.ok("POST", f"/api/messages/{chat_id}/read")["messageId"] == second["messageId"]
    assert alice.status(chat_id, second["messageId"])["status"] == "read"
    assert [m["status"] for m in alice.messages(chat_id)] == ["read", "read"]
    assert chat_of(bob, chat_id)["unreadCount"] == 0  # type: ignore[index]
    # Matrix clients see the receipt and the fully-read marker.
    marker = bob.ok("GET", f"{CS}/user/{bob.user_id}/rooms/{chat_id}/account_data/m.fully_read")
    assert marker == {"event_id": second["messageId"]}


def test_mark_as_read_refuses_outsiders_and_bad_input(server: ServerProcess) -> None:
    alice, bob, eve = new_client(server, "alice"), new_client(server, "bob"), new_client(server, "eve")
    sent = alice.send_message("secret", to=bob.user_id)
    chat_id = sent["chatId"]
    path = f"/api/messages/{chat_id}/read"
    error(eve.request("POST", path, json={"messageId": sent["messageId"]}), 403, "M_FORBIDDEN")
    error(requests.post(server.url(path), json={}, timeout=10), 401, "M_MISSING_TOKEN")
    error(alice.request("POST", path, json={"messageId": 5}), 400, "M_BAD_JSON")
    error(alice.request("POST", path, json={"messageId": "$nothere"}), 404, "M_NOT_FOUND")
    # Only messages count: the room's creation event is no message.
    oldest = alice.ok("GET", f"{CS}/rooms/{chat_id}/messages", params={"dir": "f", "limit": "1"})["chunk"][0]
    assert oldest["type"] == "m.room.create"
    error(alice.request("POST", path, json={"messageId": oldest["event_id"]}), 404, "M_NOT_FOUND")
    # An empty chat has nothing to read.
    empty = group(alice, "Quiet")
    error(alice.request("POST", f"/api/messages/{empty}/read"), 404, "M_NOT_FOUND")
    # A left member may not either.
    bob.messages(chat_id)
    bob.ok("POST", f"/api/groups/{chat_id}/leave")
    error(bob.request("POST", path, json={"messageId": sent["messageId"]}), 403, "M_FORBIDDEN")
    assert alice.status(chat_id, sent["messageId"])["status"] != "read"


# Edit -----------------------------------------------------------------------------------------


def test_edit_shows_the_new_content_to_everyone(server: ServerProcess) -> None:
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    sent = alice.send_message("helo", to=bob.user_id)
    chat_id, message_id = sent["chatId"], sent["messageId"]
    edited = alice.ok("PUT", f"/api/messages/{chat_id}/{message_id}", json={"content": "hello"})
    assert edited["messageId"] == message_id and edited["chatId"] == chat_id
    assert iso_ms(edited["editedAt"]) >= sent["timestampMs"]

    for reader in (alice, bob):
        listed = reader.messages(chat_id)
        # One message, with its new content: the edit is no message of its own.
        assert [(m["messageId"], m["content"]) for m in listed] == [(message_id, "hello")]
        assert listed[0]["editedAt"] == edited["editedAt"]
        assert listed[0]["timestamp"] == sent["timestamp"]
    assert chat_of(bob, chat_id)["lastMessage"]["content"] == "hello"  # type: ignore[index]
    # A second edit wins; a rich content is shown whole.
    rich = {
        "msgtype": "m.text",
        "body": "hello!",
        "format": "org.matrix.custom.html",
        "formatted_body": "<b>hello!</b>",
    }
    alice.ok("PUT", f"/api/messages/{chat_id}/{message_id}", json={"content": rich})
    assert [m["content"] for m in bob.messages(chat_id)] == [rich]

    # A Matrix client sees an m.replace edit, bundled on the original.
    edit = matrix_event(bob, chat_id, edited["editId"])
    assert edit["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": message_id}
    assert edit["content"]["m.new_content"] == {"msgtype": "m.text", "body": "hello"}
    original = matrix_event(bob, chat_id, message_id)
    assert original["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"] == rich


def test_edit_is_for_the_sender_of_a_live_message_only(server: ServerProcess) -> None:
    alice, bob, eve = new_client(server, "alice"), new_client(server, "bob"), new_client(server, "eve")
    chat_id = group(alice, "Team", bob)
    sent = alice.send_message("mine", chat_id=chat_id)
    path = f"/api/messages/{chat_id}/{sent['messageId']}"
    error(bob.request("PUT", path, json={"content": "yours now"}), 403, "M_FORBIDDEN")
    error(eve.request("PUT", path, json={"content": "let me in"}), 403, "M_FORBIDDEN")
    error(requests.put(server.url(path), json={"content": "x"}, timeout=10), 401, "M_MISSING_TOKEN")
    error(alice.request("PUT", path, json={}), 400, "M_MISSING_PARAM")
    error(alice.request("PUT", path, json={"content": ""}), 400, "M_INVALID_PARAM")
    error(alice.request("PUT", path, json={"content": 3}), 400, "M_BAD_JSON")
    error(
        alice.request("PUT", f"/api/messages/{chat_id}/$nothere", json={"content": "x"}), 404, "M_NOT_FOUND"
    )
    # An edit is not itself editable (edit the message instead).
    edit_id = alice.ok("PUT", path, json={"content": "mine, edited"})["editId"]
    error(
        alice.request("PUT", f"/api/messages/{chat_id}/{edit_id}", json={"content": "x"}), 404, "M_NOT_FOUND"
    )
    # Nor is a deleted message.
    alice.ok("DELETE", path)
    error(alice.request("PUT", path, json={"content": "back"}), 400, "M_INVALID_PARAM")
    # A left member may not edit what they sent.
    theirs = bob.send_message("bob's", chat_id=chat_id)
    bob.ok("POST", f"/api/groups/{chat_id}/leave")
    r = bob.request("PUT", f"/api/messages/{chat_id}/{theirs['messageId']}", json={"content": "changed"})
    error(r, 403, "M_FORBIDDEN")
    assert [m["content"] for m in alice.messages(chat_id)][0] == "bob's"


def test_plaintext_edit_into_an_encrypted_chat_is_refused(server: ServerProcess) -> None:
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    payload = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgA",
        "sender_key": "k",
        "session_id": "s",
        "device_id": "D",
    }
    body = {"receiverId": bob.user_id, "content": payload, "encrypted": True}
    sent = alice.ok("POST", "/api/messages/send", status=201, json=body)
    path = f"/api/messages/{sent['chatId']}/{sent['messageId']}"
    error(alice.request("PUT", path, json={"content": "plain"}), 400, "M_BAD_JSON")
    edit_id = alice.ok("PUT", path, json={"content": {**payload, "ciphertext": "AwgB"}})["editId"]
    edit = matrix_event(alice, sent["chatId"], edit_id)
    # Encrypted, with the relation in the clear so the server bundles it (spec: Event replacements).
    assert edit["type"] == "m.room.encrypted"
    assert edit["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": sent["messageId"]}
    assert alice.messages(sent["chatId"])[0]["content"]["ciphertext"] == "AwgB"


# Delete ---------------------------------------------------------------------------------------


def test_delete_removes_the_content_for_everyone(server: ServerProcess) -> None:
    alice, bob, eve = new_client(server, "alice"), new_client(server, "bob"), new_client(server, "eve")
    chat_id = group(alice, "Team", bob)
    kept = alice.send_message("kept", chat_id=chat_id)
    gone = bob.send_message("oops", chat_id=chat_id)
    path = f"/api/messages/{chat_id}/{gone['messageId']}"
    error(eve.request("DELETE", path), 403, "M_FORBIDDEN")
    error(requests.delete(server.url(path), timeout=10), 401, "M_MISSING_TOKEN")
    # A member may not delete someone else's message; the sender and the group's admin may.
    error(bob.request("DELETE", f"/api/messages/{chat_id}/{kept['messageId']}"), 403, "M_FORBIDDEN")
    assert bob.ok("DELETE", path) == {}
    # Again from the same device: still 200, and no second redaction.
    assert bob.ok("DELETE", path) == {}

    for reader in (alice, bob):
        listed = {m["messageId"]: m for m in reader.messages(chat_id)}
        assert listed[gone["messageId"]]["content"] is None and listed[gone["messageId"]]["deleted"] is True
        assert listed[kept["messageId"]]["content"] == "kept" and "deleted" not in listed[kept["messageId"]]
    assert chat_of(alice, chat_id)["lastMessage"]["messageId"] == kept["messageId"]  # type: ignore[index]
    # Matrix clients see one redaction; the content is gone from the server.
    original = matrix_event(alice, chat_id, gone["messageId"])
    assert original["content"] == {}
    timeline = alice.ok("GET", f"{CS}/rooms/{chat_id}/messages", params={"dir": "b", "limit": "50"})["chunk"]
    assert [e["redacts"] for e in timeline if e["type"] == "m.room.redaction"] == [gone["messageId"]]

    alice.ok("DELETE", f"/api/messages/{chat_id}/{kept['messageId']}")
    error(alice.request("DELETE", f"/api/messages/{chat_id}/$nothere"), 404, "M_NOT_FOUND")
    bob.ok("POST", f"/api/groups/{chat_id}/leave")
    mine = alice.send_message("after bob left", chat_id=chat_id)
    error(bob.request("DELETE", f"/api/messages/{chat_id}/{mine['messageId']}"), 403, "M_FORBIDDEN")


def test_in_a_direct_chat_only_the_sender_deletes_a_message(server: ServerProcess) -> None:
    # Both people of a direct chat have the admins' power level (trusted_private_chat), and
    # neither is a group admin: each deletes only their own messages.
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    hers = alice.send_message("hello", to=bob.user_id)
    chat_id = hers["chatId"]
    bob.messages(chat_id)  # joins
    his = bob.send_message("hi", chat_id=chat_id)
    error(bob.request("DELETE", f"/api/messages/{chat_id}/{hers['messageId']}"), 403, "M_FORBIDDEN")
    error(alice.request("DELETE", f"/api/messages/{chat_id}/{his['messageId']}"), 403, "M_FORBIDDEN")
    listed = {m["messageId"]: m for m in alice.messages(chat_id)}
    assert listed[hers["messageId"]]["content"] == "hello" and listed[his["messageId"]]["content"] == "hi"
    assert bob.ok("DELETE", f"/api/messages/{chat_id}/{his['messageId']}") == {}
    assert {m["messageId"]: m for m in alice.messages(chat_id)}[his["messageId"]]["deleted"] is True


# Leave and rename -----------------------------------------------------------------------------


def test_leaving_a_group_ends_access(server: ServerProcess) -> None:
    alice, bob, eve = new_client(server, "alice"), new_client(server, "bob"), new_client(server, "eve")
    chat_id = group(alice, "Team", bob)
    alice.send_message("before", chat_id=chat_id)
    error(eve.request("POST", f"/api/groups/{chat_id}/leave"), 403, "M_FORBIDDEN")
    error(requests.post(server.url(f"/api/groups/{chat_id}/leave"), timeout=10), 401, "M_MISSING_TOKEN")

    assert bob.ok("POST", f"/api/groups/{chat_id}/leave") == {}
    assert chat_of(bob, chat_id) is None
    members = {m["userId"] for m in chat_of(alice, chat_id)["members"]}  # type: ignore[index]
    assert members == {alice.user_id}
    alice.send_message("after", chat_id=chat_id)
    for r in (
        bob.request("GET", f"/api/messages/{chat_id}"),
        bob.request("POST", "/api/messages/send", json={"chatId": chat_id, "content": "back?"}),
        bob.request("POST", f"/api/groups/{chat_id}/leave"),
    ):
        error(r, 403, "M_FORBIDDEN")
        assert "after" not in r.text
    # Matrix clients see a leave.
    member = alice.ok("GET", f"{CS}/rooms/{chat_id}/state/m.room.member/{bob.user_id}")
    assert member["membership"] == "leave"

    # Someone added but not yet in declines by leaving.
    carol = new_client(server, "carol")
    alice.ok("POST", f"/api/groups/{chat_id}/members", json={"userId": carol.user_id})
    carol.ok("POST", f"/api/groups/{chat_id}/leave")
    assert carol.chats() == []


def test_rename_is_for_admins_and_everyone_sees_it(server: ServerProcess) -> None:
    alice, bob, eve = new_client(server, "alice"), new_client(server, "bob"), new_client(server, "eve")
    chat_id = group(alice, "Team", bob)
    path = f"/api/groups/{chat_id}/name"
    assert alice.ok("PUT", path, json={"name": "  Dream team "}) == {}
    for client in (alice, bob):
        assert chat_of(client, chat_id)["name"] == "Dream team"  # type: ignore[index]
    assert alice.ok("GET", f"{CS}/rooms/{chat_id}/state/m.room.name/") == {"name": "Dream team"}

    error(bob.request("PUT", path, json={"name": "Bob's"}), 403, "M_FORBIDDEN")
    error(eve.request("PUT", path, json={"name": "Eve's"}), 403, "M_FORBIDDEN")
    error(requests.put(server.url(path), json={"name": "x"}, timeout=10), 401, "M_MISSING_TOKEN")
    error(alice.request("PUT", path, json={"name": "   "}), 400, "M_INVALID_PARAM")
    error(alice.request("PUT", path, json={"name": "x" * 256}), 400, "M_INVALID_PARAM")
    error(alice.request("PUT", path, json={"name": ["x"]}), 400, "M_BAD_JSON")
    error(alice.request("PUT", path, json={}), 400, "M_MISSING_PARAM")
    assert chat_of(bob, chat_id)["name"] == "Dream team"  # type: ignore[index]
    alice.ok("POST", f"/api/groups/{chat_id}/leave")
    error(alice.request("PUT", path, json={"name": "From outside"}), 403, "M_FORBIDDEN")


# createdAt ------------------------------------------------------------------------------------


def test_chats_carry_created_at_and_new_empty_chats_sort_by_it(server: ServerProcess) -> None:
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    before = int(time.time() * 1000)
    direct = alice.send_message("hi", to=bob.user_id)["chatId"]
    empty = group(alice, "Later")
    after = int(time.time() * 1000)
    chats = alice.chats()
    for chat in chats:
        assert before - 1000 <= chat["createdAtMs"] <= after + 1000
        assert iso_ms(chat["createdAt"]) == chat["createdAtMs"]
        assert chat["createdAt"].endswith("Z")
    created = {c["chatId"]: c["createdAtMs"] for c in chats}
    assert created[direct] <= created[empty]
    # The group (created after the direct chat's last message, and holding none) comes first.
    assert [c["chatId"] for c in chats] == [empty, direct]
    assert chat_of(bob, direct)["createdAt"] == chat_of(alice, direct)["createdAt"]  # type: ignore[index]


# Profiles -------------------------------------------------------------------------------------


def test_profile_shows_name_avatar_and_last_seen(server: ServerProcess) -> None:
    alice, bob = new_client(server, "alice"), new_client(server, "bob")
    mxc = f"mxc://{server.server_name}/AvatarMediaId0123"
    mine = alice.ok("PUT", "/api/profile", json={"displayName": "Alice A.", "avatarContentUri": mxc})
    assert mine["displayName"] == "Alice A." and mine["avatarContentUri"] == mxc
    # The avatar as an absolute, authenticated download URL.
    assert mine["avatarUrl"] == server.url(
        f"/_matrix/client/v1/media/download/{server.server_name}/AvatarMediaId0123"
    )
    assert alice.ok("GET", "/api/profile") == mine

    # Never seen online: no last seen.
    seen_by_bob = bob.ok("GET", f"/api/profile/{alice.user_id}")
    assert seen_by_bob["userId"] == alice.user_id and seen_by_bob["displayName"] == "Alice A."
    assert (seen_by_bob["isOnline"], seen_by_bob["lastSeen"], seen_by_bob["lastSeenMs"]) == (
        False,
        None,
        None,
    )
    # A sync makes her online, seen now.
    start = int(time.time() * 1000)
    alice.sync()
    seen_by_bob = bob.ok("GET", f"/api/profile/{alice.user_id}")
    assert seen_by_bob["isOnline"] is True
    assert start - 1000 <= seen_by_bob["lastSeenMs"] <= int(time.time() * 1000) + 1000
    assert iso_ms(seen_by_bob["lastSeen"]) == seen_by_bob["lastSeenMs"]
    # Matrix clients see the same profile.
    assert bob.ok("GET", f"{CS}/profile/{alice.user_id}") == {"displayname": "Alice A.", "avatar_url": mxc}
    # Clearing a field.
    cleared = alice.ok("PUT", "/api/profile", json={"avatarContentUri": None})
    assert (cleared["avatarContentUri"], cleared["avatarUrl"], cleared["displayName"]) == (
        None,
        None,
        "Alice A.",
    )


def test_profile_bad_input_and_authorisation(server: ServerProcess) -> None:
    alice = new_client(server, "alice")
    error(requests.get(server.url("/api/profile"), timeout=10), 401, "M_MISSING_TOKEN")
    error(requests.get(server.url(f"/api/profile/{alice.user_id}"), timeout=10), 401, "M_MISSING_TOKEN")
    error(
        requests.put(server.url("/api/profile"), json={"displayName": "x"}, timeout=10),
        401,
        "M_MISSING_TOKEN",
    )
    error(alice.request("GET", f"/api/profile/@nobody:{server.server_name}"), 404, "M_NOT_FOUND")
    error(alice.request("GET", "/api/profile/not-a-user-id"), 400, "M_INVALID_PARAM")
    error(
        alice.request("PUT", "/api/profile", json={"avatarContentUri": "https://example.com/a.png"}),
        400,
        "M_BAD_JSON",
    )
    error(alice.request("PUT", "/api/profile", json={"displayName": 7}), 400, "M_BAD_JSON")
    error(alice.request("PUT", "/api/profile", json={"nickname": "al"}), 400, "M_BAD_JSON")
    error(alice.request("PUT", "/api/profile", json={}), 400, "M_MISSING_PARAM")
    assert alice.ok("GET", "/api/profile")["displayName"] != 7
