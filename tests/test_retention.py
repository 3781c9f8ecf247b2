"""Message retention (MSC1763, core/retention.py): rooms lose history older than their policy.

The server runs in-process (tests/fast/harness.py) on SQLite and on PostgreSQL, with the
media plugin; its clock is moved by the test, so "a day later" is one `advance`, and the
purge job runs because the clock passed its interval, as it would in production.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from fast.harness import CS, Client, TestClock, connect, make_server, parse_response, room_path, turn, until

from homeserver.server import HomeServer

DAY_S = 86_400
HOUR_S = 3_600
MEDIA = {"module": "plugins.media.MediaPlugin", "config": {}}


def retention_config(database_url: str, **retention: Any) -> dict[str, Any]:
    return {
        "database": {"url": database_url},
        "retention": {"enabled": True, "purge_interval": "1h", **retention},
        "plugins": [MEDIA],
    }


async def upload(hs: HomeServer, token: str, data: bytes) -> str:
    """POST /_matrix/media/v3/upload: the mxc URI."""
    head = (
        "POST /_matrix/media/v3/upload?filename=note.txt HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    _, transport = connect(hs.http if hs.http is not None else hs.site())
    transport.protocol.dataReceived(head.encode() + data)
    await transport.closed
    status, _, body = parse_response(transport.value())
    assert status == 200, body
    return str(json.loads(body)["content_uri"])


async def download_status(hs: HomeServer, token: str, mxc: str) -> tuple[int, Any]:
    server, media_id = mxc.removeprefix("mxc://").split("/")
    _, transport = connect(hs.http if hs.http is not None else hs.site())
    transport.protocol.dataReceived(
        f"GET /_matrix/client/v1/media/download/{server}/{media_id} HTTP/1.1\r\nHost: test\r\n"
        f"Connection: close\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await transport.closed
    status, _, body = parse_response(transport.value())
    return status, json.loads(body) if status != 200 else body


async def media_links(hs: HomeServer, count: int) -> None:
    """Wait until the media plugin has linked `count` (media, event) pairs (it does so just
    after each commit, off the send path)."""
    for _ in range(2000):
        if (await hs.storage.db.query("test", "SELECT COUNT(*) FROM media_refs"))[0][0] >= count:
            return
        await turn()
    raise AssertionError("the media plugin never linked the messages' media")


async def search(client: Client, token: str, term: str) -> list[Any]:
    status, found = await client.start(
        "POST", CS + "/search", token, {"search_categories": {"room_events": {"search_term": term}}}
    )
    assert status == 200, found
    return list(found["search_categories"]["room_events"]["results"])


class Room:
    def __init__(self, client: Client, token: str, room_id: str) -> None:
        self.client, self.token, self.room_id = client, token, room_id

    async def send(self, content: dict[str, Any]) -> str:
        txn = secrets.token_hex(4)
        path = f"{room_path(self.room_id)}/send/m.room.message/{txn}"
        return str((await self.client.call("PUT", path, self.token, content))["event_id"])

    async def text(self, body: str) -> str:
        return await self.send({"msgtype": "m.text", "body": body})

    async def get(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        return await self.client.start("GET", CS + room_path(self.room_id) + path, self.token, **params)

    async def history(self, limit: int = 50) -> tuple[list[str], dict[str, Any]]:
        """Every event /messages gives paging back from now, `limit` at a time: bodies (or
        types, for events without one) oldest first, and the last page."""
        seen: list[str] = []
        params = {"dir": "b", "limit": str(limit)}
        while True:
            status, page = await self.get("/messages", **params)
            assert status == 200, page
            seen += [ev["content"].get("body", ev["type"]) for ev in page["chunk"]]
            if "end" not in page:
                return list(reversed(seen)), page
            params["from"] = page["end"]


async def advance(hs: HomeServer, clock: TestClock, seconds: float) -> None:
    """Move the clock; when the job's interval passes, wait for the run it starts to finish
    (a run still going when the next tick comes makes that tick skip). First the reactor
    turns once: the group commit that answered the last send finishes its loop at the time
    it started, not a day later."""
    await turn()
    await until(lambda: not hs.retention.running, "the purge job finished")
    clock.advance(seconds)
    await until(lambda: not hs.retention.running, "the purge job finished")


async def open_room(
    hs: HomeServer, client: Client, name: str, initial_state: list[Any]
) -> tuple[dict[str, str], Room]:
    user = await client.register(hs, name)
    created = await client.call(
        "POST", "/createRoom", user["access_token"], {"preset": "public_chat", "initial_state": initial_state}
    )
    return user, Room(client, user["access_token"], created["room_id"])


@pytest_twisted.ensureDeferred
async def test_a_one_day_room_loses_old_history_and_keeps_the_rest(tmp_path: Path, database_url: str) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, **retention_config(database_url))
    try:
        client = Client(hs)
        one_day = {"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": DAY_S * 1000}}
        alice, room = await open_room(hs, client, "alice", [one_day])
        token = alice["access_token"]
        old_media = await upload(hs, token, b"only the old message shares this")
        kept_media = await upload(hs, token, b"the new message shares this too")
        old_ids = [await room.text(f"old {i}") for i in range(5)]
        old_ids.append(await room.send({"msgtype": "m.file", "body": "old file", "url": old_media}))
        old_ids.append(await room.send({"msgtype": "m.file", "body": "old shared", "url": kept_media}))
        status, before_sync = await client.sync(token)
        assert status == 200
        assert len(await search(client, token, "old")) == 7
        await media_links(hs, 2)

        await advance(hs, clock, 23 * HOUR_S)
        new_id = await room.send({"msgtype": "m.file", "body": "new", "url": kept_media})
        await advance(hs, clock, 2 * HOUR_S)  # the old ones are 25 h old, "new" 2 h

        # Paging back ends at the purge point, cleanly: no `end`, no error.
        history, last_page = await room.history(limit=2)
        assert history == ["new"]
        assert "end" not in last_page
        for event_id in old_ids:
            for path in (f"/event/{quote(event_id)}", f"/context/{quote(event_id)}"):
                status, body = await room.get(path)
                assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), path
        status, body = await room.get(f"/event/{quote(new_id)}")
        assert status == 200 and body["content"]["body"] == "new"

        # The room's state survives: the room still works, and sends build on its head.
        status, state = await room.get("/state")
        assert status == 200
        assert {"m.room.create", "m.room.member", "m.room.power_levels", "m.room.retention"} <= {
            ev["type"] for ev in state
        }
        later_id = await room.text("after the purge")
        history, _ = await room.history()
        assert history == ["new", "after the purge"]

        # Sync: a fresh one shows what is left; one from before the purge goes on.
        status, initial = await client.sync(token)
        assert status == 200
        timeline = initial["rooms"]["join"][room.room_id]["timeline"]["events"]
        assert [ev["event_id"] for ev in timeline if ev["type"] == "m.room.message"] == [new_id, later_id]
        status, incremental = await client.sync(token, since=before_sync["next_batch"])
        assert status == 200
        bodies = [
            ev["content"].get("body")
            for ev in incremental["rooms"]["join"][room.room_id]["timeline"]["events"]
        ]
        assert "after the purge" in bodies and not any(str(b).startswith("old") for b in bodies)

        # Media only the purged messages shared is gone; shared by a kept one, it stays.
        assert (await download_status(hs, token, old_media))[0] == 404
        assert (await download_status(hs, token, old_media))[1]["errcode"] == "M_NOT_FOUND"
        assert (await download_status(hs, token, kept_media))[0] == 200

        # Search finds no purged message.
        assert await search(client, token, "old") == []
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_the_server_default_applies_to_rooms_without_a_policy(
    tmp_path: Path, database_url: str
) -> None:
    clock = TestClock()
    config = retention_config(database_url, default_policy={"max_lifetime": "2d"})
    hs = await make_server(tmp_path, clock, **config)
    try:
        client = Client(hs)
        _, plain = await open_room(hs, client, "bob", [])
        week = {"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": 7 * DAY_S * 1000}}
        _, weekly = await open_room(hs, client, "carol", [week])
        for room in (plain, weekly):
            await room.text("early")
            await room.text("early too")
        await advance(hs, clock, 1 * DAY_S)
        for room in (plain, weekly):
            await room.text("a day later")
        await advance(hs, clock, 1 * DAY_S + HOUR_S)
        assert (await plain.history())[0][-1:] == ["a day later"]
        assert "early" not in (await plain.history())[0]
        # The room's own week wins over the server's two days.
        assert [b for b in (await weekly.history())[0] if not b.startswith("m.")] == [
            "early",
            "early too",
            "a day later",
        ]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_the_allowed_range_clamps_a_room_policy(tmp_path: Path, database_url: str) -> None:
    clock = TestClock()
    config = retention_config(database_url, allowed_lifetime_max="1d")
    hs = await make_server(tmp_path, clock, **config)
    try:
        client = Client(hs)
        year = {"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": 365 * DAY_S * 1000}}
        _, room = await open_room(hs, client, "dave", [year])
        await room.text("old")
        await advance(hs, clock, DAY_S)
        await room.text("new")
        await advance(hs, clock, 2 * HOUR_S)
        assert (await room.history())[0] == ["new"]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_purge_cut_short_leaves_a_working_room_and_finishes_later(
    tmp_path: Path, database_url: str
) -> None:
    """A purge's transactions are each whole, so a kill -9 can only land between two of them:
    here the server is stopped after the floor moved and one batch of two was deleted, as
    a kill would leave it, and a new server on the same database finishes the job."""
    clock = TestClock()
    config = retention_config(database_url, purge_batch_size=2)
    config["retention"]["enabled"] = False  # the test runs the steps itself
    hs = await make_server(tmp_path, clock, **config)
    one_day = {"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": DAY_S * 1000}}
    client = Client(hs)
    alice, room = await open_room(hs, client, "erin", [one_day])
    old = [await room.text(f"old {i}") for i in range(6)]
    await advance(hs, clock, DAY_S + HOUR_S)
    await room.text("new")
    store = hs.storage.retention
    floor = await store.raise_floor(room.room_id, clock.time_ms() - DAY_S * 1000)
    assert floor is not None
    assert len(await store.purge_batch(room.room_id, floor, 2)) == 2
    await hs.stop(None)

    config["retention"]["enabled"] = True
    hs = await make_server(tmp_path, clock, **config)
    try:
        room.client = Client(hs)
        # Between the two, the room already reads as purged and still takes messages.
        assert (await room.history())[0] == ["new"]
        await room.text("newer")
        remaining = await hs.storage.events.get_events(old)
        assert len(remaining) == 4
        await advance(hs, clock, HOUR_S)
        assert await hs.storage.events.get_events(old) == {}
        assert (await room.history())[0] == ["new", "newer"]
        assert await hs.storage.retention.pending_purged(10) == []
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_policy_that_is_not_a_positive_integer_is_refused(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, **retention_config(f"sqlite:///{tmp_path / 'hs.db'}"))
    try:
        client = Client(hs)
        alice, room = await open_room(hs, client, "frank", [])
        path = CS + room_path(room.room_id) + "/state/m.room.retention/"
        for content in (
            {"max_lifetime": "1d"},
            {"max_lifetime": -5},
            {"min_lifetime": 1.5},
            {"max_lifetime": True},
        ):
            status, body = await client.start("PUT", path, alice["access_token"], content)
            assert (status, body["errcode"]) == (400, "M_BAD_JSON"), content
        bad = {"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": "forever"}}
        status, body = await client.start(
            "POST", CS + "/createRoom", alice["access_token"], {"initial_state": [bad]}
        )
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, _ = await client.start("PUT", path, alice["access_token"], {"max_lifetime": 3_600_000})
        assert status == 200
    finally:
        await hs.stop(None)
