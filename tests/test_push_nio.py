"""The push issue's end-to-end check with a real client: matrix-nio sets an http pusher,
edits its push rules (mutes a room with a room rule, adds a keyword content rule), and
both its /sync counts and the push gateway's requests follow.

A real server process with the push plugin; the push gateway is a real HTTP endpoint on
127.0.0.1 in a thread of this test (no real gateway, Sygnal, runs here). It checks what a
gateway checks (the Push Gateway API's path, a JSON body with a `notification` whose
`devices` each carry an app id and a pushkey; 400 otherwise) and records each request.

nio has no pusher API: the pusher is set by a raw `POST /pushers/set` through nio's own
session (`AsyncClient.send`), with the client's access token. The pusher belongs to a
"phone" device that never syncs (so it is pushed at once, docs/push.md "Suppression");
a second nio device of the same user edits the rules and reads the counts.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
import requests
from conftest import ServerProcess
from nio import AsyncClient, LoginResponse, PushNotify, PushRuleKind, PushSetTweak, SyncResponse

T = TypeVar("T")
CS = "/_matrix/client/v3"
NOTIFY = "/_matrix/push/v1/notify"
PASSWORD = "push-nio-" + secrets.token_urlsafe(8)


class Gateway:
    """A push gateway endpoint recording the notifications it accepted."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.bad: list[bytes] = []
        self._cond = threading.Condition()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    notification = json.loads(raw)["notification"]
                    devices = notification["devices"]
                    ok = self.path == NOTIFY and bool(devices)
                    ok = ok and all(
                        isinstance(d["app_id"], str) and isinstance(d["pushkey"], str) for d in devices
                    )
                except (ValueError, KeyError, TypeError):
                    ok = False
                answer = b'{"rejected": []}' if ok else b'{"error": "bad request"}'
                with gateway._cond:
                    if ok:
                        gateway.notifications.append(notification)
                    else:
                        gateway.bad.append(raw)
                    gateway._cond.notify_all()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}{NOTIFY}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.notifications) >= count, timeout), (
                f"{len(self.notifications)} pushes, not {count}: {self.notifications}"
            )
            return list(self.notifications)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


def run(coro: Coroutine[Any, Any, T], timeout: float = 90) -> T:
    """asyncio.run(coro) on a fresh thread and loop (nio is asyncio; the tests run Twisted)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


def http(server: ServerProcess, method: str, path: str, token: str, **kw: Any) -> requests.Response:
    return requests.request(
        method, server.url(CS + path), headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw
    )


def send(server: ServerProcess, token: str, room_id: str, body: str) -> str:
    path = f"/rooms/{room_id}/send/m.room.message/{secrets.token_hex(6)}"
    r = http(server, "PUT", path, token, json={"msgtype": "m.text", "body": body, "m.mentions": {}})
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def room_with(server: ServerProcess, owner: str, *members: str, name: str) -> str:
    r = http(server, "POST", "/createRoom", owner, json={"preset": "public_chat", "name": name})
    room_id = str(r.json()["room_id"])
    for token in members:
        assert http(server, "POST", f"/join/{room_id}", token, json={}).status_code == 200
    return room_id


def test_nio_sets_a_pusher_edits_rules_and_sees_counts_and_pushes_follow(
    start_server: Any, gateway: Gateway
) -> None:
    server: ServerProcess = start_server(
        {
            "pushers": {"allow_private_addresses": True},  # the gateway is on 127.0.0.1
            "encryption": {"enabled_by_default_for_room_type": "off"},
            "plugins": [{"module": "plugins.push.PushPlugin", "config": {"ack_wait": "2s"}}],
        }
    )
    alice = server.register("alice", PASSWORD)
    carol = server.register("carol", PASSWORD)
    server.register("bob", PASSWORD)
    bob_id = f"@bob:{server.server_name}"

    async def scenario() -> None:
        phone = AsyncClient(server.url(""), bob_id)
        laptop = AsyncClient(server.url(""), bob_id)
        try:
            for client, name in ((phone, "phone"), (laptop, "laptop")):
                login = await client.login(PASSWORD, device_name=name)
                assert isinstance(login, LoginResponse), login
            auth = {"Authorization": f"Bearer {phone.access_token}", "Content-Type": "application/json"}
            pusher = {
                "kind": "http",
                "app_id": "org.example.nio",
                "pushkey": "bob-phone",
                "app_display_name": "nio test",
                "device_display_name": "Bob's phone",
                "lang": "en",
                "data": {"url": gateway.url},
            }
            r = await phone.send("POST", f"{CS}/pushers/set", json.dumps(pusher), auth)
            assert r.status == 200, await r.text()
            r = await phone.send("GET", f"{CS}/pushers", None, auth)
            [listed] = (await r.json())["pushers"]
            assert (listed["pushkey"], listed["data"]["url"]) == ("bob-phone", gateway.url)

            room = room_with(
                server, alice["access_token"], laptop.access_token, carol["access_token"], name="Ops"
            )
            quiet = room_with(
                server, alice["access_token"], laptop.access_token, carol["access_token"], name="Noise"
            )

            async def counts() -> dict[str, tuple[int, int]]:
                # full_state: every joined room, also those without new events since.
                response = await laptop.sync(timeout=0, full_state=True)
                assert isinstance(response, SyncResponse), response
                return {
                    room_id: (
                        info.unread_notifications.notification_count or 0,
                        info.unread_notifications.highlight_count or 0,
                    )
                    for room_id, info in response.rooms.join.items()
                }

            # Default rules: a message in a 3-member room notifies, no sound, no highlight.
            before = send(server, alice["access_token"], quiet, "before the rules changed")
            [push] = gateway.wait_for(1)
            assert (push["event_id"], push["room_id"], push["room_name"]) == (before, quiet, "Noise")
            assert push["devices"][0]["tweaks"] == {} and push["prio"] == "low"
            assert (await counts())[quiet] == (1, 0)

            # Mute `quiet` with a room rule (actions []), add a keyword content rule.
            r = await laptop.set_pushrule("global", PushRuleKind.room, quiet, actions=[])
            assert r.__class__.__name__ == "SetPushRuleResponse", r
            r = await laptop.set_pushrule(
                "global",
                PushRuleKind.content,
                "deploys",
                actions=[PushNotify(), PushSetTweak("highlight", True), PushSetTweak("sound", "default")],
                pattern="deploy*",
            )
            assert r.__class__.__name__ == "SetPushRuleResponse", r
            assert (await counts())[quiet] == (0, 0)  # muted: counted again with the new rules

            muted = send(server, alice["access_token"], quiet, "nobody hears this")
            hello = send(server, alice["access_token"], room, "hello")
            deploy = send(server, carol["access_token"], room, "Deploying at 5")
            pushes = gateway.wait_for(3)
            # One pusher's pushes arrive in stream order: the muted message would come first.
            assert [p["event_id"] for p in pushes[1:]] == [hello, deploy]
            assert muted not in json.dumps(gateway.notifications)
            hello_push, deploy_push = pushes[1:]
            assert hello_push["devices"][0]["tweaks"] == {} and hello_push["prio"] == "low"
            assert deploy_push["devices"][0]["tweaks"] == {"highlight": True, "sound": "default"}
            assert deploy_push["prio"] == "high"  # the keyword rule plays a sound
            assert deploy_push["content"]["body"] == "Deploying at 5"
            assert deploy_push["counts"] == {"unread": 2}  # Ops 2, Noise muted
            now = await counts()
            assert now[room] == (2, 1) and now[quiet] == (0, 0)

            # Unmute: pushes and counts come back for the room.
            r = await laptop.delete_pushrule("global", PushRuleKind.room, quiet)
            assert r.__class__.__name__ == "DeletePushRuleResponse", r
            heard = send(server, alice["access_token"], quiet, "now you hear")
            pushes = gateway.wait_for(4)
            assert pushes[3]["event_id"] == heard and pushes[3]["counts"] == {"unread": 5}
            assert (await counts())[quiet] == (3, 0)
            assert gateway.bad == [] and len(gateway.notifications) == 4
        finally:
            await phone.close()
            await laptop.close()

    run(scenario())
