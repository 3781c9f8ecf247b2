"""createRoom with users of other servers in `invite`: each invite goes to its server to be
countersigned, all of them at once, and a server that fails does not fail the room
(core/rooms.py, `_invite_remote_users`)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import free_port
from federation_harness import FederatedServer, TestCA, start_federated_server
from test_federation_sender import Recorder

from homeserver.events.signing import sign_event


class Invitee(Recorder):
    """A remote server that countersigns the invites sent to it, each only once every
    server of `barrier` has been asked too: invites sent one after another never all get
    there, and the first is refused when the barrier's wait runs out."""

    def __init__(self, ca: TestCA, barrier: threading.Barrier) -> None:
        super().__init__(ca)
        self.barrier = barrier
        self.countersigned: list[str] = []

    def handle(self, path: str, authorization: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if re.fullmatch(r"/_matrix/federation/v2/invite/[^/]+/[^/]+", path) is None:
            return 404, {"errcode": "M_UNRECOGNIZED", "error": path}
        body = json.loads(raw)
        try:
            self.barrier.wait(timeout=20)
        except threading.BrokenBarrierError:
            return 500, {"errcode": "M_UNKNOWN", "error": "the other invite never came"}
        event = sign_event(body["event"], self.server_name, self.signing_key, body["room_version"])
        self.countersigned.append(event["state_key"])
        return 200, {"event": event}


@pytest.fixture
def ours(tmp_path: Any, ca: TestCA) -> Iterator[FederatedServer]:
    server = start_federated_server(tmp_path, ca)
    yield server
    assert server.process.stop() == 0


def test_remote_invites_go_out_together_and_a_dead_server_does_not_fail_the_room(
    ours: FederatedServer, ca: TestCA
) -> None:
    barrier = threading.Barrier(2)
    one, two = Invitee(ca, barrier), Invitee(ca, barrier)
    try:
        alice = ours.process.register("alice_cri")
        headers = {"Authorization": f"Bearer {alice['access_token']}"}
        invited = [f"@u1:{one.server_name}", f"@u2:{two.server_name}"]
        nobody_there = f"@u3:localhost:{free_port()}"  # nothing listens on that port
        r = requests.post(
            ours.process.url("/_matrix/client/v3/createRoom"),
            json={"preset": "private_chat", "invite": [*invited, nobody_there]},
            headers=headers,
            timeout=60,
        )
        # The room is made and answered although one invitee's server cannot be reached.
        assert r.status_code == 200, r.text
        room_id = r.json()["room_id"]
        assert one.countersigned == [invited[0]] and two.countersigned == [invited[1]]
        state = requests.get(
            ours.process.url(f"/_matrix/client/v3/rooms/{quote(room_id)}/state"), headers=headers, timeout=30
        ).json()
        members = {e["state_key"]: e["content"]["membership"] for e in state if e["type"] == "m.room.member"}
        assert members == {alice["user_id"]: "join", invited[0]: "invite", invited[1]: "invite"}
        # The creator may try the failed one again: the room is theirs.
        again = requests.post(
            ours.process.url(f"/_matrix/client/v3/rooms/{quote(room_id)}/invite"),
            json={"user_id": nobody_there},
            headers=headers,
            timeout=60,
        )
        assert again.status_code == 502, again.text
        assert "Cannot reach" in again.json()["error"]
    finally:
        one.close()
        two.close()
