"""Just enough of the Matrix Client-Server API for the workloads, over `httpclient`.

Nothing here knows which homeserver it talks to, except `register`, which each
target supplies (open registration for ours, the shared-secret admin API for
Synapse). Messages carry their send time (`bench_ts`, integer microseconds of
wall-clock time: canonical JSON forbids floats) and an id (`bench_id`), so a
receiver can compute send->sync latency and count what it got exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from bench.httpclient import HttpClient, HttpError, HttpResponse

CLIENT = "/_matrix/client/v3"
PASSWORD = "bench-password-1234"


class MatrixCallError(Exception):
    def __init__(self, what: str, response: HttpResponse) -> None:
        super().__init__(f"{what}: HTTP {response.status} {response.text()}")
        self.status = response.status
        self.body = response.body


@dataclass
class User:
    index: int
    localpart: str
    user_id: str
    token: str
    device_id: str
    # Further devices of the same account (logins), for connections that need one each.
    extra_tokens: list[str] = field(default_factory=list)


SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


def sliding_sync_body(rooms: int, timeline_limit: int) -> dict[str, Any]:
    """What Element X asks for its room list: every room, recent first, a few state events."""
    return {
        "lists": {
            "all": {
                "ranges": [[0, max(rooms - 1, 0)]],
                "timeline_limit": timeline_limit,
                "required_state": [
                    ["m.room.name", ""],
                    ["m.room.avatar", ""],
                    ["m.room.encryption", ""],
                    ["m.room.create", ""],
                    ["m.room.member", "$LAZY"],
                    ["m.room.member", "$ME"],
                ],
            }
        },
        "extensions": {
            name: {"enabled": True} for name in ("e2ee", "to_device", "account_data", "receipts", "typing")
        },
    }


def filter_param(definition: dict[str, Any]) -> str:
    """An inline sync filter, URL-encoded once (servers accept JSON in `filter=`)."""
    return quote(json.dumps(definition, separators=(",", ":")), safe="")


def message_filter_definition(room_ids: list[str] | None, limit: int = 500) -> dict[str, Any]:
    """Only the bench rooms' message timelines: no presence, account data, ephemeral or member state."""
    room: dict[str, Any] = {
        "timeline": {"limit": limit, "types": ["m.room.message"]},
        "state": {"lazy_load_members": True, "types": []},
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    }
    if room_ids is not None:
        room["rooms"] = room_ids
    return {"room": room, "presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}}


def message_filter(room_ids: list[str] | None, limit: int = 500) -> str:
    """The same filter inline (URL-encoded JSON), for one-off syncs."""
    return filter_param(message_filter_definition(room_ids, limit))


# A sync that returns no rooms and no presence: the cheap way to get a `since` token.
EMPTY_FILTER = message_filter([], limit=0)

_txn_counter = itertools.count()


def new_txn_id() -> str:
    return f"b{time.monotonic_ns()}.{next(_txn_counter)}"


def message_content(bench_id: str) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": f"bench message {bench_id}",
        "bench_id": bench_id,
        "bench_ts": time.time_ns() // 1000,
    }


class Matrix:
    """Client-Server API calls on one HttpClient (shared by every simulated user)."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        what: str = "",
        timeout: float | None = 120.0,
    ) -> Any:
        response = await self.http.request(method, path, body, token, timeout)
        if response.status != 200:
            raise MatrixCallError(what or f"{method} {path.split('?')[0]}", response)
        return response.json()

    async def login(self, user: User) -> str:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.localpart},
            "password": PASSWORD,
        }
        result = await self.call("POST", f"{CLIENT}/login", body, what="login")
        return str(result["access_token"])

    async def upload_filter(self, user: User, definition: dict[str, Any]) -> str:
        """Store a sync filter; its id is what clients such as Element then pass to /sync."""
        path = f"{CLIENT}/user/{quote(user.user_id, safe='')}/filter"
        result = await self.call("POST", path, definition, user.token, "upload filter")
        return str(result["filter_id"])

    async def create_room(self, user: User, body: dict[str, Any]) -> str:
        result = await self.call("POST", f"{CLIENT}/createRoom", body, user.token, "createRoom")
        return str(result["room_id"])

    async def join(self, user: User, room_id: str) -> None:
        await self.call("POST", f"{CLIENT}/join/{quote(room_id, safe='')}", {}, user.token, "join")

    async def set_pusher(self, user: User, url: str) -> None:
        """An http pusher for the user's device, to the push gateway at `url`."""
        body = {
            "kind": "http",
            "app_id": "org.example.bench",
            "pushkey": f"bench-{user.localpart}",
            "app_display_name": "bench",
            "device_display_name": "bench",
            "lang": "en",
            "data": {"url": url, "format": "event_id_only"},
        }
        await self.call("POST", f"{CLIENT}/pushers/set", body, user.token, "set pusher")

    async def send(self, user: User, room_id: str, content: dict[str, Any]) -> HttpResponse:
        """PUT a message; the caller looks at the status (errors are counted, not raised)."""
        path = f"{CLIENT}/rooms/{quote(room_id, safe='')}/send/m.room.message/{new_txn_id()}"
        return await self.http.request("PUT", path, content, user.token, 120.0)

    async def sync(
        self, user: User, since: str | None, timeout_ms: int, filter_q: str | None, token: str | None = None
    ) -> HttpResponse:
        path = f"{CLIENT}/sync?timeout={timeout_ms}"
        if since is not None:
            path += f"&since={quote(since, safe='')}"
        if filter_q is not None:
            path += f"&filter={filter_q}"
        return await self.http.request("GET", path, None, token or user.token, None)

    async def sliding_sync(
        self, user: User, body: dict[str, Any], pos: str | None = None, timeout_ms: int = 0
    ) -> HttpResponse:
        """POST the simplified sliding sync endpoint (MSC4186)."""
        path = f"{SLIDING_SYNC}?timeout={timeout_ms}"
        if pos is not None:
            path += f"&pos={quote(pos, safe='')}"
        return await self.http.request("POST", path, body, user.token, None)

    async def since_token(self, user: User) -> str:
        """The current position for this user, from a sync that carries (almost) nothing."""
        response = await self.sync(user, None, 0, EMPTY_FILTER)
        if response.status != 200:
            raise MatrixCallError("sync (for a since token)", response)
        return str(response.json()["next_batch"])


# Receiving --------------------------------------------------------------------------------------

OnMessage = Callable[[str, str, dict[str, Any], float], None]


@dataclass
class ReceiverStats:
    responses: int = 0
    bytes: int = 0
    errors: int = 0
    gaps: int = 0
    last_error: str = ""
    # The worker behind the balancer that answered the last sync (X-Served-By), and each
    # limited timeline as (room, wall time, worker, events in it): what a stall's report names.
    worker: str = ""
    gapped: list[tuple[str, float, str, int]] = field(default_factory=list)


class SyncReceiver:
    """One user's /sync long-poll loop: `on_message(room_id, sender, content, now)` per bench message.

    Like Element, it uploads its filter once and passes the filter id on every /sync.
    """

    def __init__(
        self,
        mx: Matrix,
        user: User,
        filter_definition: dict[str, Any],
        on_message: OnMessage,
        timeout_ms: int = 30_000,
    ) -> None:
        self.mx = mx
        self.user = user
        self.filter_definition = filter_definition
        self.filter_q = ""
        self.on_message = on_message
        self.timeout_ms = timeout_ms
        self.since: str | None = None
        self.stats = ReceiverStats()
        self._task: asyncio.Task[None] | None = None

    async def prime(self) -> None:
        self.filter_q = quote(await self.mx.upload_filter(self.user, self.filter_definition), safe="")
        self.since = await self.mx.since_token(self.user)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                response = await self.mx.sync(self.user, self.since, self.timeout_ms, self.filter_q)
            except HttpError as e:
                self.stats.errors += 1
                self.stats.last_error = str(e)
                await asyncio.sleep(0.2)
                continue
            now = time.time()
            if response.status != 200:
                self.stats.errors += 1
                self.stats.last_error = f"HTTP {response.status} {response.text()}"
                await asyncio.sleep(0.2)
                continue
            self.stats.responses += 1
            self.stats.bytes += len(response.body)
            self.stats.worker = response.served_by
            # orjson: 4.5 against 15 µs for a 1 KB W1 response, the generator's CPU per message.
            self._handle(orjson.loads(response.body), now)

    def _handle(self, data: dict[str, Any], now: float) -> None:
        self.since = data["next_batch"]
        joined = (data.get("rooms") or {}).get("join") or {}
        for room_id, room in joined.items():
            timeline = room.get("timeline")
            if not timeline:
                continue
            if timeline.get("limited"):
                self.stats.gaps += 1
                events = len(timeline.get("events", ()))
                self.stats.gapped.append((room_id, now, self.stats.worker, events))
            for ev in timeline.get("events", ()):
                content = ev.get("content")
                if content and "bench_id" in content:
                    self.on_message(room_id, ev.get("sender", ""), content, now)
