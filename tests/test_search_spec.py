"""The responses of /search, /user_directory/search and the report endpoints checked against
the spec's OpenAPI definitions (as tests/test_spec_responses.py does for the account API)."""

from __future__ import annotations

import secrets

import pytest
from conftest import ServerProcess
from openapi_core import OpenAPI
from test_spec_responses import V3, Client, register
from test_spec_responses import spec as spec  # noqa: F401 - the module's fixture


@pytest.fixture
def client(spec: OpenAPI, any_server: ServerProcess) -> Client:  # noqa: F811
    return Client(spec, any_server)


def test_search_directory_and_report_responses_match_spec(client: Client) -> None:
    alice, bob = register(client), register(client)
    a, b = alice["access_token"], bob["access_token"]
    tag = secrets.token_hex(3)
    assert client(
        "PUT", f"{V3}/profile/{bob['user_id']}/displayname", {"displayname": f"Bob {tag}"}, token=b
    ).ok
    room = client("POST", f"{V3}/createRoom", {"preset": "public_chat", "name": "Spec room"}, token=a).json()[
        "room_id"
    ]
    assert client("POST", f"{V3}/join/{room}", {}, token=b).ok
    sent = client(
        "PUT",
        f"{V3}/rooms/{room}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": f"hello {tag}"},
        token=b,
    )
    event_id = sent.json()["event_id"]

    criteria = {
        "search_term": tag,
        "event_context": {"before_limit": 2, "after_limit": 2, "include_profile": True},
        "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        "include_state": True,
        "filter": {"limit": 1},
    }
    r = client("POST", f"{V3}/search", {"search_categories": {"room_events": criteria}}, token=a)
    assert r.status_code == 200 and r.json()["search_categories"]["room_events"]["count"] == 1
    assert (
        client("POST", f"{V3}/search", {"search_categories": {"room_events": {}}}, token=a).status_code == 400
    )

    r = client("POST", f"{V3}/user_directory/search", {"search_term": f"bob {tag}", "limit": 5}, token=a)
    assert r.status_code == 200 and r.json()["results"][0]["user_id"] == bob["user_id"]

    assert client(
        "POST", f"{V3}/rooms/{room}/report/{event_id}", {"reason": "spec", "score": -50}, token=a
    ).ok
    assert client("POST", f"{V3}/rooms/{room}/report/$missing", {"reason": "x"}, token=a).status_code == 404
    assert client("POST", f"{V3}/rooms/{room}/report", {"reason": "spec"}, token=a).ok
    assert client("POST", f"{V3}/rooms/!missing:x/report", {"reason": "x"}, token=a).status_code == 404
    assert client("POST", f"{V3}/users/{bob['user_id']}/report", {"reason": "spec"}, token=a).ok
