"""What simplified sliding sync (MSC4186) shows of a room to someone not joined to it: a
user banned before ever joining, or whose knock was turned down, gets their own
membership and what history visibility lets them see, never the room's state (its
name, topic and members) as its members see it; a former member gets the room as it
was when they left, not what changed after."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server, room_path

from homeserver.core import sliding_sync

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
EVERYTHING = {"required_state": [["*", "*"]], "timeline_limit": 20}


async def ss(client: Client, token: str, body: dict[str, Any], pos: str | None = None) -> dict[str, Any]:
    params = {"timeout": "0"}
    if pos is not None:
        params["pos"] = pos
    status, answer = await client.start("POST", PATH, token, body, **params)
    assert status == 200, answer
    return answer


async def state(client: Client, token: str, room: str, event_type: str, content: dict[str, Any]) -> None:
    await client.call("PUT", f"{room_path(room)}/state/{event_type}/", token, content)


async def say(client: Client, token: str, room: str, text: str) -> None:
    path = f"{room_path(room)}/send/m.room.message/{secrets.token_hex(4)}"
    await client.call("PUT", path, token, {"msgtype": "m.text", "body": text})


def shown(entry: dict[str, Any]) -> set[tuple[str, str]]:
    return {(ev["type"], ev["state_key"]) for ev in entry["required_state"]}


@pytest_twisted.ensureDeferred
async def test_a_user_banned_before_joining_does_not_get_the_rooms_state(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        eve = await client.register(hs, "eve")
        a = alice["access_token"]
        body = {"name": "Secret plans", "topic": "the plan"}
        room = (await client.call("POST", "/createRoom", a, body))["room_id"]
        await say(client, a, room, "secret")
        await client.call("POST", f"{room_path(room)}/ban", a, {"user_id": eve["user_id"]})

        answer = await ss(client, eve["access_token"], {"room_subscriptions": {room: EVERYTHING}})
        entry = answer["rooms"][room]
        assert shown(entry) == {("m.room.member", eve["user_id"])}
        assert [ev["content"]["membership"] for ev in entry["timeline"]] == ["ban"]
        assert "name" not in entry and entry["heroes"] == [] and entry["joined_count"] == 0
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_turned_down_knock_does_not_reveal_the_rooms_state(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        a, b = alice["access_token"], bob["access_token"]
        rules = [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
        room = (
            await client.call("POST", "/createRoom", a, {"initial_state": rules, "topic": "members only"})
        )["room_id"]
        request = {"lists": {"all": {"ranges": [[0, 10]], **EVERYTHING}}}
        first = await ss(client, b, request)
        await client.call("POST", f"/knock/{room}", b, {})
        knocked = await ss(client, b, request, first["pos"])
        assert "invite_state" in knocked["rooms"][room]
        # Alice turns the knock down.
        await client.call("POST", f"{room_path(room)}/kick", a, {"user_id": bob["user_id"]})

        turned_down = (await ss(client, b, request, knocked["pos"]))["rooms"][room]
        assert shown(turned_down) == {("m.room.member", bob["user_id"])}
        assert turned_down["timeline"][-1]["content"]["membership"] == "leave"
        assert turned_down["heroes"] == [] and turned_down["joined_count"] == 0
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_former_member_gets_the_room_as_it_was_when_they_left(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        a, b = alice["access_token"], bob["access_token"]
        await state(client, a, room, "m.room.name", {"name": "Old name"})
        await client.call("POST", f"{room_path(room)}/leave", b, {})
        await state(client, a, room, "m.room.topic", {"topic": "after bob left"})

        entry = (await ss(client, b, {"room_subscriptions": {room: EVERYTHING}}))["rooms"][room]
        assert ("m.room.create", "") in shown(entry) and ("m.room.member", alice["user_id"]) in shown(entry)
        assert ("m.room.topic", "") not in shown(entry)
        assert entry["name"] == "Old name" and entry["joined_count"] == 1

        # Invited back, he declines: what changed while he was away stays hidden.
        await state(client, a, room, "m.room.name", {"name": "New name"})
        await client.call("POST", f"{room_path(room)}/invite", a, {"user_id": bob["user_id"]})
        await client.call("POST", f"{room_path(room)}/leave", b, {})
        entry = (await ss(client, b, {"room_subscriptions": {room: EVERYTHING}}))["rooms"][room]
        assert ("m.room.topic", "") not in shown(entry) and ("m.room.name", "") not in shown(entry)
        assert "name" not in entry
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_required_state_across_lists_is_bounded_and_merged(tmp_path: Path) -> None:
    """A room in several lists gets the union of their required_state; a request whose lists
    and subscriptions name more than 1000 different entries in all is refused (each list
    alone is within bounds), since every room in those lists would carry that union."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        a = alice["access_token"]
        room = (await client.call("POST", "/createRoom", a, {"name": "n", "topic": "t"}))["room_id"]

        def of(types: list[str]) -> dict[str, Any]:
            return {"ranges": [[0, 5], [0, 5]], "required_state": [[t, ""] for t in types]}

        both = {"lists": {"names": of(["m.room.name"]), "topics": of(["m.room.topic", "m.room.name"])}}
        entry = (await ss(client, a, both))["rooms"][room]
        assert shown(entry) == {("m.room.name", ""), ("m.room.topic", "")}

        many = {f"l{i}": of([f"org.example.{i}.{j}" for j in range(600)]) for i in range(2)}
        status, answer = await client.start("POST", PATH, a, {"lists": many})
        assert status == 400 and answer["errcode"] == "M_INVALID_PARAM"
        subscribed = {"lists": {"l0": many["l0"]}, "room_subscriptions": {room: many["l1"]}}
        status, answer = await client.start("POST", PATH, a, subscribed)
        assert status == 400 and answer["errcode"] == "M_INVALID_PARAM"
        # The same entries repeated count once.
        status, _ = await client.start("POST", PATH, a, {"lists": {"l0": many["l0"], "l1": many["l0"]}})
        assert status == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_one_device_cannot_push_other_users_connections_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections are kept in memory up to a bound (least recently used dropped): a device
    opening conn_id after conn_id drops its own oldest ones, not everyone else's."""
    monkeypatch.setattr(sliding_sync, "MAX_CONNECTIONS", 40)  # each device keeps 16
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        bob = (await client.register(hs, "bob"))["access_token"]
        eve = (await client.register(hs, "eve"))["access_token"]
        bobs = await ss(client, bob, {"conn_id": "room-list"})
        eves = [await ss(client, eve, {"conn_id": f"c{i}"}) for i in range(sliding_sync.MAX_CONNECTIONS)]

        await ss(client, bob, {"conn_id": "room-list"}, bobs["pos"])
        newest = sliding_sync.MAX_CONNECTIONS - 1
        await ss(client, eve, {"conn_id": f"c{newest}"}, eves[newest]["pos"])
        status, answer = await client.start("POST", PATH, eve, {"conn_id": "c0"}, pos=eves[0]["pos"])
        assert status == 400 and answer["errcode"] == "M_UNKNOWN_POS"

        status, answer = await client.start("POST", PATH, eve, {"conn_id": "x" * 129})
        assert status == 400 and answer["errcode"] == "M_INVALID_PARAM"
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_forgotten_room_gives_no_history(tmp_path: Path) -> None:
    """POST /forget: "a user will no longer be able to retrieve history for this room"; not
    through /messages or /event, nor a sliding sync subscription. Joining again brings it back."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice, bob, room = await client.alice_and_bob(hs)
        a, b = alice["access_token"], bob["access_token"]
        await say(client, a, room, "before bob left")
        messages = f"/_matrix/client/v3{room_path(room)}/messages"
        await client.call("POST", f"{room_path(room)}/leave", b, {})
        status, answer = await client.start("GET", messages, b, dir="b")
        assert status == 200 and "before bob left" in [e["content"].get("body") for e in answer["chunk"]]
        await client.call("POST", f"{room_path(room)}/forget", b, {})

        status, answer = await client.start("GET", messages, b, dir="b")
        assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN")
        latest = await client.start("GET", messages, a, dir="b")
        event_id = latest[1]["chunk"][0]["event_id"]
        status, answer = await client.start("GET", f"/_matrix/client/v3{room_path(room)}/event/{event_id}", b)
        assert status == 403
        subscribed = await ss(client, b, {"room_subscriptions": {room: EVERYTHING}})
        assert subscribed["rooms"] == {}

        await client.call("POST", f"/join/{room}", b, {})
        status, _ = await client.start("GET", messages, b, dir="b")
        assert status == 200
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_an_ignored_users_invite_stays_out_of_subscriptions(tmp_path: Path) -> None:
    """Spec, Ignoring Users: invites from ignored users are not sent. The lists leave such an
    invite out; a subscription to its room (a client subscribes to rooms it had) does too."""
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        b = bob["access_token"]
        room = (
            await client.call("POST", "/createRoom", alice["access_token"], {"invite": [bob["user_id"]]})
        )["room_id"]
        first = await ss(client, b, {"room_subscriptions": {room: EVERYTHING}})
        assert "invite_state" in first["rooms"][room]
        ignore = {"ignored_users": {alice["user_id"]: {}}}
        await client.call("PUT", f"/user/{bob['user_id']}/account_data/m.ignored_user_list", b, ignore)

        body = {"lists": {"all": {"ranges": [[0, 9]]}}, "room_subscriptions": {room: EVERYTHING}}
        answer = await ss(client, b, body)
        assert answer["lists"]["all"]["count"] == 0 and answer["rooms"] == {}
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_one_response_holds_a_bounded_number_of_timeline_events(tmp_path: Path) -> None:
    """Each room's timeline_limit is at most 1000, and a response's timelines together at most
    MAX_TIMELINE_EVENTS (lowered here, so that a few rooms pass it): the subscribed room gets
    its timeline first, then the list's rooms, newest first, until the budget is spent; a room
    cut short says `limited`, and its `prev_batch` pages back to what was left out."""
    hs = await make_server(tmp_path, TestClock())
    hs.sliding_sync.max_timeline_events = 25
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        a = alice["access_token"]
        rooms = []
        for i in range(4):
            room = (await client.call("POST", "/createRoom", a, {}))["room_id"]
            for n in range(10):
                await say(client, a, room, f"{i}.{n}")
            rooms.append(room)
        oldest = rooms[0]  # last in the list: its newest message is the oldest

        body = {
            "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 10}},
            "room_subscriptions": {oldest: {"timeline_limit": 10}},
        }
        answer = await ss(client, a, body)
        timelines = {room: entry["timeline"] for room, entry in answer["rooms"].items()}
        assert sum(len(t) for t in timelines.values()) == 25
        assert [ev["content"]["body"] for ev in timelines[oldest]] == [f"0.{n}" for n in range(10)]
        # Then the list, newest room first: the newest room in full, the next cut short, the
        # next with nothing (all of them still listed, with their counts).
        newest, second, third = rooms[3], rooms[2], rooms[1]
        assert [len(timelines[r]) for r in (newest, second, third)] == [10, 5, 0]
        assert [answer["rooms"][r]["limited"] for r in (newest, second, third)] == [True, True, True]
        assert answer["lists"]["all"]["count"] == 4
        # What was left out is a page back from prev_batch.
        entry = answer["rooms"][second]
        page = await client.call(
            "GET", f"{room_path(second)}/messages?dir=b&limit=5&from={entry['prev_batch']}", a
        )
        assert [ev["content"]["body"] for ev in reversed(page["chunk"])] == [f"2.{n}" for n in range(5)]
    finally:
        await hs.stop(None)
