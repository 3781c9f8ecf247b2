"""The plugin interface (homeserver.plugins): the example plugin in a real server, and
in-process HomeServers for failure isolation, route prefixes, metrics, jobs and a
third-party plugin defined right here.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import requests
from conftest import ServerProcess
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from homeserver.config import parse_config
from homeserver.core.clock import Clock as ServerClock
from homeserver.metrics import ServerMetrics
from homeserver.plugins import (
    ApiRequest,
    PluginApi,
    PluginConfigError,
    PluginLoadError,
    Requester,
    Response,
)
from homeserver.server import HomeServer

EXAMPLE = "plugins.example.ExamplePlugin"


def _core_metric_names() -> set[str]:
    registry = CollectorRegistry()
    ServerMetrics(registry)
    return {family.name for family in registry.collect()}


# The core's own metrics in the same registry.
CORE_METRICS = {
    "homeserver_stream_consumer_lag",
    "homeserver_federation_destination_lag",
    "homeserver_federation_destination_backoff_seconds",
} | _core_metric_names()

# The example plugin through a real server -----------------------------------------


def test_example_hello_needs_auth(server: ServerProcess) -> None:
    r = requests.get(server.url("/_plugins/example/hello"), timeout=10)
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_MISSING_TOKEN"

    r = requests.get(
        server.url("/_plugins/example/hello"), headers={"Authorization": "Bearer nonsense"}, timeout=10
    )
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_UNKNOWN_TOKEN"


def test_example_hello_greets_and_counts_in_its_own_table(server: ServerProcess) -> None:
    user = server.register("plugin_greeter")
    headers = {"Authorization": f"Bearer {user['access_token']}"}
    counts = []
    for _ in range(3):
        r = requests.get(server.url("/_plugins/example/hello"), headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["message"] == f"Hello, {user['user_id']}"
        counts.append(body["count"])
    assert counts == [1, 2, 3]

    # Another user has a count of its own.
    other = server.register("plugin_other")
    r = requests.get(
        server.url("/_plugins/example/hello"),
        headers={"Authorization": f"Bearer {other['access_token']}"},
        timeout=10,
    )
    assert r.json()["count"] == 1

    db = sqlite3.connect(server.data_dir / "homeserver.db")
    try:
        rows = dict(db.execute("SELECT user_id, count FROM example_greetings").fetchall())
        versions = db.execute(
            "SELECT version, name FROM schema_versions WHERE component = 'plugin.example'"
        ).fetchall()
    finally:
        db.close()
    assert rows[user["user_id"]] == 3
    assert rows[other["user_id"]] == 1
    assert versions == [(1, "greetings")]


def test_example_stats_is_public(server: ServerProcess) -> None:
    r = requests.get(server.url("/_plugins/example/stats"), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["events_seen"], dict)
    assert isinstance(body["ticks"], int)


def test_unknown_plugin_path_is_unrecognized(server: ServerProcess) -> None:
    r = requests.get(server.url("/_plugins/example/nope"), timeout=10)
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_UNRECOGNIZED"


# Plugins defined here: a third-party plugin loads through the same interface --------


class RecorderPlugin:
    """A plugin outside plugins/: routes under two prefixes, events, jobs, metrics."""

    NAME = "recorder"
    PATH_PREFIXES = ("/_recorder/",)

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> dict[str, Any]:
        interval = raw.get("interval", 1)
        if not isinstance(interval, int | float) or interval <= 0:
            raise PluginConfigError("'interval' must be a positive number")
        return {"interval": float(interval), "label": str(raw.get("label", "rec"))}

    def __init__(self, config: dict[str, Any], api: PluginApi) -> None:
        self.config = config
        self.api = api
        self.events: list[dict[str, Any]] = []
        self.job_runs = 0
        self.failing_job_runs = 0
        self.stopped = False
        self.events_counter = api.counter("events_total", "Events the recorder saw", ("type",))
        self.job_gauge = api.gauge("job_runs", "Runs of the recorder's job")

    async def start(self) -> None:
        self.api.register_route("GET", "/_plugins/recorder/ping", self.ping, require_auth=False)
        self.api.register_route("GET", "/_recorder/{thing}", self.thing, require_auth=False)
        self.api.register_route("GET", "/_plugins/recorder/me", self.me)
        self.api.subscribe_events(self.on_event)
        self.api.schedule(self.config["interval"], self.failing_job)
        self.api.schedule(self.config["interval"], self.job)

    async def ping(self, request: ApiRequest) -> dict[str, Any]:
        return {"label": self.config["label"], "server_name": self.api.server_name}

    async def thing(self, request: ApiRequest, thing: str) -> Response:
        return Response({"thing": thing}, 201)

    async def me(self, request: ApiRequest, requester: Requester) -> dict[str, Any]:
        return {"user_id": requester.user_id}

    async def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.events_counter.labels(event["type"]).inc()

    def failing_job(self) -> None:
        self.failing_job_runs += 1
        raise RuntimeError("job failed on purpose")

    async def job(self) -> None:
        self.job_runs += 1
        self.job_gauge.set(self.job_runs)

    def stop(self) -> None:
        self.stopped = True


class FaultySubscriberPlugin:
    NAME = "faulty"

    def __init__(self, config: Any, api: PluginApi) -> None:
        self.calls = 0
        api.subscribe_events(self.on_event)

    def on_event(self, event: dict[str, Any]) -> None:
        self.calls += 1
        raise ValueError("subscriber failed on purpose")


class AsyncFaultySubscriberPlugin:
    NAME = "faulty_async"

    def __init__(self, config: Any, api: PluginApi) -> None:
        api.subscribe_events(self.on_event)

    async def on_event(self, event: dict[str, Any]) -> None:
        raise KeyError("async subscriber failed on purpose")


class EscapingRoutePlugin:
    NAME = "escaping"

    def __init__(self, config: Any, api: PluginApi) -> None:
        self.api = api

    def start(self) -> None:
        self.api.register_route("GET", "/_matrix/client/v3/hijacked", self.handler, require_auth=False)

    async def handler(self, request: ApiRequest) -> dict[str, Any]:
        return {}


class OverlappingPrefixPlugin:
    NAME = "overlapping"
    PATH_PREFIXES = ("/_matrix/client/",)

    def __init__(self, config: Any, api: PluginApi) -> None:
        pass


class BadMetricPlugin:
    NAME = "badmetric"

    def __init__(self, config: Any, api: PluginApi) -> None:
        api.counter("Bad-Name", "not a valid metric name")


def plugin_path(cls: type) -> str:
    """The `module:` of a plugin class defined in this test module, whatever it is imported as."""
    return f"{cls.__module__}.{cls.__qualname__}"


def make_hs(tmp_path: Path, plugins: list[dict[str, Any]], clock: Any = None) -> HomeServer:
    """`clock`: a twisted.internet.task.Clock the test moves (default: the reactor's time)."""
    from twisted.internet import reactor as global_reactor

    raw = {
        "server_name": "plugins.test",
        "data_dir": str(tmp_path / "data"),
        "auth": {"password_hashing": "fast"},
        "plugins": plugins,
    }
    config = parse_config(raw, "test-plugins.yaml", env={})
    return HomeServer(config, global_reactor, ServerClock(clock) if clock is not None else None)


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def failures(events: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [e for e in events if "log_failure" in e and text in formatEvent(e)]


async def send_events(hs: HomeServer) -> list[str]:
    """A room with a message and a reaction, through the real send path; their event ids
    once every plugin subscription has handled them."""
    sender = "@a:plugins.test"
    room_id = await hs.rooms.create_room(sender, {})
    message = await hs.events.send(sender, room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
    reaction = await hs.events.send(
        sender,
        room_id,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message.event_id, "key": "+1"}},
    )
    for consumer in hs.stream.consumers():
        await consumer.reached(hs.stream.position)
    return [message.event_id, reaction.event_id]


@pytest_twisted.ensureDeferred
async def test_failing_subscriber_is_logged_and_the_next_one_still_gets_the_event(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    hs = make_hs(
        tmp_path,
        [
            {"module": plugin_path(FaultySubscriberPlugin)},
            {"module": plugin_path(AsyncFaultySubscriberPlugin)},
            {"module": EXAMPLE, "config": {"greeting": "Hi"}},
            {"module": plugin_path(RecorderPlugin)},
        ],
    )
    try:
        await hs.start()
        faulty, _, example, recorder = hs.plugins
        message_id, reaction_id = await send_events(hs)

        seen = [e["event_id"] for e in recorder.events]
        assert seen[-2:] == [message_id, reaction_id]  # in stream order, after the room's state
        assert faulty.calls == len(seen)
        assert example.events_by_type["m.room.message"] == 1
        assert example.events_by_type["m.reaction"] == 1
        assert sum(example.events_by_type.values()) == len(seen)
        logged = failures(log_events, f"plugin faulty failed while handling event {message_id}")
        assert len(logged) == 1
        assert logged[0]["log_failure"].check(ValueError)
        assert failures(log_events, f"plugin faulty_async failed while handling event {reaction_id}")
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_plugin_metrics_are_prefixed_in_the_server_registry(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": EXAMPLE}, {"module": plugin_path(RecorderPlugin)}])
    try:
        await hs.start()
        await send_events(hs)
        text = generate_latest(hs.metrics).decode()
        assert 'homeserver_plugin_example_events_seen_total{type="m.room.message"} 1.0' in text
        assert 'homeserver_plugin_recorder_events_total{type="m.reaction"} 1.0' in text
        assert "homeserver_plugin_recorder_job_runs 0.0" in text
        names = {family.name for family in hs.metrics.collect()} - CORE_METRICS
        assert names
        assert all(name.startswith("homeserver_plugin_") for name in names), names
    finally:
        await hs.stop(None)


@pytest_twisted.ensureDeferred
async def test_bad_metric_name_is_refused(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": plugin_path(BadMetricPlugin)}])
    try:
        with pytest.raises(PluginLoadError, match="bad metric name"):
            await hs.start()
    finally:
        hs.storage.close()


@pytest_twisted.ensureDeferred
async def test_route_outside_prefixes_is_refused(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": plugin_path(EscapingRoutePlugin)}])
    try:
        with pytest.raises(PluginLoadError) as info:
            await hs.start()
        assert "escaping" in str(info.value)
        assert "/_matrix/client/v3/hijacked" in str(info.value)
        assert "/_matrix/client/v3/hijacked" not in hs.router.templates()
    finally:
        hs.storage.close()


@pytest_twisted.ensureDeferred
async def test_prefix_overlapping_core_routes_is_refused(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": plugin_path(OverlappingPrefixPlugin)}])
    try:
        with pytest.raises(PluginLoadError, match="overlaps"):
            await hs.start()
    finally:
        hs.storage.close()


@pytest_twisted.ensureDeferred
async def test_plugin_listed_twice_is_refused(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": EXAMPLE}, {"module": EXAMPLE}])
    try:
        with pytest.raises(PluginLoadError, match="listed twice"):
            await hs.start()
    finally:
        hs.storage.close()


@pytest_twisted.ensureDeferred
async def test_plugin_config_error_names_the_plugin(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": plugin_path(RecorderPlugin), "config": {"interval": -1}}])
    try:
        with pytest.raises(PluginLoadError) as info:
            await hs.start()
        message = str(info.value)
        assert "test-plugins.yaml" in message
        assert "plugins[0].config" in message
        assert "RecorderPlugin" in message
        assert "'interval' must be a positive number" in message
    finally:
        hs.storage.close()


@pytest_twisted.ensureDeferred
async def test_scheduled_jobs_run_and_a_failing_job_keeps_running(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    clock = Clock()
    hs = make_hs(
        tmp_path,
        [
            {"module": EXAMPLE, "config": {"tick_interval": 2}},
            {"module": plugin_path(RecorderPlugin), "config": {"interval": 1}},
        ],
        clock=clock,
    )
    try:
        await hs.start()
        example, recorder = hs.plugins
        assert (example.ticks, recorder.job_runs, recorder.failing_job_runs) == (0, 0, 0)
        for _ in range(4):
            clock.advance(1)
        assert recorder.job_runs == 4
        assert recorder.failing_job_runs == 4
        assert example.ticks == 2
        assert len(failures(log_events, "background job of plugin recorder failed")) == 4
        assert "homeserver_plugin_recorder_job_runs 4.0" in generate_latest(hs.metrics).decode()
    finally:
        await hs.stop(None)
    # Stopping the server stops the jobs and calls the plugins' stop().
    assert recorder.stopped
    clock.advance(10)
    assert recorder.job_runs == 4 and example.ticks == 2
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_third_party_plugin_serves_routes_through_the_same_interface(tmp_path: Path) -> None:
    import treq
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor

    hs = make_hs(tmp_path, [{"module": plugin_path(RecorderPlugin), "config": {"label": "from-tests"}}])
    await hs.start()
    port = reactor.listenTCP(0, hs.site(), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        (recorder,) = hs.plugins
        assert isinstance(recorder, RecorderPlugin)
        assert recorder.api.name == "recorder"
        assert recorder.api.data_dir == tmp_path / "data" / "plugins" / "recorder"

        r = await treq.get(f"{base}/_plugins/recorder/ping", persistent=False)
        assert r.code == 200
        assert await r.json() == {"label": "from-tests", "server_name": "plugins.test"}

        r = await treq.get(f"{base}/_recorder/widget", persistent=False)
        assert r.code == 201
        assert await r.json() == {"thing": "widget"}

        r = await treq.get(f"{base}/_plugins/recorder/me", persistent=False)
        assert r.code == 401
        assert (await r.json())["errcode"] == "M_MISSING_TOKEN"

        user_id = await hs.accounts.register("carol", "correct horse battery")
        login = await hs.accounts.create_session(user_id, None, None, refreshable=False, ip=None)
        r = await treq.get(
            f"{base}/_plugins/recorder/me",
            headers=Headers({"Authorization": [f"Bearer {login.tokens.access_token}"]}),
            persistent=False,
        )
        assert r.code == 200
        assert await r.json() == {"user_id": "@carol:plugins.test"}
    finally:
        await hs.stop(port)
    assert recorder.stopped


class SchemaAsTextPlugin:
    NAME = "schema_text"
    SCHEMA_DIR = "sql"  # must be a Path to a directory

    def __init__(self, config: Any, api: PluginApi) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_schema_dir_must_be_a_directory(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": plugin_path(SchemaAsTextPlugin)}])
    try:
        with pytest.raises(PluginLoadError, match="SCHEMA_DIR must be an existing directory"):
            await hs.start()
    finally:
        hs.storage.close()


@pytest_twisted.ensureDeferred
async def test_run_blocking_uses_each_plugins_own_threads(tmp_path: Path) -> None:
    hs = make_hs(tmp_path, [{"module": EXAMPLE}, {"module": plugin_path(RecorderPlugin)}])
    release = threading.Event()
    try:
        await hs.start()
        example, recorder = hs.plugins
        name = await example.api.run_blocking(lambda: threading.current_thread().name)
        assert name.startswith("plugin-example-")
        with pytest.raises(ValueError):
            await example.api.run_blocking(int, "not a number")

        # Every thread of one plugin busy: another plugin's work and the core's still run.
        busy = [example.api.run_blocking(release.wait) for _ in range(10)]
        queued = example.api.run_blocking(lambda: "after the busy ones")
        # (With shared threads these would wait for `release`: time out rather than hang.)
        assert await recorder.api.run_blocking(str.upper, "free").addTimeout(10, hs.reactor) == "FREE"
        assert await hs.blocking.run(str.upper, "core").addTimeout(10, hs.reactor) == "CORE"
        assert not queued.called
        release.set()
        assert await queued == "after the busy ones"
        for d in busy:
            assert await d is True
    finally:
        release.set()
        await hs.stop(None)


CRASHING_PLUGIN = """
class CrashingPlugin:
    NAME = "crashing"

    def __init__(self, config, api):
        self.api = api

    async def start(self):
        self.api.register_route("GET", "/_plugins/crashing/boom", self.boom, require_auth=False)

    async def boom(self, request):
        raise RuntimeError("a bug in a handler")
"""


def test_a_handler_bug_is_a_logged_500_and_the_server_goes_on(start_server: Any, tmp_path: Path) -> None:
    (tmp_path / "crashing_plugin.py").write_text(CRASHING_PLUGIN)
    s = start_server(
        {"plugins": [{"module": "crashing_plugin.CrashingPlugin", "config": {}}]},
        env={"PYTHONPATH": str(tmp_path)},
    )
    for _ in range(2):
        r = requests.get(s.url("/_plugins/crashing/boom"), timeout=10)
        assert r.status_code == 500
        assert r.json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    assert requests.get(s.url("/_matrix/client/versions"), timeout=10).status_code == 200
    log = s.log_path.read_text()
    assert log.count("unhandled error on GET /_plugins/crashing/boom") == 2
    assert "a bug in a handler" in log
