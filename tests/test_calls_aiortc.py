"""A real 1:1 call, end to end: two aiortc peers, each a Matrix user of our server, signal
through room events and /sync as the spec's Voice over IP section describes (version 1:
m.call.invite, m.call.candidates, m.call.answer, m.call.select_answer, m.call.hangup), with
ICE forced to relay-only through a real coturn (tests/coturn.py) on the credentials the
calls plugin hands out. Audio and video frames flow both ways; a hangup ends the call on
both sides, and both users' call logs show it answered.

Each peer sends media it can be recognised by (a video brightness, an audio tone level) so
the test sees the other side's frames, not its own or a decoder's blank ones. The peers run
on one asyncio loop in a worker thread; HTTP goes through requests on executor threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import secrets
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import pytest
import requests
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from conftest import ServerProcess
from coturn import Coturn

CLIENT = "/_matrix/client/v3"
LUMA = {"alice": 200, "bob": 40}  # each peer's video brightness (Y plane)
TONE = {"alice": 8000, "bob": 3000}  # each peer's audio square-wave amplitude


class Picture(VideoStreamTrack):
    def __init__(self, luma: int) -> None:
        super().__init__()
        self.luma = luma

    async def recv(self) -> Any:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(width=160, height=120, format="yuv420p")
        frame.planes[0].update(bytes([self.luma]) * frame.planes[0].buffer_size)
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    """A 400 Hz square wave at 48 kHz, 20 ms a frame."""

    def __init__(self, amplitude: int) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.pts = 0
        self.loop_start: float | None = None

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self.loop_start is None:
            self.loop_start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self.loop_start + self.pts / 48000 - loop.time()))
        samples = 960
        period = 120
        values = [
            self.amplitude if (self.pts + i) % period < period // 2 else -self.amplitude
            for i in range(samples)
        ]
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(struct.pack(f"<{samples}h", *values))
        frame.pts, frame.sample_rate, frame.time_base = self.pts, 48000, fractions.Fraction(1, 48000)
        self.pts += samples
        return frame


class Received:
    """What a peer got from the other side: video frames and their brightness, audio level."""

    def __init__(self) -> None:
        self.video_frames = 0
        self.luma: list[float] = []
        self.audio_frames = 0
        self.audio_peak = 0

    async def consume(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.video_frames += 1
                    self.luma.append(mean_luma(frame))
                else:
                    self.audio_frames += 1
                    data = bytes(frame.planes[0])
                    count = len(data) // 2
                    peak = max(abs(v) for v in struct.unpack(f"<{count}h", data[: count * 2])) if count else 0
                    self.audio_peak = max(self.audio_peak, peak)
        except MediaStreamError:
            return


def mean_luma(frame: Any) -> float:
    """The mean of the Y plane's pixels (each row is padded to `line_size` bytes)."""
    plane = frame.planes[0]
    data = bytes(plane)
    rows = [data[y * plane.line_size : y * plane.line_size + frame.width] for y in range(frame.height)]
    return sum(sum(row) for row in rows) / (frame.width * frame.height)


class Peer:
    """One Matrix user with an aiortc peer connection, signalling through the server."""

    def __init__(self, name: str, server: ServerProcess, session: dict[str, Any], room_id: str) -> None:
        self.name, self.server, self.session, self.room_id = name, server, session, room_id
        self.user_id: str = session["user_id"]
        self.party_id: str = session["device_id"]
        self.since: str | None = None
        self.txn = 0
        self.received = Received()
        self.pc: RTCPeerConnection | None = None
        self.consumers: list[asyncio.Task[None]] = []

    async def http(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        def do() -> dict[str, Any]:
            r = requests.request(
                method,
                self.server.url(path),
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {self.session['access_token']}"},
                timeout=40,
            )
            assert r.status_code == 200, r.text
            result: dict[str, Any] = r.json()
            return result

        return await asyncio.get_running_loop().run_in_executor(None, do)

    async def send(self, event_type: str, content: dict[str, Any]) -> None:
        self.txn += 1
        path = f"{CLIENT}/rooms/{quote(self.room_id)}/send/{event_type}/{self.name}{self.txn}"
        await self.http("PUT", path, {"version": "1", "party_id": self.party_id, **content})

    async def next_call_event(self, event_type: str, call_id: str, timeout: float = 20) -> dict[str, Any]:
        """The next `event_type` of the call from the other side, read from /sync."""

        async def wait() -> dict[str, Any]:
            while True:
                params = {"timeout": "10000"} if self.since else {"timeout": "0"}
                if self.since:
                    params["since"] = self.since
                body = await self.http("GET", f"{CLIENT}/sync", **params)
                self.since = body["next_batch"]
                room = body.get("rooms", {}).get("join", {}).get(self.room_id, {})
                for event in room.get("timeline", {}).get("events", []):
                    content = event.get("content", {})
                    if (
                        event["type"] == event_type
                        and event["sender"] != self.user_id
                        and content.get("call_id") == call_id
                    ):
                        return dict(event)

        return await asyncio.wait_for(wait(), timeout)

    async def open(self, turn: dict[str, Any]) -> RTCPeerConnection:
        ice = RTCIceServer(urls=turn["uris"], username=turn["username"], credential=turn["password"])
        config = RTCConfiguration(iceServers=[ice], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
        pc = RTCPeerConnection(config)
        pc.addTrack(Tone(TONE[self.name]))
        pc.addTrack(Picture(LUMA[self.name]))

        @pc.on("track")
        def on_track(track: Any) -> None:
            self.consumers.append(asyncio.ensure_future(self.received.consume(track)))

        self.pc = pc
        return pc


def local_candidates(sdp: str) -> list[dict[str, Any]]:
    """The candidates of an SDP (aiortc gathers them all before the description is set), as
    m.call.candidates carries them."""
    found, mid, index = [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            found.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
    return found


def selected_pair_types(pc: RTCPeerConnection) -> set[tuple[str, str]]:
    """(local, remote) candidate types of the pairs ICE nominated on each transport."""
    pairs = set()
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport._connection  # aioice.Connection
        for pair in connection._nominated.values():
            pairs.add((pair.local_candidate.type, pair.remote_candidate.type))
    return pairs


async def until(condition: Any, what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def a_call(server: ServerProcess, alice: Peer, bob: Peer) -> dict[str, Any]:
    call_id = f"call-{secrets.token_hex(4)}"
    turn_alice = await alice.http("GET", f"{CLIENT}/voip/turnServer")
    turn_bob = await bob.http("GET", f"{CLIENT}/voip/turnServer")
    # Bob's first sync: from now on he sees what is new.
    bob_first = await bob.http("GET", f"{CLIENT}/sync", timeout="0")
    bob.since = bob_first["next_batch"]
    alice_first = await alice.http("GET", f"{CLIENT}/sync", timeout="0")
    alice.since = alice_first["next_batch"]

    # Alice: offer, invite, candidates.
    pc_a = await alice.open(turn_alice)
    await pc_a.setLocalDescription(await pc_a.createOffer())
    offer = pc_a.localDescription
    await alice.send(
        "m.call.invite",
        {
            "call_id": call_id,
            "lifetime": 60000,
            "invitee": bob.user_id,
            "offer": {"type": offer.type, "sdp": offer.sdp},
        },
    )
    # aiortc gathers before the offer, so its SDP holds the candidates already; they go out
    # as m.call.candidates too, as a trickling client's would (the test checks they are relays).
    candidates_a = local_candidates(offer.sdp)
    await alice.send(
        "m.call.candidates", {"call_id": call_id, "candidates": candidates_a + [{"candidate": ""}]}
    )

    # Bob: rings, answers.
    invite = await bob.next_call_event("m.call.invite", call_id)
    assert invite["content"]["invitee"] == bob.user_id
    pc_b = await bob.open(turn_bob)
    await pc_b.setRemoteDescription(RTCSessionDescription(**invite["content"]["offer"]))
    await pc_b.setLocalDescription(await pc_b.createAnswer())
    answer = pc_b.localDescription
    await bob.send("m.call.answer", {"call_id": call_id, "answer": {"type": answer.type, "sdp": answer.sdp}})
    await bob.send(
        "m.call.candidates",
        {"call_id": call_id, "candidates": local_candidates(answer.sdp) + [{"candidate": ""}]},
    )

    # Alice: takes Bob's answer and says so.
    got_answer = await alice.next_call_event("m.call.answer", call_id)
    await alice.send(
        "m.call.select_answer", {"call_id": call_id, "selected_party_id": got_answer["content"]["party_id"]}
    )
    await pc_a.setRemoteDescription(RTCSessionDescription(**got_answer["content"]["answer"]))

    await until(
        lambda: pc_a.connectionState == "connected" and pc_b.connectionState == "connected", "connected"
    )
    await until(
        lambda: all(p.received.video_frames >= 10 and p.received.audio_frames >= 20 for p in (alice, bob)),
        "audio and video frames both ways",
    )
    pairs = {"alice": selected_pair_types(pc_a), "bob": selected_pair_types(pc_b)}

    # Alice hangs up; Bob sees it through /sync and ends his side too.
    await alice.send("m.call.hangup", {"call_id": call_id, "reason": "user_hangup"})
    await pc_a.close()
    hangup = await bob.next_call_event("m.call.hangup", call_id)
    await pc_b.close()
    for peer in (alice, bob):
        await asyncio.gather(*peer.consumers)
    return {
        "call_id": call_id,
        "pairs": pairs,
        "states": (pc_a.connectionState, pc_b.connectionState),
        "hangup_reason": hangup["content"]["reason"],
        "offer_candidates": candidates_a,
    }


def call_log(server: ServerProcess, session: dict[str, Any]) -> list[dict[str, Any]]:
    """The user's call log once its newest call has ended (the log follows the event stream)."""
    deadline = time.monotonic() + 10
    while True:
        r = requests.get(
            server.url("/api/calls"),
            headers={"Authorization": f"Bearer {session['access_token']}"},
            timeout=10,
        )
        calls: list[dict[str, Any]] = r.json()["calls"]
        if (calls and calls[0]["outcome"]) or time.monotonic() > deadline:
            return calls
        time.sleep(0.05)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    turn = Coturn(tmp_path / "coturn", secret=secrets.token_hex(16)).start()
    yield turn
    turn.stop()


def test_two_aiortc_peers_call_through_the_server_and_coturn(start_server: Any, coturn: Coturn) -> None:
    turn = {"uris": coturn.uris()[:1], "shared_secret": coturn.secret, "ttl": "1h"}
    server: ServerProcess = start_server(
        {"plugins": [{"module": "plugins.calls.CallsPlugin", "config": {"turn": turn}}]}
    )
    alice_s, bob_s = server.register("alice"), server.register("bob")
    headers = {"Authorization": f"Bearer {alice_s['access_token']}"}
    room = requests.post(
        server.url(f"{CLIENT}/createRoom"),
        json={"invite": [bob_s["user_id"]], "is_direct": True},
        headers=headers,
        timeout=10,
    ).json()["room_id"]
    joined = requests.post(
        server.url(f"{CLIENT}/join/{quote(room)}"),
        json={},
        headers={"Authorization": f"Bearer {bob_s['access_token']}"},
        timeout=10,
    )
    assert joined.status_code == 200
    alice, bob = Peer("alice", server, alice_s, room), Peer("bob", server, bob_s, room)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, a_call(server, alice, bob)).result(90)

    # Relay only: every offered candidate is a relay on coturn, and so is every nominated pair.
    assert result["offer_candidates"] and all(
        " typ relay" in c["candidate"] for c in result["offer_candidates"]
    )
    assert result["pairs"]["alice"] == {("relay", "relay")} and result["pairs"]["bob"] == {("relay", "relay")}
    # Each side got the other's media: its brightness and its tone, not its own.
    for me, other in ((alice, "bob"), (bob, "alice")):
        luma = sorted(me.received.luma)[len(me.received.luma) // 2]
        assert abs(luma - LUMA[other]) < 20, (me.name, luma)
        assert TONE[other] * 0.5 < me.received.audio_peak < TONE[other] * 1.6, (
            me.name,
            me.received.audio_peak,
        )
    assert result["states"] == ("closed", "closed") and result["hangup_reason"] == "user_hangup"
    log = coturn.log_text()
    # coturn relayed for both users, on the credentials the server gave them.
    for session in (alice_s, bob_s):
        for step in ("ALLOCATE", "CHANNEL_BIND"):
            assert f":{session['user_id']}>: incoming packet {step} processed, success" in log, (
                step,
                log[-3000:],
            )

    # The call log of both users: answered.
    for session in (alice_s, bob_s):
        deadline_calls = requests.get(
            server.url("/api/calls"),
            headers={"Authorization": f"Bearer {session['access_token']}"},
            timeout=10,
        ).json()["calls"]
        assert [(c["callId"], c["type"]) for c in deadline_calls] == [(result["call_id"], "video")]
