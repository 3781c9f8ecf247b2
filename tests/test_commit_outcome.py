"""PostgreSQL connections that break at the worst moment, through tests/pg_proxy.py.

A commit whose answer is lost is settled by asking the database, never assumed failed: the
sender gets its event, a retry with the same transaction id gets the same event, and the room
goes on from it. A database that goes away and comes back: sends wait, then go through.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg2
import pytest
import pytest_twisted
import requests
from conftest import ServerProcess
from pg_proxy import PgProxy, wait_until

from homeserver.storage.connection_pool import CommitOutcomeUnknown, DatabaseUnavailable
from homeserver.storage.database import Database, Txn, engine_from_url

# The pool: what it tells its caller -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_commit_without_an_answer_is_reported_as_unknown_not_failed(
    pg_url: str, proxy: PgProxy
) -> None:
    db = Database(engine_from_url(proxy.url_for(pg_url), 1, 1))
    try:
        await db.execute("create", "CREATE TABLE notes (id INTEGER PRIMARY KEY)")
        proxy.break_after_commit_of(b"INSERT INTO notes")

        def write(txn: Txn) -> None:
            txn.execute("INSERT INTO notes (id) VALUES (1)")

        with pytest.raises(CommitOutcomeUnknown):
            await db.run_interaction("write", write)
        assert proxy.broken_commits == 1
        # It was stored: only the database could tell.
        assert await db.query("read", "SELECT id FROM notes") == [(1,)]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_database_that_is_down_is_reported_as_unavailable(pg_url: str, proxy: PgProxy) -> None:
    db = Database(engine_from_url(proxy.url_for(pg_url), 1, 1))
    try:
        await db.query("warm", "SELECT 1")
        proxy.go_down()
        with pytest.raises(DatabaseUnavailable):
            await db.query("read", "SELECT 1")
        proxy.come_back()
        assert await db.query("read", "SELECT 1") == [(1,)]
    finally:
        db.close()


# A real server -----------------------------------------------------------------------------------


@pytest.fixture
def proxied_server(start_server: Any, pg_url: str, proxy: PgProxy) -> ServerProcess:
    server: ServerProcess = start_server({"database": {"url": proxy.url_for(pg_url)}})
    return server


def send(server: ServerProcess, token: str, room_id: str, txn_id: str, body: str) -> requests.Response:
    return requests.put(
        server.url(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn_id}"),
        json={"msgtype": "m.text", "body": body},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def room_with_alice(server: ServerProcess) -> tuple[str, str]:
    alice = server.register("alice")
    r = requests.post(
        server.url("/_matrix/client/v3/createRoom"),
        json={"preset": "private_chat"},
        headers={"Authorization": f"Bearer {alice['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return alice["access_token"], r.json()["room_id"]


def stored_messages(pg_url: str, room_id: str) -> list[dict[str, Any]]:
    """The room's messages straight from the database, in stream order."""
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT event_id, json FROM events WHERE room_id = %s AND type = 'm.room.message'"
                " ORDER BY stream_ordering",
                (room_id,),
            )
            return [{"event_id": row[0], **json.loads(row[1])} for row in cur.fetchall()]
    finally:
        conn.close()


def test_a_send_whose_commit_answer_is_lost_gets_its_stored_event(
    proxied_server: ServerProcess, proxy: PgProxy, pg_url: str
) -> None:
    server = proxied_server
    token, room_id = room_with_alice(server)
    assert send(server, token, room_id, "warm", "before").status_code == 200

    proxy.break_after_commit_of(b"committed, answer lost")  # the transaction carrying the event
    first = send(server, token, room_id, "lost-answer", "committed, answer lost")
    assert proxy.broken_commits == 1
    # The event's whole transaction went as one query string, COMMIT included.
    carrying = [q for q in proxy.queries if b"committed, answer lost" in q]
    assert len(carrying) == 1 and carrying[0].startswith(b"BEGIN;") and carrying[0].endswith(b";COMMIT")
    assert first.status_code == 200, first.text
    event_id = first.json()["event_id"]

    # A client that never heard back retries with the same transaction id.
    retry = send(server, token, room_id, "lost-answer", "committed, answer lost")
    assert retry.status_code == 200, retry.text
    assert retry.json()["event_id"] == event_id

    after = send(server, token, room_id, "next", "after")
    assert after.status_code == 200, after.text
    messages = stored_messages(pg_url, room_id)
    assert [m["content"]["body"] for m in messages] == ["before", "committed, answer lost", "after"]
    assert messages[1]["event_id"] == event_id
    assert messages[2]["prev_events"] == [event_id]  # the room's head includes it
    assert "had no answer; asking the database" in server.wait_for_log("had no answer")


def test_a_send_whose_connection_breaks_before_commit_is_written_once(
    proxied_server: ServerProcess, proxy: PgProxy, pg_url: str
) -> None:
    server = proxied_server
    token, room_id = room_with_alice(server)
    proxy.break_before(b"written again")
    r = send(server, token, room_id, "broken", "written again")
    assert r.status_code == 200, r.text
    assert proxy.broken_queries == 1
    assert [m["content"]["body"] for m in stored_messages(pg_url, room_id)] == ["written again"]


def test_sends_wait_while_the_database_is_down_and_go_through_when_it_returns(
    proxied_server: ServerProcess, proxy: PgProxy, pg_url: str
) -> None:
    server = proxied_server
    token, room_id = room_with_alice(server)
    assert send(server, token, room_id, "warm", "before").status_code == 200

    proxy.go_down()
    answers: dict[str, requests.Response] = {}

    def send_in_background(txn_id: str) -> None:
        answers[txn_id] = send(server, token, room_id, txn_id, f"sent while down {txn_id}")

    senders = [threading.Thread(target=send_in_background, args=(f"down{n}",)) for n in range(3)]
    for t in senders:
        t.start()
    wait_until(lambda: proxy.refused >= 3)  # the server keeps trying
    assert not answers
    proxy.come_back()
    for t in senders:
        t.join(timeout=30)
    assert all(r.status_code == 200 for r in answers.values()), {k: r.text for k, r in answers.items()}

    after = send(server, token, room_id, "after", "after")
    assert after.status_code == 200, after.text
    bodies = [m["content"]["body"] for m in stored_messages(pg_url, room_id)]
    assert bodies[0] == "before" and bodies[-1] == "after"
    assert sorted(bodies[1:-1]) == [f"sent while down down{n}" for n in range(3)]
