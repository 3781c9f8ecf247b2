"""The call log on a real server process, on both engines: the plugin's tables and its
durable subscription (the fast tier's tests/fast/test_call_log.py covers the rules on SQLite)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests

CLIENT = "/_matrix/client/v3"


def test_a_call_reaches_both_logs_and_survives_a_restart(start_server: Any, database_url: str) -> None:
    from conftest import restart_server_process

    server = start_server(
        {
            "database": {"url": database_url},
            "plugins": [{"module": "plugins.calls.CallsPlugin", "config": {}}],
        }
    )
    alice, bob = server.register("alice"), server.register("bob")

    def call(who: dict[str, Any], method: str, path: str, body: Any = None) -> dict[str, Any]:
        r = requests.request(
            method,
            server.url(path),
            json=body,
            headers={"Authorization": f"Bearer {who['access_token']}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    room = call(alice, "POST", f"{CLIENT}/createRoom", {"invite": [bob["user_id"]]})["room_id"]
    call(bob, "POST", f"{CLIENT}/join/{quote(room)}", {})
    send = f"{CLIENT}/rooms/{quote(room)}/send"
    offer = {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}
    base = {"call_id": "c1", "version": "1"}
    call(
        alice, "PUT", f"{send}/m.call.invite/1", {**base, "party_id": "A", "lifetime": 60000, "offer": offer}
    )
    call(bob, "PUT", f"{send}/m.call.reject/2", {**base, "party_id": "B"})

    def log(who: dict[str, Any]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while True:
            calls: list[dict[str, Any]] = call(who, "GET", "/api/calls")["calls"]
            if (calls and calls[0]["outcome"]) or time.monotonic() > deadline:
                return calls
            time.sleep(0.05)

    assert [(c["callId"], c["outcome"], c["direction"]) for c in log(bob)] == [("c1", "rejected", "incoming")]
    assert [(c["callId"], c["outcome"], c["direction"]) for c in log(alice)] == [
        ("c1", "rejected", "outgoing")
    ]

    server.stop()
    server = restart_server_process(server)
    try:
        assert [c["callId"] for c in log(bob)] == ["c1"]
    finally:
        server.stop()
