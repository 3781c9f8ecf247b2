"""The browser call: matrix-js-sdk's MatrixCall in Chromium (fake camera and microphone)
calls a second Chromium page, in an encrypted room of our server, relay-only through a real
coturn (tests/coturn.py) on the credentials from our /voip/turnServer.

tests/browser/call.mjs drives the two pages (tests/browser/call_page.mjs, bundled with
esbuild together with matrix-js-sdk 43 and its Rust crypto wasm). Each client is made with
`forceTURN: true`, so its RTCPeerConnection uses `iceTransportPolicy: "relay"`.

What a user would see: the callee's call rings, they answer, both calls reach `connected`,
each side gets the other's audio and video track and its inbound bytes keep growing (the
remote video shows in a <video>), the ICE pair in use is relay to relay over coturn; the
caller's hangup ends the call on both sides. The server only ever saw the call signalling as
`m.room.encrypted`, so it has no call in its log.

Everything (server, coturn, Node and Chromium) runs in a loopback-only network namespace
(tests/browser.py), so no packet can leave the machine. Not in the fast tier (it starts
processes); about 10 s.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from browser import loopback_only_network, run_browser_script, validated
from conftest import ServerProcess
from coturn import Coturn

PASSWORD = "correct horse battery"
CLIENT = "/_matrix/client/v3"


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    """coturn, and the rest of the test, in a loopback-only network namespace."""
    with loopback_only_network():
        turn = Coturn(tmp_path / "coturn", secret=secrets.token_hex(16)).start()
        try:
            yield turn
        finally:
            turn.stop()


def room_event_types(server: ServerProcess, token: str, room_id: str) -> list[str]:
    """The types of the room's timeline events as the server stored them, oldest first."""
    r = requests.get(
        server.url(f"{CLIENT}/rooms/{quote(room_id)}/messages"),
        params={"dir": "b", "limit": "200"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [e["type"] for e in reversed(r.json()["chunk"])]


def test_matrix_js_sdk_video_call_between_two_chromium_pages_through_coturn(
    start_server: Any, coturn: Coturn
) -> None:
    turn = {"uris": coturn.uris(), "shared_secret": coturn.secret, "ttl": "1h"}
    server: ServerProcess = start_server(
        {"plugins": [{"module": "plugins.calls.CallsPlugin", "config": {"turn": turn}}]}
    )
    caller = server.register("caller", PASSWORD)
    server.register("callee", PASSWORD)

    result = run_browser_script("call.mjs", server.base_url, "caller", "callee", PASSWORD)

    # Both clients got TURN from our server; the DM was encrypted for both.
    assert result["caller"]["turnUris"] == coturn.uris() == result["callee"]["turnUris"]
    assert result["room"]["encrypted"] == {"caller": True, "callee": True}
    # The callee's call rang: a video call from the caller.
    ringing = result["ringing"]
    assert ringing == {
        "callId": result["callId"],
        "type": "video",
        "state": "ringing",
        "from": caller["user_id"],
    }
    for side in ("caller", "callee"):
        first, later = result["media"][side]
        # The other side's audio and video arrived and kept flowing.
        assert first["remoteTracks"] == ["audio", "video"], (side, first)
        for kind in ("audio", "video"):
            assert 0 < first["inbound"][kind]["bytes"] < later["inbound"][kind]["bytes"], (side, kind)
        assert later["inbound"]["video"]["framesDecoded"] > first["inbound"]["video"]["framesDecoded"] >= 0
        assert later["video"]["width"] > 0 and later["video"]["time"] > 0, (side, later["video"])
        # Relay only: the pair in use is relay to relay, through coturn.
        pair = later["pair"]
        assert (pair["local"], pair["remote"]) == ("relay", "relay"), (side, pair)
        assert validated(pair), (side, pair)
        assert first["localCandidateTypes"] == ["relay"], (side, first["localCandidateTypes"])
        for address in (pair["localAddress"], pair["remoteAddress"]):
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1" and coturn.min_port <= int(port) < coturn.min_port + 100, (side, pair)
        assert later["connectionState"] == "connected"
    # The caller hung up; both calls ended.
    seen = result["seen"]
    assert (seen["caller"]["incoming"], seen["callee"]["incoming"]) == (0, 1)
    assert seen["caller"]["state"] == seen["callee"]["state"] == "ended"
    assert seen["caller"]["hangupParty"] == "local" and seen["callee"]["hangupParty"] == "remote"
    assert seen["callee"]["hangupReason"] == "user_hangup"
    for side in ("caller", "callee"):
        assert "connected" in seen[side]["states"] and seen[side]["errors"] == [], (side, seen[side])

    # coturn relayed for both users, on the credentials our server handed out.
    log = coturn.log_text()
    for user_id in (result["caller"]["userId"], result["callee"]["userId"]):
        assert f":{user_id}>: incoming packet ALLOCATE processed, success" in log, (user_id, log[-3000:])

    # The server saw the call only as ciphertext: no m.call.* event, and no call in its log.
    types = room_event_types(server, caller["access_token"], result["room"]["roomId"])
    assert "m.room.encryption" in types and types.count("m.room.encrypted") >= 4, types
    assert not [t for t in types if t.startswith("m.call.")], types
    calls = requests.get(
        server.url("/api/calls"), headers={"Authorization": f"Bearer {caller['access_token']}"}, timeout=10
    )
    assert calls.status_code == 200 and calls.json()["calls"] == []
