"""POST /search (room_events) against a real server on both engines (PostgreSQL full-text
search, SQLite FTS5): ranking, recency order and paging, context with profiles,
highlights, filters, groupings, and who finds what (members, a member who left, a
non-member, an ignored sender, an encrypted message). matrix-nio has no search call:
plain HTTP, as a client sends it."""

from __future__ import annotations

from typing import Any

from conftest import ServerProcess
from test_history_visibility import CS, Client


def search(client: Client, term: str, next_batch: str | None = None, **criteria: Any) -> dict[str, Any]:
    body = {"search_categories": {"room_events": {"search_term": term, **criteria}}}
    params = {"next_batch": next_batch} if next_batch else {}
    return dict(client.ok("POST", "/search", json=body, params=params)["search_categories"]["room_events"])


def found_ids(result: dict[str, Any]) -> list[str]:
    return [r["result"]["event_id"] for r in result["results"]]


def ignore(client: Client, *user_ids: str) -> None:
    content = {"ignored_users": {u: {} for u in user_ids}}
    client.ok("PUT", f"/user/{client.user_id}/account_data/m.ignored_user_list", json=content)


def test_search_ranks_pages_and_gives_context(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room = alice.create_room("shared", name="Planning")
    # The name in the room, from the profile at the join (profile_info is the member event then).
    bob.ok("PUT", f"/profile/{bob.user_id}/displayname", json={"displayname": "Bob Builder"})
    bob.join(room)
    before = alice.send(room, "coffee first")
    weak = alice.send(room, "the meeting moved, and lunch too, and dinner, and much else besides")
    strong = bob.send(room, "meeting meeting: the meeting is at noon")
    after = alice.send(room, "see you there")
    alice.send(room, "unrelated chatter")

    ranked = search(
        alice, "Meeting", event_context={"before_limit": 1, "after_limit": 1, "include_profile": True}
    )
    assert found_ids(ranked) == [strong, weak]  # the denser match first
    assert ranked["count"] == 2
    assert ranked["results"][0]["rank"] > ranked["results"][1]["rank"]
    assert "meeting" in ranked["highlights"]
    top = ranked["results"][0]
    assert top["result"]["room_id"] == room and top["result"]["content"]["body"].startswith("meeting")
    context = top["context"]
    assert [e["event_id"] for e in context["events_before"]] == [weak]
    assert [e["event_id"] for e in context["events_after"]] == [after]
    assert context["profile_info"][bob.user_id]["displayname"] == "Bob Builder"
    assert "next_batch" not in ranked
    # The weak hit's context reaches back one event, to the one before it.
    assert [e["event_id"] for e in ranked["results"][1]["context"]["events_before"]] == [before]

    # Word prefixes and stems: "meet" finds "meeting".
    assert set(found_ids(search(alice, "meet"))) == {strong, weak}
    # Every word must match.
    assert found_ids(search(alice, "meeting noon")) == [strong]
    assert found_ids(search(alice, "meeting nowhere")) == []

    # Newest first, one per page, to the end.
    page = search(alice, "meeting", order_by="recent", filter={"limit": 1})
    assert found_ids(page) == [strong]
    page2 = search(alice, "meeting", page["next_batch"], order_by="recent", filter={"limit": 1})
    assert found_ids(page2) == [weak] and "next_batch" not in page2
    # By rank, paged too.
    page = search(alice, "meeting", filter={"limit": 1})
    page2 = search(alice, "meeting", page["next_batch"], filter={"limit": 1})
    assert found_ids(page) + found_ids(page2) == [strong, weak] and "next_batch" not in page2

    # Filters: senders, rooms, types; room names are indexed too.
    assert found_ids(search(alice, "meeting", filter={"senders": [alice.user_id]})) == [weak]
    assert found_ids(search(alice, "meeting", filter={"not_rooms": [room]})) == []
    assert found_ids(search(alice, "meeting", filter={"types": ["m.room.name"]})) == []
    names = search(alice, "planning", keys=["content.name"])
    assert [r["result"]["type"] for r in names["results"]] == ["m.room.name"]
    assert found_ids(search(alice, "planning", keys=["content.body"])) == []

    grouped = search(alice, "meeting", groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]})
    assert grouped["groups"]["room_id"][room]["results"] == [strong, weak]
    assert grouped["groups"]["sender"][bob.user_id]["results"] == [strong]
    state = search(alice, "meeting", include_state=True)["state"][room]
    assert any(e["type"] == "m.room.name" for e in state)


def test_who_finds_what(any_server: ServerProcess) -> None:
    alice, bob, carol, dave = (Client(any_server, n) for n in ("alice", "bob", "carol", "dave"))
    room = alice.create_room("shared")
    bob.join(room)
    carol.join(room)
    early = alice.send(room, "zebra crossing early")
    carol.leave(room)
    late = alice.send(room, "zebra crossing late")
    from_bob = bob.send(room, "zebra from bob")

    assert set(found_ids(search(alice, "zebra"))) == {early, late, from_bob}
    # A member who left finds what they could see, nothing sent after, and the count does
    # not tell them how many matching messages they may not see.
    carols = search(carol, "zebra")
    assert found_ids(carols) == [early]
    assert carols["count"] == 1
    # Someone never in the room finds nothing of it, even naming it.
    assert found_ids(search(dave, "zebra")) == []
    assert found_ids(search(dave, "zebra", filter={"rooms": [room]})) == []
    # An ignored sender's messages are not found.
    ignore(alice, bob.user_id)
    assert set(found_ids(search(alice, "zebra"))) == {early, late}
    ignore(alice)
    assert from_bob in found_ids(search(alice, "zebra"))
    # A redacted message leaves the index.
    alice.ok("PUT", f"/rooms/{room}/redact/{late}/r1", json={})
    assert set(found_ids(search(alice, "zebra"))) == {early, from_bob}


def test_encrypted_rooms_are_not_searchable_on_the_server(any_server: ServerProcess) -> None:
    alice = Client(any_server, "alice")
    room = alice.create_room("shared")
    alice.ok(
        "PUT",
        f"/rooms/{room}/state/m.room.encryption/",
        json={"algorithm": "m.megolm.v1.aes-sha2"},
    )
    alice.send(
        room,
        "",
        event_type="m.room.encrypted",
        algorithm="m.megolm.v1.aes-sha2",
        ciphertext="secretword AwgAEnAC",
        sender_key="k",
        session_id="s",
        device_id="D",
    )
    assert found_ids(search(alice, "secretword")) == []


def test_bad_search_requests_are_400(any_server: ServerProcess) -> None:
    alice = Client(any_server, "alice")
    url = CS + "/search"
    cases: list[tuple[Any, str]] = [
        ({}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {}}}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {"search_term": 5}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": "x", "order_by": "x"}}}, "M_INVALID_PARAM"),
        (
            {"search_categories": {"room_events": {"search_term": "x", "keys": ["content.x"]}}},
            "M_INVALID_PARAM",
        ),
        ({"search_categories": {"room_events": {"search_term": "x", "filter": {"limit": -1}}}}, "M_BAD_JSON"),
        (
            {"search_categories": {"room_events": {"search_term": "x", "filter": {"rooms": "!a"}}}},
            "M_BAD_JSON",
        ),
        ({"search_categories": {"room_events": {"search_term": "x", "event_context": 3}}}, "M_BAD_JSON"),
        (
            {"search_categories": {"room_events": {"search_term": "x", "groupings": {"group_by": 3}}}},
            "M_BAD_JSON",
        ),
    ]
    for body, errcode in cases:
        r = alice.request("POST", url, json=body)
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), body
    body = {"search_categories": {"room_events": {"search_term": "x"}}}
    r = alice.request("POST", url, json=body, params={"next_batch": "garbage"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = alice.request("POST", url, json=body, params={"next_batch": "s12"})  # for recency, not rank
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = alice.request("POST", url, json=body, headers={"Authorization": ""})
    assert r.status_code == 401
