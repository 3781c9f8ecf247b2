"""The backup plugin's schedule and retention, with the server's clock moved by the test.

The server runs in-process on SQLite with a twisted task.Clock as its clock: moving it
fires the plugin's checks, and each backup set is named from it. The backups themselves
run on worker threads for real; the test waits for them to finish, never for time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.task import Clock, deferLater

from homeserver.config import parse_config
from homeserver.core.clock import Clock as ServerClock
from homeserver.server import HomeServer

START_S = 1_800_000_000
HOUR = 3600


def make_hs(tmp_path: Path, clock: Clock, keep: int = 3) -> HomeServer:
    from twisted.internet import reactor

    raw = {
        "server_name": "backups.test",
        "data_dir": str(tmp_path / "data"),
        "auth": {"password_hashing": "fast"},
        "plugins": [
            {"module": "plugins.media.MediaPlugin", "config": {}},
            {
                "module": "plugins.backup.BackupPlugin",
                "config": {
                    "to": str(tmp_path / "backups"),
                    "every": "24h",
                    "keep": keep,
                    "check_interval": "1h",
                },
            },
        ],
    }
    return HomeServer(parse_config(raw, "test-backup.yaml", env={}), reactor, ServerClock(clock))


async def settled(plugin: Any) -> None:
    """Until the plugin's check (and any backup it started on its threads) is done."""
    from twisted.internet import reactor

    for _ in range(5000):
        if not plugin.running:
            return
        await deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("the backup never finished")


def name_at(seconds: float) -> str:
    return "backup-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def sets(tmp_path: Path) -> list[str]:
    root = tmp_path / "backups"
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.exists() else []


@pytest_twisted.ensureDeferred
async def test_a_backup_a_day_keeping_the_newest_three(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(START_S)
    hs = make_hs(tmp_path, clock)
    await hs.start()
    try:
        plugin = hs.plugins[1]
        await settled(plugin)  # the first check runs at start: no set yet, so one is taken
        assert sets(tmp_path) == [name_at(START_S)]
        taken = [START_S]
        for day in range(1, 6):
            for _ in range(23):  # hourly checks: the newest set is younger than a day
                clock.advance(HOUR)
                await settled(plugin)
            assert sets(tmp_path)[-1] == name_at(taken[-1])
            clock.advance(HOUR)
            await settled(plugin)
            taken.append(START_S + day * 24 * HOUR)
            assert sets(tmp_path) == [name_at(t) for t in taken[-3:]]
        assert hs.metrics.get_sample_value("homeserver_plugin_backup_last_success_seconds") == taken[-1]
    finally:
        await hs.stop(None)

    # A restart an hour later takes no new set: the newest is an hour old.
    clock.advance(HOUR)
    hs = make_hs(tmp_path, clock)
    await hs.start()
    try:
        await settled(hs.plugins[1])
        assert sets(tmp_path) == [name_at(t) for t in taken[-3:]]
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_a_failing_backup_is_counted_and_retried_at_the_next_check(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(START_S)
    (tmp_path / "backups").write_text("a file where the backups directory should be")
    hs = make_hs(tmp_path, clock)
    await hs.start()
    try:
        plugin = hs.plugins[1]
        await settled(plugin)
        assert hs.metrics.get_sample_value("homeserver_plugin_backup_failures_total") == 1
        (tmp_path / "backups").unlink()
        clock.advance(HOUR)
        await settled(plugin)
        assert sets(tmp_path) == [name_at(START_S + HOUR)]
    finally:
        await hs.stop(None)
