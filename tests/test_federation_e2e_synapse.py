"""Federation end to end between ours and a real Synapse (one per module, tests/synapse.py),
in both roles (a room on ours joined from Synapse, a room on Synapse joined from ours): the
scenarios of tests/federation_e2e.py; a Synapse user's join reaching a second of ours
through the room's host; ours killed -9 and restarted, catching up on what Synapse sent."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import _launch
from federation_e2e import (
    Member,
    displayname_change,
    join_and_talk,
    kick_and_ban,
    killed_9_then_caught_up,
    typing_and_receipts,
)
from federation_harness import FederatedServer, TestCA, start_federated_server
from js_runner import node_or_skip, run_script
from synapse import PASSWORD, SynapseServer


def ours_member(server: FederatedServer, name: str) -> Member:
    return Member(server.process.url(""), server.process.register(name))


def synapse_member(server: SynapseServer, name: str) -> Member:
    return Member(server.url(""), server.register(name))


@pytest.mark.parametrize("role", ["room on ours", "room on Synapse"])
def test_ours_and_synapse_end_to_end(ours: FederatedServer, synapse: SynapseServer, role: str) -> None:
    n = "o" if role == "room on ours" else "s"
    if role == "room on ours":
        host, guest = ours_member(ours, f"host{n}"), synapse_member(synapse, f"guest{n}")
        host_name, victim = ours.server_name, synapse_member(synapse, f"victim{n}")
    else:
        host, guest = synapse_member(synapse, f"host{n}"), ours_member(ours, f"guest{n}")
        host_name, victim = synapse.server_name, ours_member(ours, f"victim{n}")
    # Synapse's default room version is 12; ours creates what the test asks.
    room_id = join_and_talk(host, guest, host_name, version="12")
    typing_and_receipts(host, guest, room_id)
    displayname_change(host, guest, room_id)
    kick_and_ban(host, victim, room_id, host_name)


def test_a_synapse_join_reaches_a_second_of_ours_through_the_host(
    ours: FederatedServer, synapse: SynapseServer, tmp_path: Path, ca: TestCA
) -> None:
    second = start_federated_server(tmp_path / "second", ca)
    try:
        alice, bob = ours_member(ours, "alice_3s"), ours_member(second, "bob_3s")
        sam = synapse_member(synapse, "sam_3s")
        room_id = join_and_talk(alice, bob, ours.server_name)
        sam.ok("POST", f"/join/{quote(room_id)}", {}, server_name=ours.server_name)
        # Sam's join went to ours alone (send_join): the second hears of it from ours.
        bob.wait("sam's join", lambda: bob.member_event(room_id, sam.user_id))
        sam.say(room_id, "sam here")
        bob.wait_texts(room_id, ["sam here"])
    finally:
        second.stop()


@pytest.mark.parametrize("role", ["room on ours", "room on Synapse"])
def test_ours_killed_9_catches_up_on_what_synapse_sent(
    ours: FederatedServer, synapse: SynapseServer, role: str
) -> None:
    n = "o" if role == "room on ours" else "s"
    sue, dan = synapse_member(synapse, f"sue_k9{n}"), ours_member(ours, f"dan_k9{n}")
    if role == "room on ours":
        room_id = join_and_talk(dan, sue, ours.server_name, version="12")
    else:
        room_id = join_and_talk(sue, dan, synapse.server_name, version="12")
    process = ours.process
    process.stop(signal.SIGKILL)
    missed = [f"while down {i}" for i in range(5)]
    for text in missed:
        sue.say(room_id, text)
    ours.process = _launch(
        Path(process.config_path).parent, process.port, process.config_path, process.config, None
    )
    # Synapse backs off from a server that was down; our next transaction tells it we are
    # back, and it catches up (its latest event; we fetch the ones before it).
    dan.say(room_id, "back")
    sue.wait_texts(room_id, [*missed, "back"])
    dan.wait_texts(room_id, missed)
    fresh = Member(dan.base_url, {"user_id": dan.user_id, "access_token": dan.token})
    fresh.sync_once(0)
    assert [t for t in fresh.texts(room_id) if t.startswith("while down")] == missed


def test_synapse_killed_9_then_both_sides_catch_up(ours: FederatedServer, synapse: SynapseServer) -> None:
    """Both roles with one restart of Synapse: a room on ours and a room on Synapse, each
    shared by Dan (ours) and Sue (Synapse). Synapse, back, need not call us first: our
    sender's probe notices it (core/federation/sender.py), and Synapse catches up on its own
    unsent events when it starts."""
    dan, sue = ours_member(ours, "dan_ks"), synapse_member(synapse, "sue_ks")
    on_ours = join_and_talk(dan, sue, ours.server_name, version="12")
    on_synapse = join_and_talk(sue, dan, synapse.server_name, version="12")
    killed_9_then_caught_up(dan, sue, [on_ours, on_synapse], synapse.kill, synapse.restart)


@pytest.mark.parametrize("role", ["room on ours", "room on Synapse"])
def test_encrypted_messages_with_matrix_js_sdk_across_ours_and_synapse(
    ours: FederatedServer, synapse: SynapseServer, role: str
) -> None:
    """Rust crypto on both sides, the room made by the first user: device keys queried and
    one-time keys claimed over federation both ways, room keys sent to the other server's
    device as to-device messages, every message decrypted by the other user."""
    node = node_or_skip("@matrix-org/matrix-sdk-crypto-wasm")
    n = "o" if role == "room on ours" else "s"
    ours.process.register(f"js_ours_{n}", PASSWORD)
    synapse.register(f"js_syn_{n}")
    mine = (ours.process.base_url, f"js_ours_{n}")
    theirs = (synapse.url(""), f"js_syn_{n}")
    first, second = (mine, theirs) if role == "room on ours" else (theirs, mine)
    result = run_script(node, "e2ee_federation.mjs", *first, *second)
    seen = result["steps"]["room"]["seen"]
    assert len(seen) == 3 and all(one and all(one.values()) for one in seen), seen
    # Neither server stored or logged a message's plaintext: only m.room.encrypted.
    plaintexts = result["plaintexts"]
    assert len(plaintexts) == 3
    files = [p for p in ours.process.data_dir.rglob("*") if p.is_file()]
    files += [ours.process.log_path, *(p for p in synapse.workdir.rglob("*") if p.is_file())]
    assert _files_containing(files, plaintexts) == {}
    # What each server serves of the room: the three messages, as m.room.encrypted only.
    room_id = result["steps"]["room"]["room_id"]
    for base_url, name in (mine, theirs):
        types = [e["type"] for e in _room_messages(base_url, name, room_id)]
        assert types.count("m.room.encrypted") == 3 and "m.room.message" not in types, types


def _files_containing(paths: list[Path], needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        data = path.read_bytes()
        for needle in needles:
            if needle.encode() in data:
                found.setdefault(needle, []).append(str(path))
    return found


def _room_messages(base_url: str, localpart: str, room_id: str) -> list[dict[str, Any]]:
    """The room's latest events, read by a new login of `localpart` on its own server."""
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}}
    r = requests.post(f"{base_url}/_matrix/client/v3/login", json={**login, "password": PASSWORD}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.get(
        f"{base_url}/_matrix/client/v3/rooms/{quote(room_id)}/messages",
        params={"dir": "b", "limit": "50"},
        headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    chunk: list[dict[str, Any]] = r.json()["chunk"]
    return chunk
