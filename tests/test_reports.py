"""Reporting events, rooms and users, against a real server on both engines: who may report
what (a member who can see the event; a non-member, a member who left and an unknown
event get 404), the bodies the spec allows, and the rows kept for the admin. matrix-nio
has no report call: plain HTTP, as Element sends it."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg2
from conftest import ServerProcess
from test_history_visibility import CS, Client


def stored_reports(server: ServerProcess, reporter: str) -> list[tuple[Any, ...]]:
    """The admin's table, read from the server's own database."""
    url = str(server.config["database"]["url"])
    sql = (
        "SELECT kind, room_id, event_id, target_user_id, reason, score FROM reports"
        " WHERE reporter = {} ORDER BY report_id"
    )
    if url.startswith("postgresql://"):
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(sql.format("%s"), (reporter,))
            return list(cur.fetchall())
    path = url.removeprefix("sqlite:///") if url else str(server.data_dir / "homeserver.db")
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql.format("?"), (reporter,)).fetchall())


def status(client: Client, path: str, body: Any) -> tuple[int, str | None]:
    r = client.request("POST", CS + path, json=body)
    return r.status_code, (r.json().get("errcode") if r.status_code != 200 else None)


def test_reporting_an_event(any_server: ServerProcess) -> None:
    alice, bob, carol, mallory = (Client(any_server, n) for n in ("alice", "bob", "carol", "mallory"))
    room = alice.create_room("joined")
    for member in (bob, carol, mallory):
        member.join(room)
    bad = mallory.send(room, "something offensive")
    carol.leave(room)
    after_leave = mallory.send(room, "more, after carol left")

    assert status(bob, f"/rooms/{room}/report/{bad}", {"reason": "abuse", "score": -100}) == (200, None)
    assert status(bob, f"/rooms/{room}/report/{after_leave}", {}) == (200, None)
    assert stored_reports(any_server, bob.user_id) == [
        ("event", room, bad, mallory.user_id, "abuse", -100),
        ("event", room, after_leave, mallory.user_id, None, None),
    ]

    # Not joined (never, or no longer): 404, as for an event that does not exist.
    outsider = Client(any_server, "outsider")
    assert status(outsider, f"/rooms/{room}/report/{bad}", {"reason": "x"}) == (404, "M_NOT_FOUND")
    assert status(carol, f"/rooms/{room}/report/{bad}", {"reason": "x"}) == (404, "M_NOT_FOUND")
    assert status(bob, f"/rooms/{room}/report/$nope", {"reason": "x"}) == (404, "M_NOT_FOUND")
    assert status(bob, f"/rooms/!nope:x/report/{bad}", {"reason": "x"}) == (404, "M_NOT_FOUND")
    assert stored_reports(any_server, outsider.user_id) == []
    assert stored_reports(any_server, carol.user_id) == []

    # A member who joined later, under `joined` visibility, cannot see (so report) what came before.
    late = Client(any_server, "late")
    late.join(room)
    assert status(late, f"/rooms/{room}/report/{bad}", {"reason": "x"}) == (404, "M_NOT_FOUND")

    # Bad bodies.
    assert status(bob, f"/rooms/{room}/report/{bad}", {"score": -101}) == (400, "M_INVALID_PARAM")
    assert status(bob, f"/rooms/{room}/report/{bad}", {"score": 1}) == (400, "M_INVALID_PARAM")
    assert status(bob, f"/rooms/{room}/report/{bad}", {"score": "bad"}) == (400, "M_INVALID_PARAM")
    assert status(bob, f"/rooms/{room}/report/{bad}", {"reason": 5}) == (400, "M_BAD_JSON")
    assert status(bob, f"/rooms/{room}/report/{bad}", {"reason": "x" * 3000}) == (400, "M_INVALID_PARAM")
    r = bob.request("POST", f"{CS}/rooms/{room}/report/{bad}", data="nope")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")
    r = bob.request("POST", f"{CS}/rooms/{room}/report/{bad}", json={}, headers={"Authorization": ""})
    assert r.status_code == 401


def test_reporting_rooms_and_users(any_server: ServerProcess) -> None:
    alice, bob = Client(any_server, "alice"), Client(any_server, "bob")
    room = alice.create_room("shared", preset="private_chat")
    # Reporting a room or a user needs no shared room (spec).
    assert status(bob, f"/rooms/{room}/report", {"reason": "spam room"}) == (200, None)
    assert status(bob, f"/users/{alice.user_id}/report", {"reason": ""}) == (200, None)
    assert stored_reports(any_server, bob.user_id) == [
        ("room", room, None, None, "spam room", None),
        ("user", None, None, alice.user_id, "", None),
    ]
    assert status(bob, "/rooms/!unknown:nowhere/report", {"reason": "x"}) == (404, "M_NOT_FOUND")
    assert status(bob, f"/users/@nobody:{any_server.server_name}/report", {"reason": "x"}) == (
        404,
        "M_NOT_FOUND",
    )
    assert status(bob, f"/rooms/{room}/report", {}) == (400, "M_MISSING_PARAM")
    assert status(bob, f"/users/{alice.user_id}/report", {"reason": None}) == (400, "M_MISSING_PARAM")
    assert status(bob, "/users/not-a-user-id/report", {"reason": "x"}) == (400, "M_INVALID_PARAM")
    assert status(bob, f"/users/{bob.user_id}/report", {"reason": "x"}) == (400, "M_INVALID_PARAM")
    assert [r[0] for r in stored_reports(any_server, bob.user_id)] == ["room", "user"]
