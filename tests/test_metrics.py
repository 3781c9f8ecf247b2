"""Prometheus metrics of a real `homeserver run` process, scraped after real traffic."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import websocket
from conftest import ROOT, ServerProcess, free_port
from prometheus_client.parser import text_string_to_metric_families

SECRET = "scrape-secret-0123456789"
DASHBOARD = ROOT / "contrib" / "grafana" / "homeserver-dashboard.json"
SEND_ROUTE = "/_matrix/client/{version:v3|r0}/rooms/{room_id}/send/{event_type}/{txn_id}"
SYNC_ROUTE = "/_matrix/client/{version:v3|r0}/sync"


def metrics_config(port: int, **extra: Any) -> dict[str, Any]:
    return {"metrics": {"enabled": True, "port": port, "activity_refresh": "1s", **extra}}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return parse(r.text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(port: int, check: Callable[[dict[Any, float]], bool], timeout: float = 15) -> dict[Any, float]:
    """Scrape until `check` holds (the server process moves on its own time), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "metrics never reached the expected values"
        time.sleep(0.05)


def auth(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['access_token']}"}


def test_metrics_are_not_served_by_default(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    r = requests.get(server.url("/_homeserver/metrics"), headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_UNRECOGNIZED"
    r = requests.get(server.url("/metrics"))
    assert r.status_code == 404
    assert "metrics on http" not in server.log_text()


def test_traffic_moves_the_metrics(start_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    server = start_server(metrics_config(port))
    alice, bob = server.register("alice"), server.register("bob")
    r = requests.post(
        server.url("/_matrix/client/v3/createRoom"),
        json={"preset": "public_chat", "invite": [bob["user_id"]]},
        headers=auth(alice),
    )
    room_id = r.json()["room_id"]
    requests.post(
        server.url(f"/_matrix/client/v3/join/{room_id}"), json={}, headers=auth(bob)
    ).raise_for_status()
    since = requests.get(server.url("/_matrix/client/v3/sync"), headers=auth(bob)).json()["next_batch"]
    before = scrape(port)

    # An open long-poll shows in the gauges while it waits.
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        answer["sync"] = requests.get(
            server.url("/_matrix/client/v3/sync"),
            params={"since": since, "timeout": "30000"},
            headers=auth(bob),
            timeout=40,
        ).json()

    poller = threading.Thread(target=long_poll)
    poller.start()
    waiting = wait_for(
        port,
        lambda s: (
            value(s, "homeserver_long_polls_waiting") == 1
            and value(s, "homeserver_http_requests_in_flight", route=SYNC_ROUTE) == 1
        ),
    )
    assert value(waiting, "homeserver_http_requests_in_flight", route=SYNC_ROUTE) == 1

    # A send: one more event persisted and one more commit; the long-poll answers.
    r = requests.put(
        server.url(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn1"),
        json={"msgtype": "m.text", "body": "hello"},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    poller.join(10)
    assert room_id in answer["sync"]["rooms"]["join"]
    after = wait_for(port, lambda s: value(s, "homeserver_long_polls_waiting") == 0)
    assert (
        value(after, "homeserver_events_persisted_total")
        == value(before, "homeserver_events_persisted_total") + 1
    )
    assert value(after, "homeserver_event_commit_batch_size_count") > value(
        before, "homeserver_event_commit_batch_size_count"
    )
    assert value(after, "homeserver_http_requests_in_flight", route=SYNC_ROUTE) == 0
    # The send's way through the server, stage by stage (homeserver/send_stages.py).
    for stage in ("queued", "commit", "publish"):
        count = "homeserver_send_stage_seconds_count"
        assert value(after, count, stage=stage) > value(before, count, stage=stage), stage
    assert value(after, "homeserver_send_stage_seconds_count", stage="reactor_lateness") > 0

    # Requests are labelled by route template and status class, never by raw path.
    sends = ("homeserver_http_request_duration_seconds_count", SEND_ROUTE)
    assert value(after, sends[0], method="PUT", route=sends[1], status="2xx") == 1
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert room_id not in text and "txn1" not in text
    requests.get(server.url("/_matrix/client/v3/no/such/path"))
    requests.put(server.url(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t2"), json={})
    unmatched = scrape(port)
    assert value(unmatched, sends[0], method="PUT", route=sends[1], status="4xx") == 1
    assert (
        value(
            unmatched,
            "homeserver_http_request_duration_seconds_count",
            method="GET",
            route="<unmatched>",
            status="4xx",
        )
        >= 1
    )

    # Plugins' metrics, the committed-event stream's consumers, pool waits.
    assert value(after, "homeserver_plugin_example_events_seen_total", type="m.room.message") >= 1
    assert ("homeserver_stream_consumer_lag", (("consumer", "search_index"),)) in after
    assert value(after, "homeserver_thread_pool_wait_seconds_count", pool="sqlite") > 0

    # Active users and messages per day, recounted every second here.
    activity = wait_for(
        port,
        lambda s: (
            value(s, "homeserver_daily_active_users") == 2 and value(s, "homeserver_messages_last_day") == 1
        ),
    )
    assert value(activity, "homeserver_monthly_active_users") == 2

    # A WebSocket stream is counted while open.
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/_homeserver/ws",
        header=[f"Authorization: Bearer {bob['access_token']}"],
    )
    try:
        wait_for(port, lambda s: value(s, "homeserver_websocket_streams_open") == 1)
    finally:
        ws.close()
    final = wait_for(port, lambda s: value(s, "homeserver_websocket_streams_open") == 0)
    check_dashboard({name for name, _ in final})


def dashboard_expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in dashboard_expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in dashboard_expressions(v)]
    return []


def check_dashboard(exported: set[str]) -> None:
    """Every expression of the Grafana dashboard names metrics this server exports."""
    expressions = dashboard_expressions(json.loads(DASHBOARD.read_text()))
    assert len(expressions) >= 15
    for expr in expressions:
        # Label matchers and strings hold label values, not metric names.
        bare = re.sub(r'\{[^}]*\}|"[^"]*"', "", expr)
        names = {
            t
            for t in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)
            if t.startswith(("homeserver_", "process_"))
        }
        assert names, expr
        assert names <= exported, (expr, names - exported)


def test_garbage_collector_pauses_are_measured(start_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    start_server(metrics_config(port))
    # The young-generation timer collects every 100 ms once start-up is done.
    wait_for(port, lambda s: value(s, "homeserver_gc_pause_seconds_count", generation="0") > 0)


def test_main_listener_path_needs_the_bearer_secret(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server({"metrics": {"bearer_secret": SECRET}})
    path = server.url("/_homeserver/metrics")
    r = requests.get(path)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = requests.get(path, headers={"Authorization": "Bearer not-the-secret"})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    r = requests.get(path, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200
    assert "homeserver_events_persisted_total" in r.text
    # No listener of its own unless enabled.
    assert "metrics on http" not in server.log_text()


def _public_address() -> str | None:
    """An address of this machine that is not loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


def test_listener_stays_off_the_public_interface(start_server: Callable[..., ServerProcess]) -> None:
    address = _public_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    start_server(metrics_config(port))
    scrape(port)  # served on loopback
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=5).close()


def test_a_public_bind_address_must_be_allowed(tmp_path: Any) -> None:
    from conftest import start_server_process

    with pytest.raises(RuntimeError, match="metrics.bind_address"):
        start_server_process(tmp_path, metrics_config(free_port(), bind_address="0.0.0.0"))  # noqa: S104
