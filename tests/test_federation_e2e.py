"""Federation end to end across our own servers over TLS (tests/federation_harness.py), in
both roles (a room on A joined from B, and a room on B joined from A): join, messages both
ways in order in each side's /sync, typing and read receipts, a displayname change, kick and
ban; a third server's join handed on by the room's host; a kill -9 with catch-up after it.
The scenarios themselves are in tests/federation_e2e.py (shared with the Synapse module)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import _launch
from federation_e2e import Member, displayname_change, join_and_talk, kick_and_ban, typing_and_receipts
from federation_harness import FederatedServer, TestCA, signed_request, signing_key, start_federated_server
from js_runner import node_or_skip, run_script

from homeserver.events.hashing import compute_event_id
from homeserver.events.signing import sign_event

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[FederatedServer, FederatedServer, FederatedServer]]:
    started = [start_federated_server(tmp_path_factory.mktemp(f"hs-{n}"), ca) for n in "abc"]
    yield started[0], started[1], started[2]
    for server in started:
        server.stop()


def member(server: FederatedServer, name: str) -> Member:
    return Member(server.process.url(""), server.process.register(name))


@pytest.mark.parametrize("role", ["room on A", "room on B"])
def test_two_of_ours_end_to_end(
    servers: tuple[FederatedServer, FederatedServer, FederatedServer], role: str
) -> None:
    a, b, _ = servers
    host_server, guest_server = (a, b) if role == "room on A" else (b, a)
    n = role[-1].lower()
    host, guest = member(host_server, f"host{n}"), member(guest_server, f"guest{n}")
    room_id = join_and_talk(host, guest, host_server.server_name)
    typing_and_receipts(host, guest, room_id)
    displayname_change(host, guest, room_id)
    kick_and_ban(host, member(guest_server, f"victim{n}"), room_id, host_server.server_name)


def test_the_host_hands_a_third_servers_join_on(
    servers: tuple[FederatedServer, FederatedServer, FederatedServer],
) -> None:
    a, b, c = servers
    alice, bob, carol = member(a, "alice3"), member(b, "bob3"), member(c, "carol3")
    room_id = join_and_talk(alice, bob, a.server_name)
    carol.ok("POST", f"/join/{quote(room_id)}", {}, server_name=a.server_name)
    # Carol's join went to A alone (send_join): B hears of it only because A hands it on.
    bob.wait("carol's join", lambda: bob.member_event(room_id, carol.user_id))
    carol.say(room_id, "carol here")
    bob.wait_texts(room_id, ["carol here"])


def _as_server(method: str, origin: FederatedServer, to: FederatedServer, path: str, body: Any = None) -> Any:
    """A federation request signed with `origin`'s key, answered 200."""
    r = signed_request(method, origin, to, path, body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_join_only_the_host_got_reaches_the_rooms_other_servers(
    servers: tuple[FederatedServer, FederatedServer, FederatedServer],
) -> None:
    """C's handshake done by hand, so C's own sender never sends the join: B sees it only if
    A, which took it by send_join, hands it on."""
    a, b, c = servers
    alice, bob = member(a, "alice_h"), member(b, "bob_h")
    room_id = join_and_talk(alice, bob, a.server_name)
    dave = f"@dave:{c.server_name}"
    template = _as_server(
        "GET", c, a, f"/_matrix/federation/v1/make_join/{quote(room_id)}/{quote(dave)}?ver=10"
    )
    key = signing_key(c)
    join = sign_event(
        {**template["event"], "origin_server_ts": int(time.time() * 1000)}, c.server_name, key, "10"
    )
    event_id = compute_event_id(join, "10")
    _as_server("PUT", c, a, f"/_matrix/federation/v2/send_join/{quote(room_id)}/{quote(event_id)}", join)
    bob.wait("dave's join, from A", lambda: bob.member_event(room_id, dave))
    assert bob.ok("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"].keys() == {
        alice.user_id,
        bob.user_id,
        dave,
    }


@pytest.mark.parametrize("killed", ["guest", "host"])
def test_kill_9_then_catch_up(
    servers: tuple[FederatedServer, FederatedServer, FederatedServer], killed: str
) -> None:
    a, b, _ = servers
    host, guest = member(a, f"host_k{killed}"), member(b, f"guest_k{killed}")
    room_id = join_and_talk(host, guest, a.server_name)
    down_server, up, watcher = (b, host, guest) if killed == "guest" else (a, guest, host)
    down_server.process.stop(signal.SIGKILL)
    # Sent while the other side is down: accepted here, queued for it.
    missed = [f"while down {i}" for i in range(5)]
    for text in missed:
        up.say(room_id, text)
    process = down_server.process
    down_server.process = _launch(
        Path(process.config_path).parent, process.port, process.config_path, process.config, None
    )
    watcher.wait_texts(room_id, missed)
    after = "after the restart"
    watcher.say(room_id, after)
    up.wait_texts(room_id, [*missed, after])
    # None twice on either side, over a fresh full sync too.
    fresh = Member(watcher.base_url, {"user_id": watcher.user_id, "access_token": watcher.token})
    fresh.sync_once(0)
    assert [t for t in fresh.texts(room_id) if t.startswith("while down") or t == after] == [*missed, after]


def test_create_room_invites_a_user_of_another_server(
    servers: tuple[FederatedServer, FederatedServer, FederatedServer],
) -> None:
    """createRoom's `invite` naming a remote user (what clients do for a DM): the room is
    made, the invite reaches the other server, and the invitee can join."""
    a, b, _ = servers
    alice, bob = member(a, "alice_dm"), member(b, "bob_dm")
    body = {"preset": "trusted_private_chat", "is_direct": True, "invite": [bob.user_id]}
    room_id = alice.ok("POST", "/createRoom", body)["room_id"]
    invite = bob.wait(
        "the invite", lambda: bob.ok("GET", "/sync", timeout="0")["rooms"]["invite"].get(room_id)
    )
    mine = next(e for e in invite["invite_state"]["events"] if e.get("state_key") == bob.user_id)
    assert mine["content"] == {"membership": "invite", "is_direct": True}
    bob.ok("POST", f"/rooms/{quote(room_id)}/join", {})
    assert alice.ok("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"].keys() == {
        alice.user_id,
        bob.user_id,
    }


def test_encrypted_messages_with_matrix_js_sdk_across_two_of_ours(
    servers: tuple[FederatedServer, FederatedServer, FederatedServer],
) -> None:
    """Rust crypto on both sides: keys queried and claimed over federation, room keys sent
    to the other server's device as to-device messages, every message decrypted."""
    node = node_or_skip()
    a, b, _ = servers
    a.process.register("alice_js", PASSWORD)
    b.process.register("bob_js", PASSWORD)
    result = run_script(
        node, "e2ee_federation.mjs", a.process.base_url, "alice_js", b.process.base_url, "bob_js"
    )
    seen = result["steps"]["room"]["seen"]
    assert len(seen) == 3 and all(one and all(one.values()) for one in seen), seen
