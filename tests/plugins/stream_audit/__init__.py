"""A test plugin: a durable subscription that writes down every event it is handed.

Loaded by tests/test_stream_consumers.py from tests/plugins (on PYTHONPATH). It can start
paused (its first batch waits for POST /_plugins/stream_audit/resume) and takes
`batch_delay_s` over each batch after writing it down, so a test can find it thousands of
events behind, or kill the server while a batch is in flight. Imports only the plugin API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homeserver.plugins import ApiRequest, EventBatch, PluginApi, Txn


class StreamAudit:
    NAME = "stream_audit"
    SCHEMA_DIR = Path(__file__).parent / "sql"

    def __init__(self, config: dict[str, Any], api: PluginApi) -> None:
        self.api = api
        self.run = int(config["run"])
        self.delay = float(config.get("batch_delay_s", 0))
        self.paused = bool(config.get("start_paused", False))
        self.resumed: Any = None
        self.in_batch = False
        self.recorded = 0

    async def start(self) -> None:
        from twisted.internet.defer import Deferred

        self.resumed = Deferred()
        if not self.paused:
            self.resumed.callback(None)
        self.api.register_route("POST", "/_plugins/stream_audit/resume", self.resume, require_auth=False)
        self.api.register_route("GET", "/_plugins/stream_audit/state", self.state, require_auth=False)
        await self.api.subscribe("audit", self.on_batch, durable=True)

    async def on_batch(self, batch: EventBatch) -> None:
        from twisted.internet.task import deferLater

        await self.resumed
        self.in_batch = True
        rows = [
            (self.run, e.position, e.event["event_id"], batch.upto, int(e.maybe_repeated))
            for e in batch.events
        ]
        await self.api.run_db("audit", _record_txn, rows)
        self.recorded += len(rows)
        if self.delay:
            await deferLater(self.api.reactor, self.delay, lambda: None)
        self.in_batch = False

    async def resume(self, request: ApiRequest) -> dict[str, Any]:
        if not self.resumed.called:
            self.resumed.callback(None)
        return {}

    async def state(self, request: ApiRequest) -> dict[str, Any]:
        return {"recorded": self.recorded, "in_batch": self.in_batch}


def _record_txn(txn: Txn, rows: list[tuple[Any, ...]]) -> None:
    txn.insert_many("stream_audit", ("run", "position", "event_id", "batch_upto", "maybe_repeated"), rows)
