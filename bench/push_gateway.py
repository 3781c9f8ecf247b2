"""The PG row: notifications per second through our push gateway plugin to a local FCM v1
endpoint. The endpoint and its OAuth token endpoint are the tests' stand-ins
(tests/push_endpoints.py), which check what Google's check; they run in threads of the
load generator's process, so the figure is a floor for the gateway, not FCM's speed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.httpclient import HttpClient
from bench.procstats import Meter
from bench.stats import Metric, WorkloadResult
from tests.push_endpoints import FcmV1, GoogleOAuth, start_fcm

NOTIFY = "/_matrix/push/v1/notify"
APP_ID = "bench.fcm"


class FcmStandIn:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.oauth, self.fcm, self.account = start_fcm(workdir)

    def plugin(self) -> dict[str, Any]:
        """The gateway's entry in `plugins:` of our bench config."""
        app = {"kind": "fcm", "service_account_file": str(self.account), "endpoint": self.fcm.base_url}
        return {"module": "plugins.push.gateway.PushGatewayPlugin", "config": {"apps": {APP_ID: app}}}

    def close(self) -> None:
        self.fcm.close()
        self.oauth.close()


def _body(i: int) -> dict[str, Any]:
    return {
        "notification": {
            "event_id": f"$bench{i}",
            "room_id": "!bench:localhost",
            "type": "m.room.message",
            "sender": "@bench:localhost",
            "content": {"msgtype": "m.text", "body": f"bench push {i}"},
            "counts": {"unread": 1},
            "devices": [{"app_id": APP_ID, "pushkey": f"bench-token-{i % 100}"}],
        }
    }


async def run_pg(
    http: HttpClient, meter: Meter, stand_in: FcmStandIn, count: int, in_flight: int
) -> WorkloadResult:
    result = WorkloadResult(
        "PG", f"PG push gateway: {count} notifications, {in_flight} in flight, to a local FCM"
    )
    fcm: FcmV1 = stand_in.fcm
    oauth: GoogleOAuth = stand_in.oauth
    # One first notification outside the meter: it fetches the OAuth token.
    first = await http.request("POST", NOTIFY, _body(-1))
    if first.status != 200:
        result.problems.append(f"first notify answered {first.status}: {first.text()}")
        return result
    before = len(fcm.messages)
    errors = 0
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal errors
        for i in queue:
            response = await http.request("POST", NOTIFY, _body(i))
            if response.status != 200 or response.json() != {"rejected": []}:
                errors += 1

    meter.start()
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.monotonic() - t0
    result.resources = meter.stop()
    delivered = len(fcm.messages) - before
    result.metrics["pg.rate"] = Metric(count / elapsed, "notifications/s", True)
    if errors:
        result.problems.append(f"{errors} notify requests failed")
    if delivered != count:
        result.problems.append(f"FCM stand-in received {delivered} messages for {count} notifications")
    if oauth.refused:
        result.problems.append(f"the OAuth stand-in refused: {oauth.refused[:3]}")
    return result
