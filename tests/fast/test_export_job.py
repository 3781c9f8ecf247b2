"""A data export job (core/export.py) in process: its progress moves while it runs, the zip
is not served before it is whole, and a plugin's part lands in its own folder. A part that
waits for the test holds the job mid-way, so nothing depends on timing."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import Client, TestClock, make_server, room_path, until
from twisted.internet.defer import Deferred

from homeserver.core.export import ExportSink


@pytest_twisted.ensureDeferred
async def test_progress_moves_and_the_zip_waits_for_the_whole_job(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    release: Deferred[None] = Deferred()
    reached: list[str] = []

    async def slow_part(user_id: str, sink: ExportSink) -> None:
        reached.append(user_id)
        await release
        await sink.add_json("notes.json", {"for": user_id})

    hs.exports.parts.append(("slowplugin", slow_part))
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        room_id = (await client.call("POST", "/createRoom", token, {}))["room_id"]
        for i in range(3):
            path = f"{room_path(room_id)}/send/m.room.message/t{i}"
            await client.call("PUT", path, token, {"msgtype": "m.text", "body": f"m{i}"})

        status, started = await client.start("POST", "/api/me/export", token)
        assert status == 202, started
        export_id = started["id"]
        await until(lambda: reached == [alice["user_id"]], "the job reached the plugin's part")

        status, mid = await client.start("GET", f"/api/me/export/{export_id}", token)
        assert status == 200 and mid["state"] == "running", mid
        done, total = mid["progress"]["done"], mid["progress"]["total"]
        assert 0 < done == total - 1, mid["progress"]  # everything but the plugin's part
        status, early = await client.start("GET", f"/api/me/export/{export_id}/download", token)
        assert status == 409 and early["errcode"] == "M_NOT_YET_UPLOADED", early
        # A second request while it runs gets the same job, not a new one.
        _, again = await client.start("POST", "/api/me/export", token)
        assert again["id"] == export_id

        release.callback(None)
        finished: dict[str, Any] = {}

        async def poll() -> None:
            _, finished["status"] = await client.start("GET", f"/api/me/export/{export_id}", token)

        for _ in range(200):
            await poll()
            if finished["status"]["state"] != "running":
                break
        assert finished["status"]["state"] == "done"
        assert finished["status"]["progress"] == {"done": total, "total": total}

        archive = zipfile.ZipFile(io.BytesIO((hs.exports.zip_path(export_id)).read_bytes()))
        assert json.loads(archive.read("slowplugin/notes.json")) == {"for": alice["user_id"]}
        bodies = [ev["content"].get("body") for ev in json.loads(archive.read("events.json"))]
        assert [b for b in bodies if b] == ["m0", "m1", "m2"]
    finally:
        if not release.called:
            release.callback(None)
        await hs.exports.wait_idle()
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_erasing_the_account_stops_its_running_export_and_leaves_no_file(tmp_path: Path) -> None:
    hs = await make_server(tmp_path, TestClock())
    client = Client(hs)
    release: Deferred[None] = Deferred()
    reached: list[str] = []

    async def slow_part(user_id: str, sink: ExportSink) -> None:
        reached.append(user_id)
        await release

    hs.exports.parts.append(("slowplugin", slow_part))
    try:
        alice = await client.register(hs, "alice")
        _, started = await client.start("POST", "/api/me/export", alice["access_token"])
        export_id = started["id"]
        await until(lambda: bool(reached), "the job reached the plugin's part")

        erasing = Deferred.fromCoroutine(hs.erasure.erase_user(alice["user_id"]))
        await until(lambda: export_id in hs.exports._cancelled, "the erasure asked the job to stop")
        assert not erasing.called, "the erasure waits for the job it stopped"
        release.callback(None)
        await erasing

        assert await hs.exports.exports_of(alice["user_id"]) == []
        assert list(hs.exports.directory.glob("*")) == []
        assert await hs.erasure.is_erased(alice["user_id"])
    finally:
        if not release.called:
            release.callback(None)
        await hs.exports.wait_idle()
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_an_export_cut_by_a_database_outage_starts_over_and_finishes(tmp_path: Path) -> None:
    from homeserver.core import export
    from homeserver.storage.connection_pool import DatabaseUnavailable

    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    attempts: list[str] = []

    async def part(user_id: str, sink: ExportSink) -> None:
        attempts.append(user_id)
        if len(attempts) <= 2:  # the database is down for the first two attempts
            raise DatabaseUnavailable()
        await sink.add_json("notes.json", {"attempt": len(attempts)})

    hs.exports.parts.append(("plugin", part))
    try:
        alice = await client.register(hs, "alice")
        token = alice["access_token"]
        _, started = await client.start("POST", "/api/me/export", token)
        export_id = started["id"]
        await until(lambda: bool(hs.exports._pauses), "the first attempt ended in a pause")
        _, status = await client.start("GET", f"/api/me/export/{export_id}", token)
        assert status["state"] == "running", status  # not failed: it waits to start over
        assert list(hs.exports.directory.glob("*.part")) == []
        clock.advance(export.RETRY_MIN_S)
        await until(lambda: len(attempts) == 2 and bool(hs.exports._pauses), "the second attempt's pause")
        clock.advance(export.RETRY_MIN_S * 2)
        await until(lambda: export_id not in hs.exports._running, "the job ended")
        _, status = await client.start("GET", f"/api/me/export/{export_id}", token)
        assert status["state"] == "done", status
        archive = zipfile.ZipFile(io.BytesIO(hs.exports.zip_path(export_id).read_bytes()))
        assert json.loads(archive.read("plugin/notes.json")) == {"attempt": 3}
    finally:
        await hs.exports.wait_idle()
        await hs.stop(None)
