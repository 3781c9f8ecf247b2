"""Federation end to end between ours and a real Synapse (one per module, tests/synapse.py),
in both roles (a room on ours joined from Synapse, a room on Synapse joined from ours): the
scenarios of tests/federation_e2e.py; a Synapse user's join reaching a second of ours
through the room's host; ours killed -9 and restarted, catching up on what Synapse sent."""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import _launch
from federation_e2e import Member, displayname_change, join_and_talk, kick_and_ban, typing_and_receipts
from federation_harness import FederatedServer, TestCA, start_federated_server
from synapse import SynapseServer


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
