"""History visibility judged at each event, through every read of history, against a real
server on both engines: /messages, /context, /event, /relations and bundled aggregations,
/sync (initial, incremental, left rooms) and the simple API. Each test is a row of the
table in docs/architecture.md ("History visibility")."""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
_txn = itertools.count()


class Client:
    def __init__(self, server: ServerProcess, prefix: str) -> None:
        registered = server.register(f"{prefix}_{secrets.token_hex(4)}")
        self.server = server
        self.user_id: str = registered["user_id"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {registered['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 20)
        return self.session.request(method, self.server.url(path), **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, CS + path, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def ok_v1(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, "/_matrix/client/v1" + path, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def create_room(self, visibility: str, **body: Any) -> str:
        body.setdefault("preset", "public_chat")
        body["initial_state"] = [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": visibility},
            }
        ]
        return str(self.ok("POST", "/createRoom", json=body)["room_id"])

    def send(self, room_id: str, body: str, event_type: str = "m.room.message", **content: Any) -> str:
        content = (
            {"msgtype": "m.text", "body": body, **content} if event_type == "m.room.message" else content
        )
        path = f"/rooms/{room_id}/send/{event_type}/t{next(_txn)}"
        return str(self.ok("PUT", path, json=content)["event_id"])

    def set_visibility(self, room_id: str, visibility: str) -> str:
        path = f"/rooms/{room_id}/state/m.room.history_visibility/"
        return str(self.ok("PUT", path, json={"history_visibility": visibility})["event_id"])

    def member(self, action: str, room_id: str, user_id: str) -> None:
        self.ok("POST", f"/rooms/{room_id}/{action}", json={"user_id": user_id})

    def join(self, room_id: str) -> None:
        self.ok("POST", f"/join/{room_id}", json={})

    def leave(self, room_id: str) -> None:
        self.ok("POST", f"/rooms/{room_id}/leave", json={})

    def messages(self, room_id: str, **params: Any) -> list[dict[str, Any]]:
        params.setdefault("dir", "b")
        params.setdefault("limit", "100")
        return list(self.ok("GET", f"/rooms/{room_id}/messages", params=params)["chunk"])

    def message_ids(self, room_id: str) -> set[str]:
        return {ev["event_id"] for ev in self.messages(room_id)}

    def event_status(self, room_id: str, event_id: str) -> int:
        return self.request("GET", f"{CS}/rooms/{room_id}/event/{event_id}").status_code

    def sync(self, since: str | None = None, **params: Any) -> dict[str, Any]:
        if since:
            params["since"] = since
        params.setdefault("timeout", "0")
        return dict(self.ok("GET", "/sync", params=params))


def timeline(body: dict[str, Any], room_id: str, section: str = "join") -> set[str]:
    room = body["rooms"][section].get(room_id, {})
    return {ev["event_id"] for ev in room.get("timeline", {}).get("events", [])}


def member_event(viewer: Client, room_id: str, user_id: str, membership: str) -> str:
    """The id of the user's latest membership event of this kind, as `viewer` (a member) sees it."""
    found = [
        ev["event_id"]
        for ev in viewer.messages(room_id)
        if ev["type"] == "m.room.member"
        and ev["state_key"] == user_id
        and ev["content"]["membership"] == membership
    ]
    return found[0]


# The issue: judged by the setting in force when each event was sent -----------------------


def test_a_message_sent_while_joined_stays_hidden_after_the_setting_becomes_shared(
    any_server: ServerProcess,
) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("joined")
    secret = alice.send(room_id, "sent while joined-only")
    change = alice.set_visibility(room_id, "shared")
    later = alice.send(room_id, "sent while shared")
    bob.join(room_id)
    after_join = alice.send(room_id, "after bob joined")

    seen = bob.message_ids(room_id)
    assert secret not in seen
    assert {change, later, after_join} <= seen
    assert bob.event_status(room_id, secret) == 404
    assert bob.event_status(room_id, later) == 200
    r = bob.request("GET", f"{CS}/rooms/{room_id}/context/{secret}")
    assert r.status_code == 404, r.text
    context = bob.ok("GET", f"/rooms/{room_id}/context/{later}", params={"limit": "20"})
    assert secret not in {ev["event_id"] for ev in context["events_before"]}
    assert change in {ev["event_id"] for ev in context["events_before"]}
    # Paging one event at a time never lands on it either.
    token, paged = None, []
    for _ in range(30):
        params = {"dir": "b", "limit": "1", **({"from": token} if token else {})}
        page = bob.ok("GET", f"/rooms/{room_id}/messages", params=params)
        paged += [ev["event_id"] for ev in page["chunk"]]
        token = page.get("end")
        if token is None:
            break
    assert secret not in paged and later in paged
    # Alice, joined throughout, sees everything.
    assert {secret, change, later, after_join} <= alice.message_ids(room_id)


def test_sync_initial_and_incremental_for_a_user_joining_later(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("joined")
    secret = alice.send(room_id, "before")
    alice.set_visibility(room_id, "shared")
    later = alice.send(room_id, "after")
    token = bob.sync()["next_batch"]
    bob.join(room_id)

    incremental = timeline(bob.sync(token), room_id)  # a room joined inside the range
    initial = timeline(bob.sync(), room_id)
    for seen in (incremental, initial):
        assert later in seen and secret not in seen


def test_a_member_joined_before_since_sees_every_event_whatever_the_setting_does(
    any_server: ServerProcess,
) -> None:
    """The incremental fast path (no check) is right: joined at each event of the range."""
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("shared")
    bob.join(room_id)
    token = bob.sync()["next_batch"]
    change = alice.set_visibility(room_id, "joined")
    message = alice.send(room_id, "still visible to members")
    assert {change, message} <= timeline(bob.sync(token), room_id)
    assert {change, message} <= bob.message_ids(room_id)


# shared ----------------------------------------------------------------------------------


def test_shared_then_joined_hides_what_came_after_the_change(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("shared")
    open_message = alice.send(room_id, "shared")
    change = alice.set_visibility(room_id, "joined")
    closed = alice.send(room_id, "joined only")
    bob.join(room_id)
    seen = bob.message_ids(room_id)
    assert {open_message, change} <= seen  # bob joined after them: shared lets him see them
    assert closed not in seen

    # Left and back: what was sent meanwhile under `joined` stays hidden; the rest shows.
    bob.leave(room_id)
    gap = alice.send(room_id, "while bob was away")
    bob.join(room_id)
    seen = bob.message_ids(room_id)
    assert gap not in seen and closed not in seen
    assert open_message in seen


def test_a_member_who_left_sees_up_to_the_leave_and_nothing_after(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("shared")
    bob.join(room_id)
    token = bob.sync()["next_batch"]
    before = alice.send(room_id, "before the leave")
    bob.leave(room_id)
    after = alice.send(room_id, "after the leave")
    # Opened up later: what was sent while bob was out stays as it was (`shared`, no rejoin).
    alice.set_visibility(room_id, "world_readable")

    seen = bob.message_ids(room_id)
    assert before in seen and after not in seen
    assert member_event(alice, room_id, bob.user_id, "leave") in seen
    assert bob.event_status(room_id, after) == 404
    left = timeline(bob.sync(token), room_id, "leave")
    assert before in left and after not in left


def test_a_banned_member_sees_up_to_the_ban(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("shared")
    bob.join(room_id)
    before = alice.send(room_id, "before the ban")
    alice.member("ban", room_id, bob.user_id)
    after = alice.send(room_id, "after the ban")
    alice.set_visibility(room_id, "world_readable")
    seen = bob.message_ids(room_id)
    assert before in seen and after not in seen
    assert member_event(alice, room_id, bob.user_id, "ban") in seen
    assert bob.event_status(room_id, after) == 404


# invited ---------------------------------------------------------------------------------


def test_invited_shows_history_from_the_invite_on(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("invited")
    before_invite = alice.send(room_id, "before the invite")
    alice.member("invite", room_id, bob.user_id)
    while_invited = alice.send(room_id, "while invited")
    bob.join(room_id)
    joined = alice.send(room_id, "joined")
    alice.set_visibility(room_id, "shared")  # later: changes nothing of what came before
    seen = bob.message_ids(room_id)
    assert {while_invited, joined} <= seen
    assert before_invite not in seen
    assert member_event(alice, room_id, bob.user_id, "invite") in seen


def test_a_rejected_invite_shows_only_the_users_own_leave(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("joined")
    message = alice.send(room_id, "members only")
    alice.member("invite", room_id, bob.user_id)
    token = bob.sync()["next_batch"]
    bob.leave(room_id)  # rejects the invite
    alice.set_visibility(room_id, "shared")
    chunk = bob.messages(room_id)
    assert [(ev["type"], ev["state_key"], ev["content"]["membership"]) for ev in chunk] == [
        ("m.room.member", bob.user_id, "leave")
    ]
    assert message not in {ev["event_id"] for ev in chunk}
    left = bob.sync(token)["rooms"]["leave"][room_id]["timeline"]["events"]
    assert [ev["content"].get("membership") for ev in left] == ["leave"]


# joined, state events and one's own membership -------------------------------------------


def test_joined_hides_state_events_and_shows_the_users_own_join(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("joined")
    topic = alice.ok("PUT", f"/rooms/{room_id}/state/m.room.topic/", json={"topic": "before bob"})["event_id"]
    bob.join(room_id)
    new_topic = alice.ok("PUT", f"/rooms/{room_id}/state/m.room.topic/", json={"topic": "with bob"})[
        "event_id"
    ]
    alice.set_visibility(room_id, "shared")
    seen = bob.message_ids(room_id)
    assert topic not in seen and new_topic in seen
    assert member_event(alice, room_id, bob.user_id, "join") in seen
    # The current state is still the room's state (not history): bob sees the topic now.
    assert bob.ok("GET", f"/rooms/{room_id}/state/m.room.topic") == {"topic": "with bob"}


# world_readable --------------------------------------------------------------------------


def test_world_readable_events_are_readable_by_a_non_member(any_server: ServerProcess) -> None:
    alice, eve = Client(any_server, "alice"), Client(any_server, "eve")
    room_id = alice.create_room("joined")
    private = alice.send(room_id, "members only")
    change = alice.set_visibility(room_id, "world_readable")
    public = alice.send(room_id, "anyone")
    seen = eve.message_ids(room_id)
    assert {change, public} <= seen
    assert private not in seen
    assert eve.event_status(room_id, private) == 404
    assert eve.event_status(room_id, public) == 200


# Relations and bundled aggregations ------------------------------------------------------


def test_edits_and_reactions_sent_while_hidden_are_not_bundled_or_listed(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room_id = alice.create_room("shared")
    parent = alice.send(room_id, "original")
    alice.set_visibility(room_id, "joined")
    hidden_edit = alice.send(
        room_id,
        "* secret edit",
        **{
            "m.new_content": {"msgtype": "m.text", "body": "secret edit"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": parent},
        },
    )
    hidden_reaction = alice.send(
        room_id,
        "",
        "m.reaction",
        **{"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": "🙈"}},
    )
    alice.set_visibility(room_id, "shared")
    reaction = alice.send(
        room_id,
        "",
        "m.reaction",
        **{"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": "👍"}},
    )
    bob.join(room_id)

    relations = bob.ok_v1("GET", f"/rooms/{room_id}/relations/{parent}")["chunk"]
    assert [ev["event_id"] for ev in relations] == [reaction]
    for source in (
        [ev for ev in bob.messages(room_id) if ev["event_id"] == parent][0],
        bob.ok("GET", f"/rooms/{room_id}/event/{parent}"),
        bob.ok("GET", f"/rooms/{room_id}/context/{parent}")["event"],
    ):
        bundled = source.get("unsigned", {}).get("m.relations", {})
        assert "m.replace" not in bundled, source
        assert bundled["m.annotation"]["chunk"] == [{"type": "m.reaction", "key": "👍", "count": 1}]
    assert bob.event_status(room_id, hidden_edit) == 404
    assert bob.event_status(room_id, hidden_reaction) == 404
    r = bob.request("GET", f"/_matrix/client/v1/rooms/{room_id}/relations/{hidden_edit}")
    assert r.status_code == 404, r.text

    # Alice sees both, and the edit bundled.
    mine = alice.ok("GET", f"/rooms/{room_id}/event/{parent}")["unsigned"]["m.relations"]
    assert mine["m.replace"]["event_id"] == hidden_edit
    assert {c["key"]: c["count"] for c in mine["m.annotation"]["chunk"]} == {"🙈": 1, "👍": 1}


# The simple API --------------------------------------------------------------------------


def last_message(client: Client, chat_id: str) -> Any:
    r = client.request("GET", "/api/chats")
    assert r.status_code == 200, r.text
    return [c for c in r.json()["chats"] if c["chatId"] == chat_id][0]["lastMessage"]


def test_simple_api_history_list_and_status(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    r = alice.request("POST", "/api/groups", json={"name": "Team", "members": []})
    assert r.status_code == 201, r.text
    chat_id = r.json()["chatId"]
    alice.set_visibility(chat_id, "joined")
    r = alice.request("POST", "/api/messages/send", json={"chatId": chat_id, "content": "before bob"})
    assert r.status_code == 201, r.text
    secret = r.json()["messageId"]
    alice.set_visibility(chat_id, "shared")
    r = alice.request("POST", f"/api/groups/{chat_id}/members", json={"userId": bob.user_id})
    assert r.status_code == 200, r.text

    listed = bob.request("GET", f"/api/messages/{chat_id}")  # joins bob (first access)
    assert listed.status_code == 200, listed.text
    assert secret not in [m["messageId"] for m in listed.json()]
    status = bob.request("GET", f"/api/messages/{chat_id}/{secret}/status")
    assert status.status_code == 404, status.text
    assert last_message(bob, chat_id) is None  # the only message is one bob may not see
    r = alice.request("POST", "/api/messages/send", json={"chatId": chat_id, "content": "hello bob"})
    assert r.status_code == 201, r.text
    shared = r.json()["messageId"]
    assert last_message(bob, chat_id)["messageId"] == shared
    assert last_message(alice, chat_id)["messageId"] == shared
    assert shared in [m["messageId"] for m in bob.request("GET", f"/api/messages/{chat_id}").json()]
