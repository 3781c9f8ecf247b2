"""Backfill across two of our servers over TLS: a user of ours in a room joined over
federation pages back (`/messages` dir=b) past the events we hold, and gets the older ones
from the resident, checked, in order, cut by history visibility, without changing the
room's current state or forward extremities (docs/federation.md, "Backfill")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from federation_harness import FederatedServer, TestCA, User, federated_pair, signed_request


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer]]:
    yield from federated_pair(tmp_path_factory, ca)


def _bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message" and "body" in e["content"]]


def _fed_get(origin: FederatedServer, to: FederatedServer, path: str) -> Any:
    r = signed_request("GET", origin, to, path)
    assert r.status_code == 200, r.text
    return json.loads(r.content)


@pytest.mark.parametrize("version", ["10", "12"])
def test_paging_back_fetches_older_history_in_order(
    servers: tuple[FederatedServer, FederatedServer], version: str
) -> None:
    a, b = servers
    alice = User(a, f"alice_bf{version}")
    bob = User(b, f"bob_bf{version}")
    room_id = alice.ok("POST", "/createRoom", {"room_version": version, "preset": "public_chat"})["room_id"]
    # History that only Alice's server holds: 130 messages (more than one /backfill batch).
    sent = [alice.say(room_id, f"m{i}") for i in range(130)]
    bob.ok("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)
    state = bob.ok("GET", f"/rooms/{quote(room_id)}/state")
    join_id = next(
        e["event_id"] for e in state if e["type"] == "m.room.member" and e["state_key"] == bob.user_id
    )
    events = bob.page_back(room_id, 30)
    # Every message, newest first (dir=b), once each, after (below) Bob's join.
    assert _bodies(events) == [f"m{i}" for i in reversed(range(130))]
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert ids.index(join_id) < ids.index(sent[-1])
    # The backfilled events changed neither the current state nor the room's extremities:
    # Bob's next message builds on his join only, and his sync does not replay history.
    mine = bob.say(room_id, "after")
    pdu = _fed_get(a, b, f"/_matrix/federation/v1/event/{quote(mine)}")["pdus"][0]
    assert pdu["prev_events"] == [join_id]
    timeline = bob.ok("GET", "/sync", timeout="0")["rooms"]["join"][room_id]["timeline"]["events"]
    assert "m5" not in _bodies(timeline)
    # Paging back again reads what is stored now (nothing fetched twice, same order).
    assert _bodies(bob.page_back(room_id, 50)) == ["after", *[f"m{i}" for i in reversed(range(130))]]


def test_backfilled_history_respects_history_visibility(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    a, b = servers
    alice = User(a, "alice_bfhv")
    bob = User(b, "bob_bfhv")
    room_id = alice.ok(
        "POST",
        "/createRoom",
        {
            "room_version": "10",
            "preset": "public_chat",
            "initial_state": [
                {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
            ],
        },
    )["room_id"]
    for i in range(110):  # more than one batch: the oldest batch's visibility is a mark
        alice.say(room_id, f"hidden{i}")
    alice.ok(
        "PUT", f"/rooms/{quote(room_id)}/state/m.room.history_visibility", {"history_visibility": "shared"}
    )
    for i in range(3):
        alice.say(room_id, f"shared{i}")
    alice.ok(
        "PUT", f"/rooms/{quote(room_id)}/state/m.room.history_visibility", {"history_visibility": "joined"}
    )
    alice.say(room_id, "joined-only")
    bob.ok("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)

    events = bob.page_back(room_id, 40)
    # Only what was sent while the room's history was shared; never "joined" history.
    assert _bodies(events) == ["shared2", "shared1", "shared0"]
    assert not any(e["type"] == "m.room.message" and e["content"] == {} for e in events), [
        (e["type"], e["content"]) for e in events
    ]
    # Carol of Bob's server, invited but never joined, sees none of that shared history.
    carol = User(b, "carol_bfhv")
    bob.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": carol.user_id})
    assert _bodies(carol.page_back(room_id, 40)) == []
    # The current state is still the latest visibility, not a backfilled older one.
    assert bob.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.history_visibility") == {
        "history_visibility": "joined"
    }


def test_backfilled_messages_are_found_by_search_and_have_context(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    a, b = servers
    alice = User(a, "alice_bfsearch")
    bob = User(b, "bob_bfsearch")
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    for i in range(6):
        alice.say(room_id, f"walrus{i}")
    bob.ok("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)
    bob.say(room_id, "walrus-after")

    def search(**extra: Any) -> dict[str, Any]:
        body = {
            "search_categories": {"room_events": {"search_term": "walrus", "order_by": "recent", **extra}}
        }
        found: dict[str, Any] = bob.ok("POST", "/search", body)["search_categories"]["room_events"]
        return found

    # Before paging back Bob's server holds only his own message.
    assert [r["result"]["content"]["body"] for r in search()["results"]] == ["walrus-after"]
    assert _bodies(bob.page_back(room_id, 50))[:7] == [
        "walrus-after",
        *[f"walrus{i}" for i in range(5, -1, -1)],
    ]

    # Backfilled messages are searchable, newest first, below what was held, and pages go on
    # past positions below zero.
    first = search(filter={"limit": 4})
    bodies = [r["result"]["content"]["body"] for r in first["results"]]
    assert bodies == ["walrus-after", "walrus5", "walrus4", "walrus3"]
    rest = bob.ok(
        "POST",
        "/search",
        {"search_categories": {"room_events": {"search_term": "walrus", "order_by": "recent"}}},
        next_batch=first["next_batch"],
    )["search_categories"]["room_events"]
    assert [r["result"]["content"]["body"] for r in rest["results"]] == ["walrus2", "walrus1", "walrus0"]

    # Their context holds the backfilled events around them, on both sides.
    walrus3 = first["results"][3]["result"]["event_id"]
    context = bob.ok("GET", f"/rooms/{quote(room_id)}/context/{quote(walrus3)}", limit="4")
    assert _bodies(context["events_before"]) == ["walrus2", "walrus1"]
    assert _bodies(context["events_after"]) == ["walrus4", "walrus5"]
    with_context = search(filter={"limit": 4}, event_context={"before_limit": 2, "after_limit": 1})
    around = with_context["results"][3]["context"]
    assert _bodies(around["events_before"]) == ["walrus2", "walrus1"]
    assert _bodies(around["events_after"]) == ["walrus4"]


def test_the_simple_api_pages_backfilled_history_with_negative_cursors(
    servers: tuple[FederatedServer, FederatedServer],
) -> None:
    """History from another server lies below position 0: the simple API's cursors there are
    negative and page on, while a negative cursor of a chat without such history is 400."""
    a, b = servers
    alice = User(a, "alice_bfsimple")
    bob = User(b, "bob_bfsimple")
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    for i in range(12):
        alice.say(room_id, f"s{i}")
    bob.ok("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)

    def page(chat_id: str, **params: str) -> requests.Response:
        url = b.process.url(f"/api/messages/{quote(chat_id, safe='')}")
        return requests.get(url, params=params, headers={"Authorization": f"Bearer {bob.token}"}, timeout=60)

    seen: list[str] = []
    cursors: list[str] = []
    r = page(room_id, limit="5")
    while True:
        assert r.status_code == 200, r.text
        seen += [m["content"] for m in r.json()]
        if "next" not in r.links:
            break
        cursors.append(parse_qs(urlsplit(r.links["next"]["url"]).query)["before"][0])
        r = page(room_id, limit="5", before=cursors[-1])
    assert seen == [f"s{i}" for i in reversed(range(12))]
    assert any(c.startswith("p-") for c in cursors), cursors
    # Bob's own chat holds nothing from elsewhere: the same cursor is not one of its cursors.
    own = bob.ok("POST", "/createRoom", {})["room_id"]
    r = page(own, before=next(c for c in cursors if c.startswith("p-")))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
