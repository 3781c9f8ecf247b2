"""Push delivery while the database is down (plugins/push/delivery.py).

A notification whose body cannot be built, or that cannot be parked, because the database is
unreachable stays at the head of its pusher's queue and is tried again after a pause, without
waiting for another event: it is pushed once the database is back, and its hold on the stream
is released then, so the subscription's saved position moves on. The plugin API is a stand-in
here (the database a switch); tests/test_pg_outage_under_load.py runs the real thing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from homeserver.plugins import EventBatch, PushDecision, Pusher, StreamEvent
from homeserver.storage.connection_pool import DatabaseUnavailable
from plugins.push.config import DeliveryConfig
from plugins.push.delivery import Deliverer
from plugins.push.delivery_http import Sent, TryAgain


class Metric:
    def labels(self, *values: str) -> "Metric":
        return self

    def inc(self, amount: float = 1) -> None:
        pass


class Api:
    """What the deliverer asks of the server, with a database that is down while `down` is set."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.time_ms = lambda: int(self.clock.seconds() * 1000)  # type: ignore[attr-defined]
        self.log = Logger(namespace="plugins.push")
        self.down = False  # every read and write fails
        self.failing: set[str] = set()  # these writes fail
        self.writes: Counter[str] = Counter()
        self.pusher = Pusher(
            "p1", "@bob:x", "DEV", "http", "org.example", "key1", 0, "App", "Phone", None, "en",
            {"url": "http://gateway.invalid/_matrix/push/v1/notify", "format": "event_id_only"},
        )  # fmt: skip

    def counter(self, *args: Any) -> Metric:
        return Metric()

    def schedule(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _db(self) -> None:
        if self.down:
            raise DatabaseUnavailable()

    async def push_decisions(self, event: StreamEvent) -> list[PushDecision]:
        return [PushDecision("@bob:x", False, {})]

    async def pushers_for_users(self, users: list[str]) -> dict[str, list[Pusher]]:
        return {"@bob:x": [self.pusher]}

    def device_connected(self, *args: Any) -> bool:
        return False

    async def room_encrypted(self, room_id: str) -> bool:
        return False

    async def event_read(self, user_id: str, event: StreamEvent) -> bool:
        self._db()  # the user's read receipt, when their count is not in memory
        return False

    async def notification_count(self, user_id: str) -> int:
        self._db()
        return 1

    async def pushers_by_ids(self, ids: list[str]) -> list[Pusher]:
        self._db()
        return [self.pusher]

    async def run_db(self, name: str, fn: Any, *args: Any) -> Any:
        self._db()
        if name in self.failing:
            raise DatabaseUnavailable()
        self.writes[name] += 1
        return []


class Gateway:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.posted: list[str] = []

    async def post(self, url: str, body: dict[str, Any]) -> Any:
        self.posted.append(body["notification"]["event_id"])
        return self.outcome


def batch(position: int, released: list[int]) -> EventBatch:
    event = {"event_id": f"$e{position}", "room_id": "!r:x", "sender": "@alice:x", "type": "m.room.message",
             "content": {"body": "hi"}, "origin_server_ts": 0}  # fmt: skip
    return EventBatch(
        position - 1, position, [StreamEvent(position, event)], lambda: lambda: released.append(position)
    )


def deliverer(api: Api, gateway: Gateway) -> Deliverer:
    config = DeliveryConfig(retry_min_s=1.0)
    return Deliverer(api, config, gateway)  # type: ignore[arg-type]


def test_a_push_whose_body_needs_the_database_goes_out_once_it_is_back() -> None:
    api, gateway = Api(), Gateway(Sent(()))
    push = deliverer(api, gateway)
    released: list[int] = []
    api.down = True
    Deferred.fromCoroutine(push.on_batch(batch(1, released)))
    assert gateway.posted == [] and released == []
    api.clock.advance(1.0)  # still down: tried again, and again later
    assert gateway.posted == [] and released == []
    api.down = False
    api.clock.advance(2.0)  # no new event needed
    assert gateway.posted == ["$e1"]
    assert released == [1]  # the stream position moves past it
    api.clock.advance(60)
    assert gateway.posted == ["$e1"]


def test_a_push_that_cannot_be_parked_is_parked_once_the_database_is_back() -> None:
    api, gateway = Api(), Gateway(TryAgain("503"))
    push = deliverer(api, gateway)
    released: list[int] = []
    api.failing = {"park"}  # the gateway fails, then the database before it is parked
    Deferred.fromCoroutine(push.on_batch(batch(1, released)))
    assert gateway.posted == ["$e1"] and released == []
    api.clock.advance(1.0)
    assert api.writes["park"] == 0 and released == []
    api.failing = set()
    api.clock.advance(2.0)
    assert api.writes["park"] == 1
    assert released == [1]
    assert gateway.posted == ["$e1"]  # parked as it was, not sent again meanwhile


def test_progress_that_could_not_be_saved_is_saved_once_the_database_is_back() -> None:
    api, gateway = Api(), Gateway(Sent(()))
    push = deliverer(api, gateway)
    released: list[int] = []
    api.failing = {"save_progress"}
    Deferred.fromCoroutine(push.on_batch(batch(1, released)))
    assert gateway.posted == ["$e1"] and api.writes["save_progress"] == 0
    api.failing = set()
    api.clock.advance(1.0)  # no other push needed to write it
    assert api.writes["save_progress"] == 1
