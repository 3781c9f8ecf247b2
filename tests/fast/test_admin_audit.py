"""The admin plugin's audit log on a server whose clock the test moves: each call is logged
with who, what, on what and the answer, and rows past `audit_retention` are deleted by the
hourly job. Its config is checked before start-up."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server, turn

from homeserver.plugins import PluginConfigError
from plugins.admin.config import parse_admin_config

ADMIN = {"module": "plugins.admin.AdminPlugin", "config": {"audit_retention": "2h"}}


def test_config() -> None:
    assert parse_admin_config({}).audit_retention_s == 365 * 86400
    assert parse_admin_config({"audit_retention": "90d"}).audit_retention_s == 90 * 86400
    assert parse_admin_config({"audit_retention": 0}).audit_retention_s == 0
    for bad in ({"audit_retention": "soon"}, {"audit_retention": -1}, {"retention": "1d"}):
        with pytest.raises(PluginConfigError):
            parse_admin_config(bad)


@pytest_twisted.ensureDeferred
async def test_audit_rows_expire_after_the_retention(tmp_path: Path) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock, plugins=[ADMIN])
    client = Client(hs)
    try:
        admin = await client.register(hs, "root")
        await hs.storage.accounts.set_admin(admin["user_id"], True)
        user = await client.register(hs, "user")
        token = admin["access_token"]
        target = f"/_synapse/admin/v2/users/{quote(user['user_id'])}"
        assert (await client.start("GET", target, token))[0] == 200
        assert (await client.start("GET", target, user["access_token"]))[0] == 403

        status, log = await client.start("GET", "/_plugins/admin/audit_log", token)
        assert status == 200
        assert [(e["user_id"], e["target"], e["status"]) for e in log["entries"]] == [
            (user["user_id"], user["user_id"], 403),
            (admin["user_id"], user["user_id"], 200),
        ]
        assert log["entries"][1]["ts"] == int(clock.seconds() * 1000)

        # Past the retention, the hourly job deletes them; each listing is logged anew (and
        # shows in the next one).
        clock.advance(3 * 3600)
        now_ms = int(clock.seconds() * 1000)
        for _ in range(200):
            await turn()
            _, page = await client.start("GET", "/_plugins/admin/audit_log", token)
            if page["entries"] and all(e["ts"] >= now_ms for e in page["entries"]):
                break
        assert page["entries"] and all(e["route"] == "/_plugins/admin/audit_log" for e in page["entries"])
        assert all(e["ts"] >= now_ms for e in page["entries"])
    finally:
        await hs.stop(None)
