"""The EDUs other servers send about their users' keys (core/federation/remote_keys.py),
in-process: m.device_list_update keeps the list we hold of a remote member of our rooms
and tells our users through /sync's device_lists, a gap in its stream ids drops the list
(their server is asked again), m.signing_key_update replaces cross-signing keys, and
m.direct_to_device reaches our users' devices once however often it is sent.

The remote user joins the room through a locally built member event: a stand-in for a
join over federation, which only has to put them in the room's state here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, turn

from homeserver.server import HomeServer
from homeserver.storage.remote_devices import RemoteDeviceList

# An address outbound federation refuses at once (loopback): their server is unreachable.
REMOTE = "127.0.0.1:1"
CAROL = f"@carol:{REMOTE}"
DAVE = f"@dave:{REMOTE}"


def device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{device_id}": f"ed-{device_id}", f"curve25519:{device_id}": f"cu-{device_id}"},
        "signatures": {user_id: {f"ed25519:{device_id}": "sig"}},
    }


def master_key(user_id: str, public: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}


async def setup(tmp_path: Path) -> tuple[HomeServer, Client, dict[str, str], str]:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    alice = await client.register(hs, "alice")
    room = (await client.call("POST", "/createRoom", alice["access_token"], {"preset": "public_chat"}))[
        "room_id"
    ]
    await hs.events.send(CAROL, room, "m.room.member", {"membership": "join"}, state_key=CAROL)
    return hs, client, alice, room


async def changed_since(client: Client, alice: dict[str, str], since: str) -> tuple[list[str], str]:
    status, body = await client.sync(alice["access_token"], since)
    assert status == 200, body
    return body.get("device_lists", {}).get("changed", []), body["next_batch"]


async def query(client: Client, alice: dict[str, str], user_id: str) -> dict[str, Any]:
    return dict(
        await client.call("POST", "/keys/query", alice["access_token"], {"device_keys": {user_id: []}})
    )


def update(device_id: str, stream_id: int, prev: list[int], **extra: Any) -> dict[str, Any]:
    content = {"user_id": CAROL, "device_id": device_id, "stream_id": stream_id, "prev_id": prev, **extra}
    return {"edu_type": "m.device_list_update", "content": content}


@pytest_twisted.ensureDeferred
async def test_device_list_updates_keep_a_remote_members_list_and_reach_sync(tmp_path: Path) -> None:
    hs, client, alice, _ = await setup(tmp_path)
    try:
        since = (await client.sync(alice["access_token"]))[1]["next_batch"]
        # The list as a resync would have stored it: carol's device D1 at their position 5.
        kept = RemoteDeviceList(CAROL, 5, {"D1": device_keys(CAROL, "D1")}, master_key(CAROL, "M1"))
        await hs.keys.remote_list_changed(CAROL, lambda p: hs.storage.remote_devices.replace(kept, p))
        changed, since = await changed_since(client, alice, since)
        assert changed == [CAROL]

        # A new device, following position 5: applied to the kept list, no fetch.
        await hs.federation_edus.receive_all(REMOTE, [update("D2", 6, [5], keys=device_keys(CAROL, "D2"))])
        changed, since = await changed_since(client, alice, since)
        assert changed == [CAROL]
        answer = await query(client, alice, CAROL)
        assert sorted(answer["device_keys"][CAROL]) == ["D1", "D2"]
        assert answer["master_keys"][CAROL]["keys"] == {"ed25519:M1": "M1"}
        assert answer["failures"] == {}

        # The same EDU again (a transaction sent twice), one from another server for carol,
        # and one for a user of theirs who shares no room with ours: nothing changes.
        await hs.federation_edus.receive_all(
            REMOTE,
            [
                update("D2", 6, [5], keys=device_keys(CAROL, "D2")),
                {
                    "edu_type": "m.device_list_update",
                    "content": {**update("D9", 7, [6])["content"], "user_id": DAVE},
                },
            ],
        )
        await hs.federation_edus.receive_all(
            "other.example", [update("D3", 7, [6], keys=device_keys(CAROL, "D3"))]
        )
        changed, since = await changed_since(client, alice, since)
        assert changed == []

        # D1 deleted; /keys/changes over the same span says so too.
        before = since
        await hs.federation_edus.receive_all(REMOTE, [update("D1", 7, [6], deleted=True)])
        changed, since = await changed_since(client, alice, since)
        assert changed == [CAROL]
        status, changes = await client.start(
            "GET", "/_matrix/client/v3/keys/changes", alice["access_token"], **{"from": before, "to": since}
        )
        assert (status, changes["changed"]) == (200, [CAROL]), changes
        assert sorted((await query(client, alice, CAROL))["device_keys"][CAROL]) == ["D2"]

        # New cross-signing keys.
        await hs.federation_edus.receive_all(
            REMOTE,
            [
                {
                    "edu_type": "m.signing_key_update",
                    "content": {"user_id": CAROL, "master_key": master_key(CAROL, "M2")},
                }
            ],
        )
        changed, since = await changed_since(client, alice, since)
        assert changed == [CAROL]
        assert (await query(client, alice, CAROL))["master_keys"][CAROL]["keys"] == {"ed25519:M2": "M2"}

        # A gap (positions 8 and 9 never arrived): the list is fetched again; their server
        # is unreachable, so nothing is kept, our users still hear that it changed, and a
        # query asks their server, which is named in `failures`.
        await hs.federation_edus.receive_all(REMOTE, [update("D4", 10, [9], keys=device_keys(CAROL, "D4"))])
        changed, since = await changed_since(client, alice, since)
        assert changed == [CAROL]
        assert await hs.storage.remote_devices.get([CAROL]) == {}
        answer = await query(client, alice, CAROL)
        assert CAROL not in answer["device_keys"]
        assert set(answer["failures"]) == {REMOTE}
        assert answer["failures"][REMOTE]["status"] in (502, 503)
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_to_device_messages_from_another_server_are_delivered_once(tmp_path: Path) -> None:
    hs, client, alice, _ = await setup(tmp_path)
    try:
        since = (await client.sync(alice["access_token"]))[1]["next_batch"]
        content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {"k": {"type": 0, "body": "x"}}}
        edu = {
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": CAROL,
                "type": "m.room.encrypted",
                "message_id": "m1",
                "messages": {alice["user_id"]: {"*": content}, f"@bob:{REMOTE}": {"B": content}},
            },
        }
        forged = {"edu_type": "m.direct_to_device", "content": {**edu["content"], "message_id": "m2"}}
        bad = {"edu_type": "m.direct_to_device", "content": {**edu["content"], "message_id": "m3"}}
        bad["content"]["messages"] = {alice["user_id"]: {"*": "not an object"}}
        await hs.federation_edus.receive_all(REMOTE, [bad, edu, edu])
        await hs.federation_edus.receive_all("other.example", [forged])  # not carol's server
        await hs.federation_edus.receive_all(REMOTE, [edu])
        await turn()
        status, body = await client.sync(alice["access_token"], since)
        assert status == 200
        events = body["to_device"]["events"]
        assert events == [{"type": "m.room.encrypted", "sender": CAROL, "content": content}]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_devices_deleted_at_once_each_reach_a_room_mates_server(tmp_path: Path) -> None:
    """Deleting several devices together queues one m.device_list_update per device for the
    server of a remote room-mate, each marked deleted."""
    hs, client, alice, _ = await setup(tmp_path)
    try:
        sessions = [
            await hs.accounts.create_session(alice["user_id"], None, None, refreshable=False, ip=None)
            for _ in range(2)
        ]
        gone = sorted(s.device_id for s in sessions)
        await hs.accounts.delete_devices(alice["user_id"], gone)
        items = await hs.storage.federation_queue.items(REMOTE, 0, None, 100)
        updates = [
            i.edu["content"]
            for i in items
            if i.edu is not None and i.edu["edu_type"] == "m.device_list_update"
        ]
        deleted = sorted(u["device_id"] for u in updates if u["deleted"])
        assert deleted == gone
    finally:
        await hs.stop(None)
