"""An example plugin: the common parts of the plugin interface in a few lines.

- a route under its own prefix: GET /_plugins/example/hello (authenticated)
  greets the caller and counts the greetings in a table it owns;
- GET /_plugins/example/stats (public): how many events it has seen, by type;
- an event subscriber, a metric and a background job;
- its own table, from `SCHEMA_DIR` (applied before `start()` and by `homeserver migrate`).

It imports only `homeserver.plugins`, the plugin interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homeserver.plugins import ApiRequest, PluginApi, PluginConfigError, Requester, Txn


class ExamplePlugin:
    NAME = "example"
    SCHEMA_DIR = Path(__file__).parent / "sql"  # applied before start(), and by `homeserver migrate`

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> dict[str, Any]:
        greeting = raw.get("greeting", "Hello")
        if not isinstance(greeting, str) or not greeting.strip():
            raise PluginConfigError("'greeting' must be a non-empty string")
        unknown = set(raw) - {"greeting", "tick_interval"}
        if unknown:
            raise PluginConfigError(f"unknown key(s): {', '.join(sorted(unknown))}")
        tick = raw.get("tick_interval", 60)
        if not isinstance(tick, int | float) or isinstance(tick, bool) or tick <= 0:
            raise PluginConfigError("'tick_interval' must be a positive number of seconds")
        return {"greeting": greeting, "tick_interval": float(tick)}

    def __init__(self, config: dict[str, Any], api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.events_by_type: dict[str, int] = {}
        self.ticks = 0
        self.events_metric = api.counter("events_seen", "Events the example plugin has seen", ("type",))

    async def start(self) -> None:
        self.api.register_route("GET", "/_plugins/example/hello", self.hello)
        self.api.register_route("GET", "/_plugins/example/stats", self.stats, require_auth=False)
        self.api.subscribe_events(self.on_event)
        self.api.schedule(self.config["tick_interval"], self.tick)

    async def hello(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        count = await self.api.run_db("count_greeting", _count_greeting_txn, requester.user_id)
        return {"message": f"{self.config['greeting']}, {requester.user_id}", "count": count}

    async def stats(self, request: ApiRequest) -> dict[str, Any]:
        return {"events_seen": dict(self.events_by_type), "ticks": self.ticks}

    def on_event(self, event: dict[str, Any]) -> None:
        event_type = str(event["type"])
        self.events_by_type[event_type] = self.events_by_type.get(event_type, 0) + 1
        self.events_metric.labels(event_type).inc()

    def tick(self) -> None:
        self.ticks += 1


def _count_greeting_txn(txn: Txn, user_id: str) -> int:
    row = txn.query_one("SELECT count FROM example_greetings WHERE user_id = ?", (user_id,))
    if row is None:
        txn.execute("INSERT INTO example_greetings (user_id, count) VALUES (?, 1)", (user_id,))
        return 1
    txn.execute("UPDATE example_greetings SET count = count + 1 WHERE user_id = ?", (user_id,))
    return int(row[0]) + 1
