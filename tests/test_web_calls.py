"""The web client's calls (issue 17 point 6; docs/web-client.md, "Calls") in Chromium.

tests/browser/web_calls.mjs: two people, each in a Chromium context with fake camera and
microphone, both set "relay calls through TURN only". A video call placed from the chat
header rings, is accepted, and carries audio and video both ways through coturn (the
calls plugin's TURN, tests/coturn.py) over a relay candidate; mute and camera off stop the
tracks; a hang-up closes both screens. The timelines show calls as notices (answered with
its duration, declined, missed), not as messages; both devices' call logs list the
encrypted chat's calls, and the server's log the unencrypted chat's missed call. Here the
server's side is checked too: the encrypted chat's signalling is ciphertext only, and
coturn allocated relays for both users.

Everything runs in a loopback-only network namespace (root needed), as
tests/test_calls_browser.py. Not in the fast tier.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from browser import built_web_client, loopback_only_network, run_browser_script, validated
from conftest import ServerProcess
from coturn import Coturn

PASSWORD = "correct horse battery"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    """coturn, and the rest of the test, in a loopback-only network namespace."""
    with loopback_only_network():
        turn = Coturn(tmp_path / "coturn", secret=secrets.token_hex(16)).start()
        try:
            yield turn
        finally:
            turn.stop()


def event_types(server: ServerProcess, token: str, room_id: str) -> list[str]:
    r = requests.get(
        server.url(f"/_matrix/client/v3/rooms/{quote(room_id)}/messages"),
        params={"dir": "b", "limit": "200"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return [e["type"] for e in r.json()["chunk"]]


def test_voice_and_video_calls_in_the_web_client(start_server: Any, coturn: Coturn, tmp_path: Path) -> None:
    turn = {"uris": coturn.uris(), "shared_secret": coturn.secret, "ttl": "1h"}
    server: ServerProcess = start_server(
        {
            "web_client": {"enabled": True, "path": str(built_web_client())},
            "plugins": [{"module": "plugins.calls.CallsPlugin", "config": {"turn": turn}}],
        }
    )
    tag = secrets.token_hex(3)
    alice, bob = f"alice{tag}", f"bob{tag}"
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)

    result = run_browser_script(
        "web_calls.mjs", server.base_url, alice, bob, PASSWORD, str(shots), timeout=240
    )
    assert result["problems"] == []
    ids = result["userIds"]
    assert result["relaySetting"] == {"alice": "1", "bob": "1"}
    assert result["dmEncrypted"] == "End-to-end encrypted"

    # The video call rang on Bob's screen and connected.
    assert result["calling"] == "Calling…"
    assert result["ringing"] == {"title": "Incoming video call", "status": f"{alice} is calling you"}
    for side in ("alice", "bob"):
        first, later = result["media"]["first"][side], result["media"]["later"][side]
        # Relay only, as set: the pair in use starts at a relay candidate on coturn.
        assert first["policy"] == "relay", (side, first)
        assert first["pair"]["local"] == "relay" and validated(first["pair"]), (side, first)
        # Audio and video arrive, and keep arriving.
        assert first["inbound"]["audio"] > 0 and first["inbound"]["video"] > 0, (side, first)
        assert later["inbound"]["video"] > first["inbound"]["video"], side
        assert later["connectionState"] == "connected"
    assert result["duration"] in {f"0:0{n}" for n in range(2, 10)}
    assert result["remoteVideo"]["width"] > 0 and result["remoteVideo"]["time"] > 0
    # Mute and camera off stop sending Alice's microphone and camera.
    assert result["muted"] == {"audio": False, "video": False}

    # Notices, not messages: answered (with its duration), declined, unanswered; each as
    # the reader sees it (the caller's "no answer" is the callee's "missed").
    for side in ("alice", "bob"):
        answered = result["answeredNotice"][side]
        assert answered["outcome"] == "answered" and answered["text"].startswith("Video call · 0:0"), answered
    assert result["bubbles"] == 0
    assert result["voiceRinging"] == "Incoming voice call"
    assert result["declinedNotice"] == {
        "alice": {"outcome": "declined", "text": "Voice call declined"},
        "bob": {"outcome": "declined", "text": "Declined voice call"},
    }
    # The answered voice call: audio both ways through the relay, no camera button, no video.
    voice = result["voice"]
    for side in ("alice", "bob"):
        assert voice[side]["inbound"]["audio"] > 0 and "video" not in voice[side]["inbound"], voice[side]
        assert voice[side]["pair"]["local"] == "relay" and voice[side]["senders"] == {"audio": True}
    assert voice["title"] == "Voice call" and voice["buttons"] == ["Mute", "Hang up"]
    assert voice["videoShown"] is False
    for side in ("alice", "bob"):
        notice = result["voiceNotice"][side]
        assert notice["outcome"] == "answered" and notice["text"].startswith("Voice call · 0:0"), notice
    assert result["missedVideo"] == {
        "alice": {"outcome": "missed", "text": "Video call, no answer"},
        "bob": {"outcome": "missed", "text": "Missed video call"},
    }
    # On Bob's chat list the missed call is the chat's last line and one unread (the
    # invite's push rule); the rest of the call's signalling counts for nothing.
    assert result["bobsList"] == {"last": "Missed video call", "unread": "1"}

    # Each device logged the encrypted chat's four calls itself, the same calls.
    alice_log, bob_log = result["deviceLog"]["alice"], result["deviceLog"]["bob"]
    assert [(c["source"], c["what"], c["detail"][:12]) for c in alice_log] == [
        ("device", f"Video call with {bob}", "no answer"),
        ("device", f"Voice call with {bob}", "answered · 0"),
        ("device", f"Voice call with {bob}", "declined"),
        ("device", f"Video call with {bob}", "answered · 0"),
    ]
    assert [(c["source"], c["what"], c["detail"][:12]) for c in bob_log] == [
        ("device", f"Video call with {alice}", "missed"),
        ("device", f"Voice call with {alice}", "answered · 0"),
        ("device", f"Voice call with {alice}", "declined"),
        ("device", f"Video call with {alice}", "answered · 0"),
    ]
    assert [c["callId"] for c in alice_log] == [c["callId"] for c in bob_log]

    # The unencrypted chat: Bob missed Alice's call; the server's log has it for both.
    assert result["plainEncrypted"] == "Not encrypted"
    assert result["plainList"]["last"] == "Missed voice call"
    assert result["missedNotice"] == {
        "bob": {"outcome": "missed", "text": "Missed voice call"},
        "alice": {"outcome": "missed", "text": "Voice call, no answer"},
    }
    for side in ("alice", "bob"):
        log = result["fullLog"][side]
        assert [c["source"] for c in log] == ["server"] + ["device"] * 4, (side, log)
        assert log[0]["what"] == f"Voice call with {bob if side == 'alice' else alice}"
        assert log[0]["detail"] == ("no answer" if side == "alice" else "missed")
        assert log[1:] == result["deviceLog"][side]

    # The server saw the encrypted chat's calls only as ciphertext; the other one it logged.
    token = server.login(alice, PASSWORD)["access_token"]
    dm_types = event_types(server, token, result["dm"])
    assert not [t for t in dm_types if t.startswith("m.call.")], dm_types
    plain_types = event_types(server, token, result["plain"])
    assert "m.call.invite" in plain_types and "m.call.hangup" in plain_types
    calls = requests.get(
        server.url("/api/calls"), headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    assert [(c["chatId"], c["outcome"], c["type"]) for c in calls["calls"]] == [
        (result["plain"], "missed", "voice")
    ]
    assert calls["calls"][0]["callId"] == result["fullLog"]["alice"][0]["callId"]

    # coturn relayed for both users, on the credentials the server handed out.
    log = coturn.log_text()
    for user_id in ids.values():
        assert f":{user_id}>: incoming packet ALLOCATE processed, success" in log, user_id
