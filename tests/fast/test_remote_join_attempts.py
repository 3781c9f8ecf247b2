"""Joining a room of another server: how many servers one request may make us ask, for how
long, and that one user's attempt does not hold another's (core/federation/membership.py,
`remote_membership`; docs/federation.md, "Joining a room of another server").

The remote servers are a stand-in for the federation client (the seam the handshake calls):
each named server is down, hangs until cancelled, or answers make_join 404. Real servers
answer joins in tests/test_federation_join.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from harness import CS, Client, TestClock, make_server, turn, until
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
