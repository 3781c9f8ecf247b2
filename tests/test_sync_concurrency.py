"""/sync under concurrency, and "sync never lies": a client's view built from incremental
syncs always equals a fresh full sync and /state (in the spirit of Zulip's test_events)."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from conftest import ServerProcess

CS = "/_matrix/client/v3"
BIG_TIMELINE = json.dumps({"room": {"timeline": {"limit": 500}}})
_txn = itertools.count()

# What the redaction algorithm (room v10) keeps of a state event's content, for the types used here.
KEPT_KEYS = {
    "m.room.member": {"membership", "join_authorised_via_users_server"},
    "m.room.create": {"creator"},
    "m.room.join_rules": {"join_rule", "allow"},
    "m.room.power_levels": {
        "ban",
        "events",
        "events_default",
        "kick",
        "redact",
        "state_default",
        "users",
        "users_default",
    },
    "m.room.history_visibility": {"history_visibility"},
}


class Client:
    def __init__(self, server: ServerProcess, registered: dict[str, Any]) -> None:
        self.server = server
        self.user_id: str = registered["user_id"]
        self.token: str = registered["access_token"]
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.server.url(CS + path), **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        body = self.ok("PUT", f"/rooms/{room_id}/send/{event_type}/c{next(_txn)}", json=content)
        return str(body["event_id"])

    def text(self, room_id: str, body: str) -> str:
        return self.send(room_id, {"msgtype": "m.text", "body": body})

    def state(self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = "") -> str:
        return str(
            self.ok("PUT", f"/rooms/{room_id}/state/{event_type}/{state_key}", json=content)["event_id"]
        )

    def member(self, action: str, room_id: str, user_id: str) -> None:
        self.ok("POST", f"/rooms/{room_id}/{action}", json={"user_id": user_id})

    def join(self, room_id: str) -> None:
        self.ok("POST", f"/join/{room_id}", json={})

    def sync(
        self, since: str | None = None, timeout_ms: int = 0, filter_: str = BIG_TIMELINE
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": str(timeout_ms), "filter": filter_}
        if since:
            params["since"] = since
        return dict(self.ok("GET", "/sync", params=params, timeout=timeout_ms / 1000 + 30))


def new_client(server: ServerProcess, prefix: str) -> Client:
    return Client(server, server.register(f"{prefix}_{secrets.token_hex(4)}"))


# Many clients at once ------------------------------------------------------------------


def test_twenty_clients_sending_and_syncing_see_every_event_once_in_one_order(
    any_server: ServerProcess,
) -> None:
    server = any_server
    n_clients, per_client = 20, 10
    total = n_clients * per_client
    with ThreadPoolExecutor(n_clients) as pool:
        clients = list(pool.map(lambda i: new_client(server, f"crowd{i}"), range(n_clients)))
    room_id = str(clients[0].ok("POST", "/createRoom", json={"preset": "public_chat"})["room_id"])
    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(lambda c: c.join(room_id), clients[1:]))
        tokens = list(pool.map(lambda c: c.sync()["next_batch"], clients))

    seen: list[list[str]] = [[] for _ in clients]
    errors: list[str] = []
    sent: list[list[str]] = [[] for _ in clients]
    start = threading.Barrier(2 * n_clients)
    deadline = time.monotonic() + 60

    def syncer(i: int) -> None:
        client, since = clients[i], tokens[i]
        start.wait(timeout=30)
        messages = 0
        while messages < total and time.monotonic() < deadline:
            body = client.sync(since, timeout_ms=5000)
            since = body["next_batch"]
            room = body["rooms"]["join"].get(room_id)
            if not room or "timeline" not in room:
                continue
            if room["timeline"]["limited"]:
                errors.append(f"client {i}: limited timeline")
            for ev in room["timeline"]["events"]:
                seen[i].append(ev["event_id"])
                messages += ev["type"] == "m.room.message"

    def sender(i: int) -> None:
        start.wait(timeout=30)
        for k in range(per_client):
            sent[i].append(clients[i].text(room_id, f"client {i} message {k}"))

    with ThreadPoolExecutor(2 * n_clients) as pool:
        futures = [pool.submit(syncer, i) for i in range(n_clients)]
        futures += [pool.submit(sender, i) for i in range(n_clients)]
        for f in futures:
            f.result()

    assert not errors, errors
    all_sent = {e for ids in sent for e in ids}
    assert len(all_sent) == total
    reference = seen[0]
    assert len(reference) == total and set(reference) == all_sent, (len(reference), len(set(reference)))
    for i, ids in enumerate(seen):
        assert len(ids) == len(set(ids)), f"client {i} saw an event twice"
        assert ids == reference, f"client {i} saw another order"
    # Each sender's own messages appear in the order they were sent.
    for ids in sent:
        assert [e for e in reference if e in set(ids)] == ids
    # And /messages forward from the same point gives the same order.
    chunk = clients[5].ok(
        "GET", f"/rooms/{room_id}/messages", params={"dir": "f", "from": tokens[5], "limit": "1000"}
    )["chunk"]
    assert [e["event_id"] for e in chunk] == reference
    backward = clients[7].ok("GET", f"/rooms/{room_id}/messages", params={"dir": "b", "limit": str(total)})[
        "chunk"
    ]
    assert [e["event_id"] for e in backward] == reference[::-1]


# Sync never lies -------------------------------------------------------------------------


def redact_content(event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    keep = KEPT_KEYS.get(event_type, set())
    return {k: v for k, v in content.items() if k in keep}


class RoomView:
    """What a client knows of one room, built only from what /sync told it."""

    def __init__(self, apply_redactions: bool = True) -> None:
        # A fresh full sync is taken as the server sends it: redactions already applied.
        self.apply_redactions = apply_redactions
        self.timeline: list[str] = []
        self.segments: list[list[str]] = []  # runs of timeline events with no gap inside
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.membership: str | None = None
        self.joined_count: int | None = None
        self.redacted: set[str] = set()
        self.contents: dict[str, dict[str, Any]] = {}  # timeline event id -> content

    def apply(self, room: dict[str, Any], membership: str) -> None:
        self.membership = membership
        for ev in room.get("state", {}).get("events", []):
            self._apply_state(ev)
        timeline = room.get("timeline", {})
        events = timeline.get("events", [])
        if timeline.get("limited") or not self.segments:
            self.segments.append([])
        for ev in events:
            self.timeline.append(ev["event_id"])
            self.segments[-1].append(ev["event_id"])
            self.contents[ev["event_id"]] = ev["content"]
            if ev["event_id"] in self.redacted:
                self.contents[ev["event_id"]] = redact_content(ev["type"], ev["content"])
            if "state_key" in ev:
                self._apply_state(ev)
            if ev["type"] == "m.room.redaction" and self.apply_redactions:
                target = ev.get("redacts") or ev["content"].get("redacts")
                self.redacted.add(target)
                if target in self.contents:
                    # Redaction strips the content (for the types redacted here: messages, topic).
                    self.contents[target] = {}
                for key, held in self.state.items():
                    if held["event_id"] == target:
                        held["content"] = redact_content(key[0], held["content"])
        summary = room.get("summary") or {}
        if "m.joined_member_count" in summary:
            self.joined_count = summary["m.joined_member_count"]

    def _apply_state(self, ev: dict[str, Any]) -> None:
        content = ev["content"]
        if ev["event_id"] in self.redacted:
            content = redact_content(ev["type"], content)
        self.state[(ev["type"], ev["state_key"])] = {"event_id": ev["event_id"], "content": content}

    def members(self, membership: str) -> set[str]:
        return {
            k[1]
            for k, v in self.state.items()
            if k[0] == "m.room.member" and v["content"].get("membership") == membership
        }


class Watcher:
    def __init__(self, client: Client, room_id: str, filter_: str = BIG_TIMELINE) -> None:
        self.client = client
        self.room_id = room_id
        self.filter = filter_
        self.view = RoomView()
        body = client.sync(filter_=filter_)
        self.token = body["next_batch"]
        self._apply(body)

    def _apply(self, body: dict[str, Any]) -> None:
        for membership in ("join", "leave"):
            room = body["rooms"][membership].get(self.room_id)
            if room is not None:
                self.view.apply(room, membership)

    def catch_up(self) -> None:
        body = self.client.sync(self.token, filter_=self.filter)
        self.token = body["next_batch"]
        self._apply(body)


def full_view(client: Client, room_id: str) -> RoomView:
    body = client.sync()
    view = RoomView(apply_redactions=False)
    room = body["rooms"]["join"][room_id]
    assert not room["timeline"]["limited"]
    view.apply(room, "join")
    return view


def check_agrees(watchers: list[Watcher], step: str) -> None:
    client, room_id = watchers[0].client, watchers[0].room_id
    fresh_views = {w.client.user_id: full_view(w.client, room_id) for w in watchers}
    fresh = fresh_views[client.user_id]
    state = client.ok("GET", f"/rooms/{room_id}/state")
    from_state = {
        (e["type"], e["state_key"]): {"event_id": e["event_id"], "content": e["content"]} for e in state
    }
    joined = set(client.ok("GET", f"/rooms/{room_id}/joined_members")["joined"])
    members = client.ok("GET", f"/rooms/{room_id}/members")["chunk"]

    assert fresh.state == from_state, f"{step}: full sync and /state disagree"
    assert fresh.members("join") == joined, step
    assert {e["state_key"]: e["content"]["membership"] for e in members} == {
        k[1]: v["content"]["membership"] for k, v in from_state.items() if k[0] == "m.room.member"
    }, step
    assert fresh.joined_count == len(joined), step
    for watcher in watchers:
        view = watcher.view
        assert view.membership == "join", step
        assert view.state == from_state, f"{step}: incremental state differs: " + str(
            {
                k: (view.state.get(k), from_state.get(k))
                for k in set(view.state) | set(from_state)
                if view.state.get(k) != from_state.get(k)
            }
        )
        assert view.members("join") == joined, step
        fresh = fresh_views[watcher.client.user_id]
        assert {k: v for k, v in view.contents.items() if k in fresh.contents} == {
            k: v for k, v in fresh.contents.items() if k in view.contents
        }, f"{step}: event contents differ"
        if watcher.filter == BIG_TIMELINE:
            assert view.timeline == fresh.timeline, f"{step}: incremental timeline differs"
            assert view.contents == fresh.contents, step
            if view.joined_count is not None:
                assert view.joined_count == len(joined), step
        else:
            # A gappy view: each run without a gap is contiguous in the full timeline, runs in order.
            position = 0
            for segment in view.segments:
                if not segment:
                    continue
                start = fresh.timeline.index(segment[0])
                assert start >= position, step
                assert fresh.timeline[start : start + len(segment)] == segment, (
                    f"{step}: a gap was not flagged"
                )
                position = start + len(segment)


def test_incremental_sync_view_matches_full_sync_and_state(any_server: ServerProcess) -> None:
    server = any_server
    alice = new_client(server, "alice")
    bob = new_client(server, "bob")
    walt = new_client(server, "walt")
    room_id = str(alice.ok("POST", "/createRoom", json={"name": "Start", "topic": "first topic"})["room_id"])
    alice.member("invite", room_id, walt.user_id)
    walt.join(room_id)
    watchers = [
        Watcher(walt, room_id),
        Watcher(alice, room_id),
        Watcher(walt, room_id, json.dumps({"room": {"timeline": {"limit": 2}}})),
    ]
    check_agrees(watchers, "start")
    ids: dict[str, str] = {}

    def edit(target: str, text: str) -> str:
        return alice.send(
            room_id,
            {
                "msgtype": "m.text",
                "body": "* " + text,
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": target},
            },
        )

    def redact(client: Client, event_id: str) -> None:
        client.ok("PUT", f"/rooms/{room_id}/redact/{event_id}/r{next(_txn)}", json={"reason": "test"})

    def set_power(users: dict[str, int]) -> None:
        power = alice.ok("GET", f"/rooms/{room_id}/state/m.room.power_levels")
        power["users"] = users
        alice.state(room_id, "m.room.power_levels", power)

    steps: list[tuple[str, Any]] = [
        ("message", lambda: ids.__setitem__("m1", alice.text(room_id, "first message"))),
        ("rename", lambda: alice.state(room_id, "m.room.name", {"name": "Renamed"})),
        (
            "topic",
            lambda: ids.__setitem__("topic", alice.state(room_id, "m.room.topic", {"topic": "second topic"})),
        ),
        ("invite", lambda: alice.member("invite", room_id, bob.user_id)),
        ("join", lambda: bob.join(room_id)),
        ("bob speaks", lambda: ids.__setitem__("b1", bob.text(room_id, "hi from bob"))),
        ("leave", lambda: bob.ok("POST", f"/rooms/{room_id}/leave", json={})),
        ("invite again", lambda: alice.member("invite", room_id, bob.user_id)),
        ("rejoin", lambda: bob.join(room_id)),
        ("kick", lambda: alice.member("kick", room_id, bob.user_id)),
        ("ban", lambda: alice.member("ban", room_id, bob.user_id)),
        ("unban", lambda: alice.member("unban", room_id, bob.user_id)),
        ("redact message", lambda: redact(alice, ids["m1"])),
        ("edit", lambda: edit(ids["b1"], "edited by alice?")),
        ("edit own", lambda: ids.__setitem__("m2", alice.text(room_id, "typo")) or edit(ids["m2"], "fixed")),
        ("redact state", lambda: redact(alice, ids["topic"])),
        ("power", lambda: set_power({alice.user_id: 100, walt.user_id: 50})),
        ("public", lambda: alice.state(room_id, "m.room.join_rules", {"join_rule": "public"})),
        ("join public", lambda: bob.join(room_id)),
        ("bob again", lambda: ids.__setitem__("b2", bob.text(room_id, "bob's second"))),
        ("bob redacts own", lambda: redact(bob, ids["b2"])),
        ("walt renames", lambda: walt.state(room_id, "m.room.name", {"name": "Walt's"})),
        ("custom state", lambda: alice.state(room_id, "org.example.thing", {"v": 1}, "some-key")),
        ("custom state again", lambda: alice.state(room_id, "org.example.thing", {"v": 2}, "some-key")),
        ("bob leaves", lambda: bob.ok("POST", f"/rooms/{room_id}/leave", json={})),
    ]
    for step, action in steps:
        action()
        for watcher in watchers:
            watcher.catch_up()
        check_agrees(watchers, step)

    # A burst between two syncs: the gappy view gets a limited timeline and the state it missed.
    alice.state(room_id, "m.room.name", {"name": "Burst 1"})
    alice.member("invite", room_id, bob.user_id)
    alice.state(room_id, "m.room.topic", {"topic": "burst topic"})
    bob.join(room_id)
    for i in range(4):
        alice.text(room_id, f"burst {i}")
    for watcher in watchers:
        watcher.catch_up()
    assert len(watchers[2].view.segments[-1]) == 2
    check_agrees(watchers, "burst")


def test_state_is_never_missing_while_changes_are_in_flight(any_server: ServerProcess) -> None:
    server = any_server
    alice = new_client(server, "alice")
    reader = new_client(server, "reader")
    room_id = str(alice.ok("POST", "/createRoom", json={"preset": "public_chat", "topic": "t0"})["room_id"])
    reader.join(room_id)
    stop = threading.Event()
    problems: list[str] = []
    one_event = json.dumps({"room": {"timeline": {"limit": 1}}})

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            alice.state(room_id, "m.room.topic", {"topic": f"w{n} {i}"})
            # So that a one-event timeline is mostly not the topic itself.
            alice.text(room_id, f"w{n} {i}")

    def check() -> None:
        for _ in range(150):
            state = reader.ok("GET", f"/rooms/{room_id}/state")
            if not any(e["type"] == "m.room.topic" for e in state):
                problems.append("/state without a topic")
            body = reader.sync(filter_=one_event)
            room = body["rooms"]["join"][room_id]
            events = room["state"]["events"] + room["timeline"]["events"]
            if not any(e["type"] == "m.room.topic" for e in events):
                problems.append("full sync without a topic")
            for key in ("m.room.create", "m.room.power_levels", "m.room.join_rules"):
                if not any(e["type"] == key for e in events):
                    problems.append(f"full sync without {key}")

    with ThreadPoolExecutor(4) as pool:
        writers = [pool.submit(writer, n) for n in range(3)]
        try:
            check()
        finally:
            stop.set()
        for w in writers:
            w.result()
    assert not problems, sorted(set(problems))


# A restart -----------------------------------------------------------------------------


def _without_txn_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for ev in events:
        ev = dict(ev)
        unsigned = {k: v for k, v in ev.get("unsigned", {}).items() if k != "transaction_id"}
        ev.pop("unsigned", None)
        if unsigned:
            ev["unsigned"] = unsigned
        out.append(ev)
    return out


def test_a_restart_changes_nothing_that_sync_and_messages_show(start_server: Any) -> None:
    first = start_server()
    alice = new_client(first, "alice")
    bob = new_client(first, "bob")
    room_id = str(alice.ok("POST", "/createRoom", json={"preset": "public_chat", "name": "Kept"})["room_id"])
    bob.join(room_id)
    kept = alice.text(room_id, "kept")
    gone = bob.text(room_id, "to be redacted")
    topic = alice.state(room_id, "m.room.topic", {"topic": "to be redacted too"})
    bob.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "* kept!",
            "m.new_content": {"msgtype": "m.text", "body": "kept!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": kept},
        },
    )
    alice.ok("PUT", f"/rooms/{room_id}/redact/{gone}/r1", json={"reason": "spam"})
    alice.ok("PUT", f"/rooms/{room_id}/redact/{topic}/r2", json={})

    def snapshot(client: Client) -> tuple[Any, ...]:
        body = client.sync()
        room = body["rooms"]["join"][room_id]
        messages = client.ok("GET", f"/rooms/{room_id}/messages", params={"limit": "100"})["chunk"]
        state = client.ok("GET", f"/rooms/{room_id}/state")
        return (
            _without_txn_ids(room["timeline"]["events"]),
            sorted(_without_txn_ids(room["state"]["events"]), key=lambda e: e["event_id"]),
            _without_txn_ids(messages),
            sorted(_without_txn_ids(state), key=lambda e: e["event_id"]),
            body["next_batch"],
        )

    before = {c.user_id: snapshot(c) for c in (alice, bob)}
    for timeline in (before[bob.user_id][0], before[bob.user_id][2]):
        redacted = next(e for e in timeline if e["event_id"] == gone)
        assert redacted["content"] == {} and "redacted_because" in redacted["unsigned"]
    first.stop()

    second = start_server({"server_name": first.server_name, "data_dir": str(first.data_dir)})
    for client in (alice, bob):
        client.server = second
        client._local = threading.local()
        after = snapshot(client)
        old = before[client.user_id]
        assert after[0] == old[0], "full sync timeline changed across a restart"
        assert after[1] == old[1], "full sync state changed across a restart"
        assert after[2] == old[2], "/messages changed across a restart"
        assert after[3] == old[3], "/state changed across a restart"
        # The old token still works and has nothing new about the room.
        body = client.sync(old[4])
        assert room_id not in body["rooms"]["join"] or not body["rooms"]["join"][room_id].get(
            "timeline", {}
        ).get("events")
    # And the room goes on where it was.
    new = alice.text(room_id, "after restart")
    events = bob.ok("GET", f"/rooms/{room_id}/messages", params={"limit": "2"})["chunk"]
    assert events[0]["event_id"] == new
