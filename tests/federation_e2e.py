"""The end-to-end federation scenarios, written once for any two servers that speak the client
API (two of ours in tests/test_federation_e2e.py, ours and Synapse in
tests/test_federation_e2e_synapse.py): each user follows its own /sync as a client would."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

WAIT_S = 60


class Member:
    """A user of one server, with the /sync it has read so far."""

    def __init__(self, base_url: str, account: dict[str, Any]) -> None:
        self.base_url = base_url
        self.user_id: str = account["user_id"]
        self.token: str = account["access_token"]
        self.since: str | None = None
        self.timelines: dict[str, list[dict[str, Any]]] = {}
        self.ephemeral: dict[str, list[dict[str, Any]]] = {}
        self.left: set[str] = set()

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return requests.request(
            method,
            f"{self.base_url}/_matrix/client/v3{path}",
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=90,
        )

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        r = self.call(method, path, body, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def say(self, room_id: str, text: str) -> str:
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{quote(text)}-{time.monotonic_ns()}"
        event_id: str = self.ok("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]
        return event_id

    def sync_once(self, timeout_ms: int = 1000) -> None:
        params: dict[str, Any] = {"timeout": str(timeout_ms)}
        if self.since is not None:
            params["since"] = self.since
        body = self.ok("GET", "/sync", **params)
        self.since = body["next_batch"]
        rooms = body.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            self.timelines.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
            self.ephemeral.setdefault(room_id, []).extend(room.get("ephemeral", {}).get("events", []))
        for room_id, room in rooms.get("leave", {}).items():
            self.timelines.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
            self.left.add(room_id)

    def wait(self, what: str, check: Callable[[], Any]) -> Any:
        """Follow /sync until `check()` is truthy (a client waiting for news)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            result = check()
            if result:
                return result
            assert time.monotonic() < deadline, f"{self.user_id} never saw {what}"
            self.sync_once()

    def texts(self, room_id: str) -> list[str]:
        return [
            e["content"]["body"] for e in self.timelines.get(room_id, []) if e["type"] == "m.room.message"
        ]

    def wait_texts(self, room_id: str, texts: list[str]) -> None:
        """Wait for `texts` as the room's latest messages, then check each came once, in order."""
        self.wait(f"{texts}", lambda: set(texts) <= set(self.texts(room_id)))
        seen = [t for t in self.texts(room_id) if t in texts]
        assert seen == texts, seen

    def typing_users(self, room_id: str) -> list[str]:
        typing = [e for e in self.ephemeral.get(room_id, []) if e["type"] == "m.typing"]
        return list(typing[-1]["content"]["user_ids"]) if typing else []

    def read_receipts(self, room_id: str) -> dict[str, set[str]]:
        """event ID -> users, from every m.receipt seen."""
        out: dict[str, set[str]] = {}
        for e in self.ephemeral.get(room_id, []):
            if e["type"] == "m.receipt":
                for event_id, kinds in e["content"].items():
                    out.setdefault(event_id, set()).update(kinds.get("m.read", {}))
        return out

    def member_event(self, room_id: str, user_id: str) -> dict[str, Any] | None:
        for e in reversed(self.timelines.get(room_id, [])):
            if e["type"] == "m.room.member" and e.get("state_key") == user_id:
                return e
        return None


def join_and_talk(host: Member, guest: Member, host_server: str, version: str = "10") -> str:
    """A room on the host's server joined by the guest through it; messages both ways, each
    sent once the sender has seen the other's last, arrive once and in order on both sides."""
    room_id: str = host.ok(
        "POST", "/createRoom", {"preset": "public_chat", "room_version": version, "name": "e2e"}
    )["room_id"]
    guest.ok("POST", f"/join/{quote(room_id)}", {}, server_name=host_server)
    host.wait("the guest's join", lambda: (host.member_event(room_id, guest.user_id) or {}).get("content"))
    tag = room_id[1:6]
    first = [f"{tag} host 1", f"{tag} host 2"]
    for text in first:
        host.say(room_id, text)
    guest.wait_texts(room_id, first)
    second = [f"{tag} guest 1", f"{tag} guest 2"]
    for text in second:
        guest.say(room_id, text)
    host.wait_texts(room_id, first + second)
    host.say(room_id, f"{tag} host 3")
    everything = [*first, *second, f"{tag} host 3"]
    guest.wait_texts(room_id, everything)
    host.wait_texts(room_id, everything)
    return room_id


def typing_and_receipts(host: Member, guest: Member, room_id: str) -> None:
    """Each side sees the other type (and stop), and read the other's latest message."""
    for one, other in ((host, guest), (guest, host)):
        _typing_seen(one, other, room_id)
    for one, other in ((guest, host), (host, guest)):
        _receipt_seen(one, other, room_id)


def _typing_seen(typer: Member, watcher: Member, room_id: str) -> None:
    path = f"/rooms/{quote(room_id)}/typing/{quote(typer.user_id)}"
    typer.ok("PUT", path, {"typing": True, "timeout": 20000})
    watcher.wait(f"{typer.user_id} typing", lambda: typer.user_id in watcher.typing_users(room_id))
    typer.ok("PUT", path, {"typing": False})
    watcher.wait(f"{typer.user_id} stop", lambda: typer.user_id not in watcher.typing_users(room_id))


def _receipt_seen(reader: Member, writer: Member, room_id: str) -> None:
    event_id = writer.say(room_id, f"read me {reader.user_id}")
    reader.wait("the message to read", lambda: event_id in {e["event_id"] for e in reader.timelines[room_id]})
    reader.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}", {})
    writer.wait(
        f"{reader.user_id}'s read receipt",
        lambda: reader.user_id in writer.read_receipts(room_id).get(event_id, set()),
    )


def displayname_change(host: Member, guest: Member, room_id: str) -> None:
    """A profile change of either side is a member event the other sees."""
    for one, other in ((guest, host), (host, guest)):
        _rename_seen(one, other, room_id)


def _rename_seen(changer: Member, watcher: Member, room_id: str) -> None:
    name = f"Renamed {changer.user_id[1:5]} {time.monotonic_ns() % 10000}"
    changer.ok("PUT", f"/profile/{quote(changer.user_id)}/displayname", {"displayname": name})

    def renamed() -> bool:
        event = watcher.member_event(room_id, changer.user_id) or {}
        return bool(event.get("content", {}).get("displayname") == name)

    watcher.wait(f"{changer.user_id} renamed", renamed)
    members = watcher.ok("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"]
    assert members[changer.user_id]["display_name"] == name


def _membership(member: Member, room_id: str, user_id: str) -> str | None:
    event = member.member_event(room_id, user_id)
    return None if event is None else str(event["content"]["membership"])


def kick_and_ban(host: Member, victim: Member, room_id: str, host_server: str) -> None:
    """The host's admin kicks the victim (a user of the other server, joined), who sees it;
    the victim joins again; banned, their next join is refused."""
    victim.ok("POST", f"/join/{quote(room_id)}", {}, server_name=host_server)
    # Synced in the room first: an initial sync leaves out rooms already left.
    victim.wait("the room joined", lambda: room_id in victim.timelines)
    host.wait("the victim's join", lambda: _membership(host, room_id, victim.user_id) == "join")
    host.ok("POST", f"/rooms/{quote(room_id)}/kick", {"user_id": victim.user_id, "reason": "out"})
    victim.wait("the kick", lambda: room_id in victim.left)
    kick = victim.member_event(room_id, victim.user_id)
    assert kick is not None and kick["content"]["membership"] == "leave" and kick["sender"] == host.user_id
    victim.ok("POST", f"/join/{quote(room_id)}", {}, server_name=host_server)
    host.wait("the rejoin", lambda: _membership(host, room_id, victim.user_id) == "join")
    victim.left.discard(room_id)
    host.ok("POST", f"/rooms/{quote(room_id)}/ban", {"user_id": victim.user_id, "reason": "gone"})
    victim.wait("the ban", lambda: room_id in victim.left)
    ban = victim.member_event(room_id, victim.user_id)
    assert ban is not None and ban["content"]["membership"] == "ban"
    r = victim.call("POST", f"/join/{quote(room_id)}", {}, server_name=host_server)
    assert r.status_code == 403, r.text
    # Refused by the host: the victim is still banned there, and not in the room on their side.
    state = host.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(victim.user_id)}")
    assert state["membership"] == "ban"
    assert room_id not in victim.ok("GET", "/joined_rooms")["joined_rooms"]


def history_texts(member: Member, room_id: str) -> list[str]:
    """The room's messages as its server serves them back (`/messages`, oldest first)."""
    chunk = member.ok("GET", f"/rooms/{quote(room_id)}/messages", dir="b", limit="200")["chunk"]
    return [e["content"]["body"] for e in reversed(chunk) if e["type"] == "m.room.message"]


def killed_9_then_caught_up(
    up: Member, down: Member, room_ids: list[str], kill: Callable[[], None], restart: Callable[[], None]
) -> None:
    """`down`'s server is killed -9 just after `down` sent to each room (perhaps before its
    server passed them on); `up` keeps sending while it is down. After the restart, before
    either side sends anything more, each sees the other's messages; then `down` sends again.
    Every message arrives once, and each sender's in the order sent, in /sync and in history
    (the two senders' messages may interleave: the room's DAG forked while one was down)."""
    sent: dict[str, dict[str, list[str]]] = {}
    for room_id in room_ids:
        tag = room_id[1:6]
        sent[room_id] = {
            "before": [f"{tag} before the kill {i}" for i in range(3)],
            "missed": [f"{tag} while down {i}" for i in range(5)],
            "after": [f"{tag} after the restart {i}" for i in range(2)],
        }
        for text in sent[room_id]["before"]:
            down.say(room_id, text)
    kill()
    for room_id in room_ids:
        for text in sent[room_id]["missed"]:
            up.say(room_id, text)
    restart()
    for room_id in room_ids:
        down.wait_texts(room_id, sent[room_id]["missed"])
        up.wait_texts(room_id, sent[room_id]["before"])
    for room_id in room_ids:
        for text in sent[room_id]["after"]:
            down.say(room_id, text)
    for room_id in room_ids:
        texts = sent[room_id]
        for member in (up, down):
            member.wait_texts(room_id, texts["before"] + texts["after"])
            for seen in (member.texts(room_id), history_texts(member, room_id)):
                assert [t for t in seen if t in texts["missed"]] == texts["missed"], seen
                assert [t for t in seen if t in texts["before"] + texts["after"]] == (
                    texts["before"] + texts["after"]
                ), seen
