"""Push rules through the API: a matrix-nio client edits its rules (mutes a room, adds a
keyword, disables a default) and sees its /sync counts and m.push_rules follow; the
Push Rules API's errors; threads' counts; GET /notifications."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from conftest import ServerProcess
from nio import (
    AsyncClient,
    LoginResponse,
    PushNotify,
    PushRuleKind,
    PushRulesEvent,
    PushSetTweak,
    SyncResponse,
)

T = TypeVar("T")
CS = "/_matrix/client/v3"
PASSWORD = "push-rules-" + secrets.token_urlsafe(8)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def http(server: ServerProcess, method: str, path: str, token: str, **kw: Any) -> requests.Response:
    return requests.request(method, server.url(CS + path), headers=auth(token), timeout=10, **kw)


def send(server: ServerProcess, token: str, room_id: str, content: dict[str, Any]) -> str:
    r = http(
        server,
        "PUT",
        f"/rooms/{room_id}/send/m.room.message/{secrets.token_hex(6)}",
        token,
        json={"msgtype": "m.text", **content},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def room_with(server: ServerProcess, owner: str, *members: str) -> str:
    r = http(server, "POST", "/createRoom", owner, json={"preset": "public_chat"})
    room_id = str(r.json()["room_id"])
    for token in members:
        assert http(server, "POST", f"/join/{room_id}", token, json={}).status_code == 200
    return room_id


def test_nio_client_edits_rules_and_sees_counts_follow(server: ServerProcess) -> None:
    suffix = secrets.token_hex(3)
    alice = server.register(f"alice{suffix}", PASSWORD)
    server.register(f"bob{suffix}", PASSWORD)
    carol = server.register(f"carol{suffix}", PASSWORD)
    bob_id = f"@bob{suffix}:{server.server_name}"

    async def scenario() -> None:
        bob = AsyncClient(server.url(""), bob_id)
        try:
            login = await bob.login(PASSWORD)
            assert isinstance(login, LoginResponse), login
            room_id = room_with(server, alice["access_token"], bob.access_token, carol["access_token"])
            quiet = room_with(server, alice["access_token"], bob.access_token, carol["access_token"])
            first = await bob.sync(timeout=0, full_state=True)
            assert isinstance(first, SyncResponse)
            rules = [e for e in first.account_data_events if isinstance(e, PushRulesEvent)]
            assert rules, "the initial sync carries m.push_rules"

            async def all_counts() -> dict[str, tuple[int, int]]:
                response = await bob.sync(timeout=0)
                assert isinstance(response, SyncResponse)
                return {
                    room: (
                        info.unread_notifications.notification_count or 0,
                        info.unread_notifications.highlight_count or 0,
                    )
                    for room, info in response.rooms.join.items()
                }

            async def counts(room: str) -> tuple[int, int]:
                return (await all_counts())[room]

            # Mute `quiet` with a room rule (actions []), add a keyword content rule.
            r = await bob.set_pushrule("global", PushRuleKind.room, quiet, actions=[])
            assert r.__class__.__name__ == "SetPushRuleResponse", r
            r = await bob.set_pushrule(
                "global",
                PushRuleKind.content,
                "deploys",
                actions=[PushNotify(), PushSetTweak("highlight", True)],
                pattern="deploy*",
            )
            assert r.__class__.__name__ == "SetPushRuleResponse", r
            # The change reaches the client as m.push_rules account data in /sync.
            response = await bob.sync(timeout=0)
            assert isinstance(response, SyncResponse)
            pushed = [e for e in response.account_data_events if isinstance(e, PushRulesEvent)]
            assert pushed and any(rule.id == "deploys" for rule in pushed[-1].global_rules.content)
            assert any(rule.id == quiet for rule in pushed[-1].global_rules.room)

            send(server, alice["access_token"], quiet, {"body": "nobody hears this"})
            send(server, alice["access_token"], room_id, {"body": "hello"})
            send(server, alice["access_token"], room_id, {"body": "Deploying at 5", "m.mentions": {}})
            send(server, carol["access_token"], room_id, {"body": "redeploy is not a word match"})
            both = await all_counts()
            assert both[room_id] == (3, 1)
            assert both[quiet] == (0, 0)  # muted

            # Unmute: the count is computed again from the unread events, with the new rules.
            r = await bob.delete_pushrule("global", PushRuleKind.room, quiet)
            assert r.__class__.__name__ == "DeletePushRuleResponse", r
            send(server, alice["access_token"], quiet, {"body": "now you hear"})
            assert await counts(quiet) == (2, 0)

            # Disable the default message rule: plain messages stop counting; the keyword still does.
            r = await bob.enable_pushrule("global", PushRuleKind.underride, ".m.rule.message", False)
            assert r.__class__.__name__ == "EnablePushRuleResponse", r
            send(server, alice["access_token"], room_id, {"body": "plain"})
            assert await counts(room_id) == (1, 1)
            # Its actions can change too, but it cannot be deleted.
            r = await bob.set_pushrule_actions("global", PushRuleKind.content, "deploys", [PushNotify()])
            assert r.__class__.__name__ == "SetPushRuleActionsResponse", r
            send(server, alice["access_token"], room_id, {"body": "plain again"})
            assert await counts(room_id) == (1, 0)
            r = await bob.delete_pushrule("global", PushRuleKind.underride, ".m.rule.message")
            assert r.__class__.__name__ == "DeletePushRuleError", r
            assert r.status_code == "M_INVALID_PARAM"
        finally:
            await bob.close()

    run(scenario())


def test_push_rule_api_reads_and_errors(server: ServerProcess) -> None:
    user = server.register(f"rules{secrets.token_hex(3)}", PASSWORD)
    token = user["access_token"]
    everything = http(server, "GET", "/pushrules/", token).json()
    override = [r["rule_id"] for r in everything["global"]["override"]]
    assert override[0] == ".m.rule.master" and ".m.rule.room.server_acl" in override
    assert http(server, "GET", "/pushrules/global/", token).json() == everything["global"]

    def call(method: str, path: str, **kw: Any) -> tuple[int, Any]:
        r = http(server, method, "/pushrules/global/" + path, token, **kw)
        return r.status_code, r.json()

    assert call("GET", "override/.m.rule.master/enabled") == (200, {"enabled": False})
    assert call("GET", "underride/.m.rule.call/actions")[1]["actions"][0] == "notify"
    assert call("GET", "override/nope")[1]["errcode"] == "M_NOT_FOUND"
    assert call("GET", "override/nope")[0] == 404
    assert call("DELETE", "override/nope")[0] == 404
    assert call("PUT", "override/nope/enabled", json={"enabled": True})[0] == 404
    assert call("PUT", "override/nope/actions", json={"actions": []})[0] == 404
    status, body = call("PUT", "override/.mine", json={"actions": []})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = call("PUT", "nonsense/x", json={"actions": []})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = call("PUT", "override/x?before=missing", json={"actions": []})
    assert (status, body["errcode"]) == (400, "M_UNKNOWN")
    status, body = call("PUT", "override/x", json={"actions": ["notify"], "conditions": [{"kind": 5}]})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = call("PUT", "override/.m.rule.master/enabled", json={"enabled": "yes"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    r = http(server, "GET", "/pushrules/device/", token)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")

    # A rule with a room id, placed with before/after, read back, enabled flag kept on update.
    room = quote("!abc:example.org")
    assert call("PUT", f"room/{room}", json={"actions": []})[0] == 200
    assert call("PUT", "override/b", json={"actions": [], "conditions": []})[0] == 200
    assert call("PUT", "override/a?after=b", json={"actions": ["notify"], "conditions": []})[0] == 200
    assert call("PUT", "override/a/enabled", json={"enabled": False})[0] == 200
    assert call("PUT", "override/a", json={"actions": ["dont_notify"], "conditions": []})[0] == 200
    status, rule = call("GET", "override/a")
    assert rule == {"rule_id": "a", "default": False, "enabled": False, "conditions": [], "actions": []}
    order = [r["rule_id"] for r in http(server, "GET", "/pushrules/", token).json()["global"]["override"]]
    assert order[:3] == [".m.rule.master", "b", "a"]
    assert call("GET", f"room/{room}")[1]["rule_id"] == "!abc:example.org"
    # Without a token: 401.
    assert requests.get(server.url(CS + "/pushrules/"), timeout=10).status_code == 401


def test_thread_counts_and_notifications_list(server: ServerProcess) -> None:
    suffix = secrets.token_hex(3)
    alice = server.register(f"talice{suffix}", PASSWORD)
    bob = server.register(f"tbob{suffix}", PASSWORD)
    carol = server.register(f"tcarol{suffix}", PASSWORD)
    a, b = alice["access_token"], bob["access_token"]
    room_id = room_with(server, a, b, carol["access_token"])
    root = send(server, a, room_id, {"body": "root"})
    send(
        server, a, room_id, {"body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    mention = send(server, a, room_id, {"body": "hey", "m.mentions": {"user_ids": [bob["user_id"]]}})

    flt = {"room": {"timeline": {"unread_thread_notifications": True}}}

    r = http(server, "GET", "/sync", b, params={"timeout": "0", "filter": json.dumps(flt)})
    joined = r.json()["rooms"]["join"][room_id]
    assert joined["unread_notifications"] == {"notification_count": 2, "highlight_count": 1}
    assert joined["unread_thread_notifications"] == {root: {"notification_count": 1, "highlight_count": 0}}
    # Without the filter: one count for the whole room.
    r = http(server, "GET", "/sync", b, params={"timeout": "0"})
    assert r.json()["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] == 3
    assert "unread_thread_notifications" not in r.json()["rooms"]["join"][room_id]

    # GET /notifications: newest first, paged, highlight-only, with read state.
    page = http(server, "GET", "/notifications", b, params={"limit": "2"}).json()
    assert [n["event"]["event_id"] for n in page["notifications"]][0] == mention
    assert len(page["notifications"]) == 2 and "next_token" in page
    first = page["notifications"][0]
    assert first["room_id"] == room_id and first["read"] is False and isinstance(first["ts"], int)
    assert {"set_tweak": "highlight"} in first["actions"]
    rest = http(server, "GET", "/notifications", b, params={"from": page["next_token"]}).json()
    assert [n["event"]["content"]["body"] for n in rest["notifications"]] == ["root"]
    highlights = http(server, "GET", "/notifications", b, params={"only": "highlight"}).json()
    assert [n["event"]["event_id"] for n in highlights["notifications"]] == [mention]
    r = http(server, "POST", f"/rooms/{room_id}/receipt/m.read/{mention}", b, json={})
    assert r.status_code == 200
    page = http(server, "GET", "/notifications", b).json()
    assert all(n["read"] for n in page["notifications"]) and len(page["notifications"]) == 3
    # Alice's own messages never notify her.
    assert http(server, "GET", "/notifications", a).json()["notifications"] == []
    r = http(server, "GET", "/notifications", b, params={"from": "x"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = http(server, "GET", "/notifications", b, params={"only": "everything"})
    assert r.status_code == 400
