"""Joining a room of another server: how many servers one request may make us ask, for how
long, and that one user's attempt does not hold another's (core/federation/membership.py,
`remote_membership`; docs/federation.md, "Joining a room of another server").

The remote servers are a stand-in for the federation client (the seam the handshake calls):
each named server is down, hangs until cancelled, or answers make_join 404. Real servers
answer joins in tests/test_federation_join.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest_twisted
from harness import CS, Client, TestClock, make_server, turn, until
from remote_server import THEM, settle, signed_pdu, trust_them
from twisted.internet.defer import Deferred

from homeserver.core.federation.client import RemoteError
from homeserver.core.federation.membership import MAX_ATTEMPT_S, MAX_SERVERS_TRIED
from homeserver.errors import RemoteServerError

ROOM = "!far:far.example"


class Remotes:
    """Servers by name: "down" (cannot be reached), "hang" (no answer until cancelled) or
    "unknown" (the room is not known there); `asked` lists each make_* request's server."""

    def __init__(self, modes: dict[str, str], default: str = "down") -> None:
        self.modes = modes
        self.default = default
        self.asked: list[str] = []
        self.hanging: list[Deferred[Any]] = []

    async def get_json(self, destination: str, path: str, query: dict[str, Any] | None = None) -> Any:
        self.asked.append(destination)
        mode = self.modes.get(destination, self.default)
        if mode == "hang":
            held: Deferred[Any] = Deferred()
            self.hanging.append(held)
            return await held
        if mode == "unknown":
            raise RemoteError(destination, 404, "M_NOT_FOUND", "Unknown room")
        raise RemoteServerError(f"Cannot reach {destination}")

    async def put_json(self, destination: str, path: str, body: Any) -> Any:
        raise AssertionError("no make_join answered, so no send_join")


def join(client: Client, token: str, room: str, via: list[str]) -> Deferred[tuple[int, dict[str, Any]]]:
    query = "&".join(f"via={quote(v, safe='')}" for v in via)
    return client.start("POST", f"{CS}/join/{quote(room)}?{query}", token, {})


@pytest_twisted.ensureDeferred
async def test_a_join_naming_many_servers_asks_only_the_first_few(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    remotes = Remotes({})
    hs.federation.membership.client = remotes  # type: ignore[assignment]
    try:
        alice = await client.register(hs, "alice")
        named = [f"s{i}.example" for i in range(2000)]  # as many as one request head holds
        # Repeats, ourselves and names that are not server names are not asked and not counted.
        via = ["s0.example", "fast.test", "not a server", "s0.example", "x:99999", *named]
        status, body = await join(client, alice["access_token"], ROOM, via)
        assert status == 502 and body["errcode"] == "M_UNKNOWN", body
        assert remotes.asked == named[:MAX_SERVERS_TRIED]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_join_naming_no_usable_server_is_not_found_without_asking(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    remotes = Remotes({})
    hs.federation.membership.client = remotes  # type: ignore[assignment]
    try:
        alice = await client.register(hs, "alice")
        # A room ID of v12 names no server: only `via` can, and none of these is a server.
        status, body = await join(
            client, alice["access_token"], "!opaqueroomid", ["bad name", "[::1", "a:0", "x" * 300]
        )
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
        assert remotes.asked == []
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_slow_join_holds_neither_another_users_join_nor_itself_for_long(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    remotes = Remotes({"slow1.example": "hang", "slow2.example": "hang"}, default="unknown")
    hs.federation.membership.client = remotes  # type: ignore[assignment]
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        slow = join(client, alice["access_token"], ROOM, ["slow1.example", "slow2.example"])
        await until(lambda: remotes.asked == ["slow1.example"], "alice's join asks its first server")

        # Bob's join to the same room is answered while Alice's still waits on her server.
        answered = join(client, bob["access_token"], ROOM, ["other.example"])
        await until(lambda: answered.called, "bob's join is answered while alice's waits")
        status, body = await answered
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
        assert not slow.called

        # Alice's attempt ends at the bound, however many of her servers still hang.
        clock.advance(MAX_ATTEMPT_S - 1)
        for _ in range(20):
            await turn()
        assert not slow.called and remotes.asked == ["slow1.example", "other.example", "far.example"]
        clock.advance(1)
        await until(lambda: slow.called, "alice's join is answered at the bound")
        status, body = await slow
        assert status == 502 and "did not answer in time" in body["error"], body
        # slow2 was never reached (far.example, of the room ID, was Bob's second try).
        assert remotes.asked == ["slow1.example", "other.example", "far.example"]
    finally:
        for held in remotes.hanging:
            held.cancel()  # so that stopping does not wait on them
        await hs.stop(None)


class Resident:
    """THEM, holding a public v10 room: answers make_join with a template on the room's
    creator join and send_join with the room's state. `hold` names users whose send_join
    waits until released."""

    def __init__(self, hold: set[str]) -> None:
        self.hold = hold
        self.held: dict[str, Deferred[None]] = {}
        self.make_joins: list[str] = []
        create_id, create = signed_pdu(
            RACE_ROOM,
            CREATOR,
            "m.room.create",
            {"room_version": "10", "creator": CREATOR},
            [],
            [],
            1,
            state_key="",
        )
        join_id, join = signed_pdu(
            RACE_ROOM,
            CREATOR,
            "m.room.member",
            {"membership": "join"},
            [create_id],
            [create_id],
            2,
            state_key=CREATOR,
        )
        pl = {"users": {CREATOR: 100}, "users_default": 0}
        pl_id, power = signed_pdu(
            RACE_ROOM, CREATOR, "m.room.power_levels", pl, [join_id], [create_id, join_id], 3, state_key=""
        )
        rules_id, rules = signed_pdu(
            RACE_ROOM,
            CREATOR,
            "m.room.join_rules",
            {"join_rule": "public"},
            [pl_id],
            [create_id, join_id, pl_id],
            4,
            state_key="",
        )
        self.state = [create, join, power, rules]
        self.last, self.auth = rules_id, [create_id, pl_id, rules_id]

    async def get_json(self, destination: str, path: str, query: dict[str, Any] | None = None) -> Any:
        user_id = unquote(path.rsplit("/", 1)[1])
        self.make_joins.append(user_id)
        template = {
            "room_id": RACE_ROOM,
            "sender": user_id,
            "type": "m.room.member",
            "state_key": user_id,
            "content": {"membership": "join"},
            "depth": 5,
            "prev_events": [self.last],
            "auth_events": self.auth,
        }
        return {"event": template, "room_version": "10"}

    async def put_json(self, destination: str, path: str, body: Any) -> Any:
        if body["sender"] in self.hold:
            self.held[body["sender"]] = held = Deferred()
            await held
        return {"origin": THEM, "event": body, "state": self.state, "auth_chain": self.state}


RACE_ROOM = f"!race:{THEM}"
CREATOR = f"@creator:{THEM}"


@pytest_twisted.ensureDeferred
async def test_two_joins_at_once_store_the_room_once_and_each_join_once(tmp_path: Path) -> None:
    """Alice's send_join is slow; Bob's join runs meanwhile (before, it waited for hers) and
    puts the room here; Alice's then goes into that room as one of its events, not by
    building the room again from her answer."""
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    await trust_them(hs, clock)
    client = Client(hs)
    resident = Resident(hold={"@alice:fast.test"})
    hs.federation.membership.client = resident  # type: ignore[assignment]
    try:
        alice = await client.register(hs, "alice")
        bob = await client.register(hs, "bob")
        slow = join(client, alice["access_token"], RACE_ROOM, [THEM])
        await until(lambda: "@alice:fast.test" in resident.held, "alice's send_join is held")

        fast = join(client, bob["access_token"], RACE_ROOM, [THEM])
        bob_status, _ = await settle(clock, fast)
        assert bob_status == 200 and not slow.called

        resident.held["@alice:fast.test"].callback(None)
        alice_status, answer = await settle(clock, slow)
        assert alice_status == 200, answer

        head = await hs.room_heads.get(RACE_ROOM)
        assert head is not None
        assert set(head.members("join")) == {CREATOR, "@alice:fast.test", "@bob:fast.test"}
        # Each of them joined once: one m.room.member join event each in Bob's timeline.
        page = await client.call(
            "GET", f"/rooms/{quote(RACE_ROOM)}/messages?dir=b&limit=50", bob["access_token"]
        )
        joins = [e["state_key"] for e in page["chunk"] if e["type"] == "m.room.member"]
        assert sorted(joins) == sorted(set(joins)) and "@alice:fast.test" in joins
    finally:
        for held in resident.held.values():
            if not held.called:
                held.cancel()  # so that stopping does not wait on it
        await hs.stop(None)
