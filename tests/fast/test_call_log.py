"""The calls plugin's call log (plugins/calls), on a server whose clock the test moves:
outcomes and durations come from the events' timestamps, so they are exact here.

Calls are signalled as clients do (spec: Voice over IP; MatrixRTC membership state for group
calls) and read back through `GET /api/calls` as each user sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path, turn, until
from prometheus_client import generate_latest

from homeserver.core.event_stream import LAZY_SAVE_S
from plugins.calls.call_log import SWEEP_INTERVAL_S

VIDEO_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
VOICE_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
CALLS = {"module": "plugins.calls.CallsPlugin", "config": {}}


class Calls:
    """Two users in a DM-like room, signalling calls through room events."""

    def __init__(self, hs: Any, client: Client, clock: TestClock) -> None:
        self.hs, self.client, self.clock = hs, client, clock
        self.txn = 0

    async def send(self, who: dict[str, str], room_id: str, event_type: str, content: dict[str, Any]) -> None:
        self.txn += 1
        path = f"{room_path(room_id)}/send/{event_type}/t{self.txn}"
        await self.client.call("PUT", path, who["access_token"], content)

    async def invite(
        self, who: dict[str, str], room_id: str, call_id: str, sdp: str = VIDEO_SDP, **extra: Any
    ) -> None:
        content = {
            "call_id": call_id,
            "party_id": who["device_id"],
            "version": "1",
            "lifetime": 60_000,
            "offer": {"type": "offer", "sdp": sdp},
            **extra,
        }
        await self.send(who, room_id, "m.call.invite", content)

    async def answer(self, who: dict[str, str], room_id: str, call_id: str) -> None:
        content = {
            "call_id": call_id,
            "party_id": who["device_id"],
            "version": "1",
            "answer": {"type": "answer", "sdp": VOICE_SDP},
        }
        await self.send(who, room_id, "m.call.answer", content)

    async def hangup(
        self, who: dict[str, str], room_id: str, call_id: str, reason: str | None = None
    ) -> None:
        content: dict[str, Any] = {"call_id": call_id, "party_id": who["device_id"], "version": "1"}
        if reason is not None:
            content["reason"] = reason
        await self.send(who, room_id, "m.call.hangup", content)

    async def reject(self, who: dict[str, str], room_id: str, call_id: str) -> None:
        await self.send(
            who, room_id, "m.call.reject", {"call_id": call_id, "party_id": who["device_id"], "version": "1"}
        )

    async def log(self, who: dict[str, str], **params: str) -> tuple[int, dict[str, Any]]:
        return await self.client.start("GET", "/api/calls", who["access_token"], **params)

    async def log_until(
        self, who: dict[str, str], check: Callable[[list[dict[str, Any]]], bool], what: str
    ) -> list[dict[str, Any]]:
        """The user's log once `check` holds (the subscription runs behind the send path)."""
        for _ in range(2000):
            status, body = await self.log(who, limit="100")
            assert status == 200, body
            if check(body["calls"]):
                return list(body["calls"])
            await turn()
        raise AssertionError(f"never happened: {what}; last log {body}")


async def later(clock: TestClock, seconds: float) -> None:
    """Move the clock once the last request's work has settled: a commit still finishing
    when the clock jumps would take itself for a slow one and wait on the clock."""
    for _ in range(5):
        await turn()
    clock.advance(seconds)


def by_id(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["callId"]: c for c in calls}


async def dm(client: Client, a: dict[str, str], b: dict[str, str]) -> str:
    room_id = (
        await client.call(
            "POST", "/createRoom", a["access_token"], {"invite": [b["user_id"]], "is_direct": True}
        )
    )["room_id"]
    await client.call("POST", f"/join/{room_id}", b["access_token"], {})
    return str(room_id)


@pytest_twisted.ensureDeferred
async def test_outcomes_and_durations_of_one_to_one_calls(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, plugins=[CALLS])
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        room = await dm(client, alice, bob)
        calls = Calls(hs, client, clock)
        t0 = int(clock.seconds() * 1000)

        # Answered after 3 s, talked for 65 s, alice hangs up.
        await calls.invite(alice, room, "answered", invitee=bob["user_id"])
        await later(clock, 3)
        await calls.answer(bob, room, "answered")
        await later(clock, 65)
        await calls.hangup(alice, room, "answered", "user_hangup")
        # Bob declines (version 1 reject).
        await calls.invite(alice, room, "rejected", sdp=VOICE_SDP)
        await later(clock, 2)
        await calls.reject(bob, room, "rejected")
        # Bob hangs up on the ringing (how version 0 clients decline).
        await calls.invite(alice, room, "declined_v0")
        await calls.hangup(bob, room, "declined_v0")
        # Alice gives up after 10 s of ringing: bob missed it.
        await calls.invite(alice, room, "gave_up")
        await later(clock, 10)
        await calls.hangup(alice, room, "gave_up", "user_hangup")
        # Bob is in another call.
        await calls.invite(bob, room, "busy")
        await calls.hangup(alice, room, "busy", "user_busy")
        # Answered, then the connection failed.
        await calls.invite(alice, room, "failed")
        await calls.answer(bob, room, "failed")
        await later(clock, 1)
        await calls.hangup(bob, room, "failed", "ice_failed")

        log = by_id(
            await calls.log_until(
                bob, lambda c: len(c) == 6 and all(x["outcome"] for x in c), "six ended calls"
            )
        )
        answered = log["answered"]
        assert answered["outcome"] == "answered" and answered["type"] == "video"
        assert answered["callerId"] == alice["user_id"] and answered["calleeId"] == bob["user_id"]
        assert answered["direction"] == "incoming" and answered["state"] == "ended"
        assert answered["startedAt"] == t0 and answered["answeredAt"] == t0 + 3000
        assert answered["endedAt"] == t0 + 68_000 and answered["durationMs"] == 65_000
        assert log["rejected"]["outcome"] == "rejected" and log["rejected"]["type"] == "voice"
        assert log["rejected"]["durationMs"] == 0 and log["rejected"]["answeredAt"] is None
        assert log["declined_v0"]["outcome"] == "rejected"
        assert log["gave_up"]["outcome"] == "missed"
        assert log["busy"]["outcome"] == "busy" and log["busy"]["direction"] == "outgoing"
        assert log["failed"]["outcome"] == "failed" and log["failed"]["durationMs"] == 1000
        # Newest first.
        assert [c["callId"] for c in await calls.log_until(alice, lambda c: len(c) == 6, "alice's log")] == [
            "failed",
            "busy",
            "gave_up",
            "declined_v0",
            "rejected",
            "answered",
        ]

        # The server's metrics count them: calls seen ending, and the log's totals once the
        # sweep (every SWEEP_INTERVAL_S) has refreshed them.
        await later(clock, SWEEP_INTERVAL_S)
        counts = {"answered": 1, "rejected": 2, "missed": 1, "busy": 1, "failed": 1}
        lines = [
            f'homeserver_plugin_calls_calls_{metric}{{outcome="{outcome}"}} {n}.0'
            for outcome, n in counts.items()
            for metric in ("ended_total", "logged")
        ]
        await until(
            lambda: all(line in generate_latest(hs.metrics).decode() for line in lines), "the metrics"
        )

        # A second hangup (or a late answer) changes nothing.
        await calls.hangup(bob, room, "answered", "ice_failed")
        await calls.answer(bob, room, "gave_up")
        await calls.invite(alice, room, "marker")
        log = by_id(await calls.log_until(alice, lambda c: "marker" in by_id(c), "the marker call"))
        assert log["answered"]["outcome"] == "answered" and log["answered"]["durationMs"] == 65_000
        assert log["gave_up"]["outcome"] == "missed" and log["gave_up"]["answeredAt"] is None
        assert log["marker"]["state"] == "ringing" and log["marker"]["outcome"] is None
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_an_invite_nobody_answers_is_missed_when_its_lifetime_ends(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, plugins=[CALLS])
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        room = await dm(client, alice, bob)
        calls = Calls(hs, client, clock)
        t0 = int(clock.seconds() * 1000)
        await calls.invite(alice, room, "unanswered", lifetime=30_000)
        ringing = await calls.log_until(bob, lambda c: len(c) == 1, "the invite in bob's log")
        # No invitee in a two-member room: the other member is the callee.
        assert ringing[0]["state"] == "ringing" and ringing[0]["calleeId"] == bob["user_id"]
        await later(clock, 29)
        await later(clock, SWEEP_INTERVAL_S - 29 % SWEEP_INTERVAL_S)  # a sweep inside the lifetime
        for _ in range(50):
            await turn()
        status, body = await calls.log(bob)
        assert body["calls"][0]["state"] == "ringing", "missed before its lifetime ended"
        await later(clock, SWEEP_INTERVAL_S)
        log = await calls.log_until(bob, lambda c: c[0]["outcome"] == "missed", "the invite missed")
        assert log[0]["endedAt"] == t0 + 30_000 and log[0]["durationMs"] == 0
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_user_reads_only_their_own_calls_page_by_page(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, plugins=[CALLS])
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        carol = await client.register(hs, "carol")
        room = await dm(client, alice, bob)
        calls = Calls(hs, client, clock)
        for i in range(5):
            await calls.invite(alice, room, f"call{i}", invitee=bob["user_id"])
            await calls.hangup(alice, room, f"call{i}")
        await calls.log_until(bob, lambda c: len(c) == 5, "five calls")

        status, first = await calls.log(bob, limit="2")
        assert status == 200 and [c["callId"] for c in first["calls"]] == ["call4", "call3"]
        status, second = await calls.log(bob, limit="2", before=first["before"])
        assert [c["callId"] for c in second["calls"]] == ["call2", "call1"]
        status, last = await calls.log(bob, limit="2", before=second["before"])
        assert [c["callId"] for c in last["calls"]] == ["call0"] and "before" not in last

        # Carol is in no such room: nothing of it, and asking for it by chat is refused.
        status, body = await calls.log(carol)
        assert status == 200 and body == {"calls": []}
        status, body = await calls.log(carol, chatId=room)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, body = await client.start("GET", "/api/calls")
        assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
        for bad in ({"before": "abc"}, {"limit": "0"}, {"limit": "x"}):
            status, body = await calls.log(bob, **bad)
            assert status == 400 and body["errcode"] == "M_INVALID_PARAM", (bad, body)

        # A group room: an invite without invitee rings every member, only them.
        group = (await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"}))[
            "room_id"
        ]
        await client.call("POST", f"/join/{group}", carol["access_token"], {})
        await calls.invite(alice, group, "group_ring")
        log = await calls.log_until(carol, lambda c: len(c) == 1, "the ring in carol's log")
        assert log[0]["calleeId"] == carol["user_id"]  # the only other member
        status, body = await calls.log(bob, chatId=group)
        assert status == 403
        status, body = await calls.log(bob)
        assert "group_ring" not in by_id(body["calls"])
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_group_calls_from_matrixrtc_membership_state(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, plugins=[CALLS])
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        room = (await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"}))[
            "room_id"
        ]
        await client.call("POST", f"/join/{room}", bob["access_token"], {})
        # Members may send their own call membership state (Element Call needs this).
        levels = await client.call(
            "GET", f"{room_path(room)}/state/m.room.power_levels/", alice["access_token"]
        )
        levels.setdefault("events", {})["org.matrix.msc3401.call.member"] = 0
        await client.call(
            "PUT", f"{room_path(room)}/state/m.room.power_levels/", alice["access_token"], levels
        )

        async def membership(who: dict[str, str], content: dict[str, Any]) -> None:
            key = f"_{who['user_id']}_{who['device_id']}"
            path = f"{room_path(room)}/state/org.matrix.msc3401.call.member/{key}"
            await client.call("PUT", path, who["access_token"], content)

        def joined(who: dict[str, str]) -> dict[str, Any]:
            return {
                "application": "m.call",
                "call_id": "",
                "scope": "m.room",
                "device_id": who["device_id"],
                "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
                "foci_preferred": [],
            }

        t0 = int(clock.seconds() * 1000)
        await membership(alice, joined(alice))
        await later(clock, 5)
        await membership(bob, joined(bob))
        await later(clock, 60)
        await membership(alice, {})
        await later(clock, 1)
        await membership(bob, {})
        # Alice alone: nobody came.
        await later(clock, 10)
        await membership(alice, joined(alice))
        await later(clock, 20)
        await membership(alice, {})

        log = await calls_until(client, alice, lambda c: len(c) == 2 and all(x["outcome"] for x in c))
        alone, together = log
        assert (
            together["group"]
            and together["outcome"] == "answered"
            and together["callerId"] == alice["user_id"]
        )
        assert together["startedAt"] == t0 and together["answeredAt"] == t0 + 5000
        assert together["endedAt"] == t0 + 66_000 and together["durationMs"] == 61_000
        assert alone["outcome"] == "missed" and alone["durationMs"] == 0
        # The membership state passes through to the other members' sync, as clients need it.
        status, synced = await client.sync(bob["access_token"])
        room_sync = synced["rooms"]["join"][room]
        seen = room_sync["timeline"]["events"] + room_sync["state"]["events"]
        members = [e for e in seen if e["type"] == "org.matrix.msc3401.call.member"]
        assert {e["state_key"] for e in members} == {
            f"_{u['user_id']}_{u['device_id']}" for u in (alice, bob)
        }
        assert any(e["content"].get("focus_active", {}).get("type") == "livekit" for e in members)
        bobs = await calls_until(client, bob, lambda c: len(c) == 1)
        assert bobs[0]["callId"] == together["callId"] and bobs[0]["direction"] == "incoming"
    finally:
        await hs.stop(None)


async def calls_until(
    client: Client, who: dict[str, str], check: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    return await Calls(None, client, TestClock()).log_until(who, check, "the group calls")


@pytest_twisted.ensureDeferred
async def test_messages_cost_the_call_log_no_position_writes(tmp_path: Path) -> None:
    """The log subscribes with `wants`: a batch with no call event is never handed over, so
    it writes no hand-over record and no position (two writes a message before); the
    position follows in one lazy write."""
    clock = TestClock()
    hs = await make_server(tmp_path, clock, plugins=[CALLS])
    client = Client(hs)
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        room = await dm(client, alice, bob)
        calls = Calls(hs, client, clock)
        consumer = next(c for c in hs.stream.consumers() if c.name == "plugin.calls.call_log")
        await consumer.caught_up(0)
        await later(clock, LAZY_SAVE_S)
        await until(lambda: consumer.position == hs.stream.position, "the log caught up")
        saves: list[tuple[int, int]] = []
        store = hs.storage.stream_consumers
        save = store.save

        def counting(name: str, position: int, handed_upto: int, now_ms: int) -> Any:
            if name == consumer.name:
                saves.append((position, handed_upto))
            return save(name, position, handed_upto, now_ms)

        store.save = counting  # type: ignore[method-assign]
        for n in range(5):
            await calls.send(alice, room, "m.room.message", {"msgtype": "m.text", "body": f"hi {n}"})
        await until(lambda: consumer.position == hs.stream.position, "the messages passed")
        assert saves == []
        await later(clock, LAZY_SAVE_S)
        await until(lambda: len(saves) == 1, "the lazy save")
        assert saves == [(hs.stream.position, hs.stream.position)]
        # A call event is still handed over, and recorded before it is.
        await calls.invite(alice, room, "after")
        await calls.log_until(bob, lambda c: [x["callId"] for x in c] == ["after"], "the call logged")
        assert len(saves) >= 2
    finally:
        await hs.stop(None)
