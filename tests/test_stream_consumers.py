"""A durable consumer of the committed-event stream in a real server, killed with SIGKILL while
it is thousands of events behind: after the restart it resumes at its saved position, nothing
is lost, and the only events it is handed twice are those of the batch it was handling at the
kill, each marked as a possible repeat (docs/plugins.md, "Subscriptions").

The consumer is tests/plugins/stream_audit: it writes down every event it is handed, in its
own table, and can be held back.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from conftest import ROOT, ServerProcess, restart_server_process

AUDIT_ENV = {"PYTHONPATH": str(ROOT / "tests" / "plugins")}
MESSAGES = 3000


def audit_plugin(run: int, **config: Any) -> dict[str, Any]:
    return {"plugins": [{"module": "stream_audit.StreamAudit", "config": {"run": run, **config}}]}


def state(server: ServerProcess) -> dict[str, Any]:
    r = requests.get(server.url("/_plugins/stream_audit/state"), timeout=10)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def wait_for(server: ServerProcess, done: Any, what: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        now = state(server)
        if done(now):
            return now
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {now}"
        time.sleep(0.02)


def send_messages(server: ServerProcess, token: str, room_id: str, count: int) -> None:
    def send_range(start: int) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {token}"
            for n in range(start, count, 4):
                r = http.put(
                    server.url(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{n}"),
                    json={"msgtype": "m.text", "body": f"message {n}"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send_range, range(4)))


def test_a_durable_consumer_resumes_after_kill_9_with_nothing_lost_or_repeated_beyond_its_batch(
    start_server: Any,
) -> None:
    server = start_server(audit_plugin(1, start_paused=True, batch_delay_s=0.5), env=AUDIT_ENV)
    user = server.register("auditor")
    r = requests.post(
        server.url("/_matrix/client/v3/createRoom"),
        json={"preset": "private_chat"},
        headers={"Authorization": f"Bearer {user['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    send_messages(server, user["access_token"], r.json()["room_id"], MESSAGES)
    assert state(server)["recorded"] == 0  # held back: thousands of events behind

    requests.post(server.url("/_plugins/stream_audit/resume"), timeout=10)
    wait_for(server, lambda s: s["recorded"] >= 500 and s["in_batch"], "a batch in flight")
    server.stop(signal.SIGKILL)

    server = restart_server_process(server, audit_plugin(2), env=AUDIT_ENV)
    try:
        db = sqlite3.connect(server.data_dir / "homeserver.db")
        events = {row[0] for row in db.execute("SELECT stream_ordering FROM events")}
        assert len(events) > MESSAGES
        wait_for(server, lambda s: s["recorded"] > 0 and not s["in_batch"], "the audit to resume")
        deadline = time.monotonic() + 120
        while {r[0] for r in db.execute("SELECT position FROM stream_audit")} != events:
            assert time.monotonic() < deadline, "the audit never caught up"
            time.sleep(0.05)
        rows = db.execute(
            "SELECT run, position, batch_upto, maybe_repeated FROM stream_audit ORDER BY rowid"
        ).fetchall()
        db.close()
    finally:
        server.stop()

    first = [r for r in rows if r[0] == 1]
    second = [r for r in rows if r[0] == 2]
    assert first and second
    # The batch in flight at the kill: the last one the first run wrote down.
    in_flight = {r[1] for r in first if r[2] == max(r[2] for r in first)}
    repeated = {r[1] for r in first} & {r[1] for r in second}
    assert repeated == in_flight
    assert {r[1] for r in second if r[3]} == in_flight  # each repeat is marked as one
    assert not any(r[3] for r in first)
    # Nothing handed twice within a run, and in stream order in each.
    for run in (first, second):
        assert [r[1] for r in run] == sorted({r[1] for r in run})
    assert sorted(r[1] for r in rows if not (r[0] == 2 and r[3])) == sorted(events)
