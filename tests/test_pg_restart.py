"""A real PostgreSQL restart under a plain single-process server.

tests/test_pg_outage_under_load.py plays the outage with a proxy that resets connections
but keeps listening; a real `pg_ctl stop -m fast` ends every session and then refuses new
connections outright. The group commit's writer (storage/pg_writer.py) once waited forever
on such a refused connect, and every send after it queued behind that write (issue 12).

The test runs its own cluster (tests/workers_harness.py) so it can stop and start it:
sends made while PostgreSQL is down complete once it is back, later sends in every room
go through (none queued behind a stuck write), and a send retried with the same
transaction id gets the stored event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ServerProcess, start_server_process
from workers_harness import PrivatePostgres

CLIENT = "/_matrix/client/v3"
OUTAGE_S = 3.0
ROOMS = 3
# A send may wait for the database up to 30 s (GIVE_UP_S) before it answers 503. The hang
# this test guards against (every send stuck past 60 s) fails at this timeout; a send
# waiting through the outage is written on the persister's next retry (at most 0.5 s
# apart, core/persist.py), timed on a test clock in tests/fast/test_persister.py: here the
# delays are printed, not bounded (a loaded machine's processes).
SEND_TIMEOUT_S = 35.0


@pytest.fixture
def server_on_private_postgres(tmp_path: Path) -> Iterator[tuple[ServerProcess, PrivatePostgres]]:
    postgres = PrivatePostgres()
    server = None
    try:
        server = start_server_process(tmp_path, {"database": {"url": postgres.url}})
        yield server, postgres
    finally:
        if server is not None:
            server.stop()
        postgres.close()


def _send(server: ServerProcess, token: str, room: str, txn: str, body: str) -> requests.Response:
    return requests.put(
        server.url(f"{CLIENT}/rooms/{room}/send/m.room.message/{txn}"),
        json={"msgtype": "m.text", "body": body},
        headers={"Authorization": f"Bearer {token}"},
        timeout=SEND_TIMEOUT_S,
    )


def _bodies(server: ServerProcess, token: str, room: str) -> list[str]:
    answer = requests.get(
        server.url(f"{CLIENT}/rooms/{room}/messages"),
        params={"dir": "b", "limit": "100"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return [e["content"]["body"] for e in answer.json()["chunk"] if e["type"] == "m.room.message"]


def test_sends_during_and_after_a_real_postgres_restart_complete_and_retries_get_the_stored_event(
    server_on_private_postgres: tuple[ServerProcess, PrivatePostgres],
) -> None:
    server, postgres = server_on_private_postgres
    token = server.register("alice")["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    rooms = []
    for _ in range(ROOMS):
        created = requests.post(server.url(f"{CLIENT}/createRoom"), json={}, headers=headers, timeout=10)
        assert created.status_code == 200, created.text
        rooms.append(created.json()["room_id"])
    for room in rooms:
        assert _send(server, token, room, "before", "before").status_code == 200

    postgres.stop()
    during: dict[str, Any] = {}
    finished_at: dict[str, float] = {}

    def send_during(room: str) -> None:
        try:
            during[room] = _send(server, token, room, "during", "during")
        except requests.RequestException as error:  # a hang shows as a timeout here
            during[room] = error
        finished_at[room] = time.monotonic()

    senders = [threading.Thread(target=send_during, args=(room,)) for room in rooms]
    for sender in senders:
        sender.start()
    time.sleep(OUTAGE_S)  # the length of the outage, not an ordering
    postgres.start()
    back_at = time.monotonic()
    for sender in senders:
        sender.join(SEND_TIMEOUT_S + 5)

    for room in rooms:
        answer = during[room]
        assert isinstance(answer, requests.Response), f"the send during the outage failed: {answer!r}"
        assert answer.status_code == 200, answer.text
    print("outage sends answered after it by", [f"{at - back_at:.2f}s" for at in finished_at.values()])

    for room in rooms:
        after = _send(server, token, room, "after", "after")
        assert after.status_code == 200, after.text

    for room in rooms:
        retried = _send(server, token, room, "during", "during")
        assert retried.status_code == 200, retried.text
        assert retried.json()["event_id"] == during[room].json()["event_id"]
        assert sorted(_bodies(server, token, room)) == ["after", "before", "during"]
