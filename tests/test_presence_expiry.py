"""Presence expiry (PresenceService.expire) is batched: the users it expires in one pass are
written in few transactions and woken with one notifier call, with the same states, sync
output and stream ordering as expiring them one by one.

Service-level tests on both engines (real storage, a clock the test moves, a notifier that
counts its calls), and one in-process HomeServer whose watcher long-polls /sync over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as ReactorClock
from twisted.internet.task import deferLater

from homeserver.config import parse_config
from homeserver.core import presence as presence_module
from homeserver.core.clock import Clock
from homeserver.core.presence import IDLE_AFTER_MS, OFFLINE_AFTER_MS, PresenceService
from homeserver.core.streams import SyncToken
from homeserver.notifier import Notifier
from homeserver.server import HomeServer
from homeserver.storage import Storage
from homeserver.storage.migrations import migrate

START_MS = 1_700_000_000_000
WATCHER = "@watcher:example.org"
CS = "/_matrix/client/v3"

Row = tuple[str, str, str | None, int, int]


class FakeClock(Clock):
    """The server's clock on a twisted Clock: time moves only when the test says so."""

    def __init__(self, now_ms: int) -> None:
        self.time = ReactorClock()
        self.time.advance(now_ms / 1000)
        super().__init__(self.time)

    def advance(self, ms: int) -> None:
        self.time.advance(ms / 1000)


class CountingNotifier(Notifier):
    """A real notifier that records every wake_users call."""

    def __init__(self) -> None:
        super().__init__(Clock(ReactorClock()))
        self.wakes: list[set[str]] = []

    def wake_users(self, user_ids: Iterable[str]) -> None:
        users = set(user_ids)
        self.wakes.append(users)
        super().wake_users(users)


class Service:
    """A PresenceService over real storage, with its writes recorded."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.clock = FakeClock(START_MS)
        self.notifier = CountingNotifier()
        self.presence = PresenceService(storage, self.clock, self.notifier)
        # Everyone's presence is heard by themselves and by the watcher.
        self.presence.audience = self._audience
        self.single_writes: list[str] = []
        self.batch_writes: list[list[Row]] = []
        # Called with each batch before it is written (the transaction has not begun).
        self.before_batch: Any = None
        user_data = storage.user_data
        put_presence, put_presence_many = user_data.put_presence, user_data.put_presence_many

        async def recording_put_presence(user_id: str, *args: Any) -> None:
            self.single_writes.append(user_id)
            await put_presence(user_id, *args)

        async def recording_put_presence_many(rows: Sequence[Row]) -> None:
            self.batch_writes.append(list(rows))
            if self.before_batch is not None:
                await self.before_batch(list(rows))
            await put_presence_many(rows)

        user_data.put_presence = recording_put_presence  # type: ignore[method-assign]
        user_data.put_presence_many = recording_put_presence_many  # type: ignore[method-assign]

    @staticmethod
    async def _audience(user_id: str) -> set[str]:
        return {user_id, WATCHER}

    async def sync_once(self, user_id: str) -> None:
        """A whole /sync request (timeout 0) by `user_id`, as SyncService drives presence."""
        await self.presence.sync_started(user_id, None)
        self.presence.sync_finished(user_id)

    async def db_presence(self) -> dict[str, tuple[str, str | None, int, int]]:
        return {r[0]: r[1:] for r in await self.storage.user_data.all_presence()}

    def state(self, user_id: str) -> str:
        p = self.presence.get(user_id)
        assert p is not None
        return p.state


@pytest_twisted.async_yield_fixture
async def service(database_url: str) -> AsyncIterator[Service]:
    storage = Storage.from_url(database_url)
    try:
        await migrate(storage.db)
        svc = Service(storage)
        await svc.presence.start(0)
        yield svc
    finally:
        storage.close()


def users(prefix: str, n: int) -> list[str]:
    return [f"@{prefix}{i}:example.org" for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_users_who_stopped_syncing_expire_in_one_transaction_and_one_wake(service: Service) -> None:
    svc, presence = service, service.presence
    stoppers = users("stopper", 7)
    for user_id in stoppers:
        await svc.sync_once(user_id)
    await svc.sync_once("@keeper:example.org")
    # Online by PUT /presence only, never synced: goes unavailable when idle, keeps its message.
    await presence.set_state("@idler:example.org", "online", "at lunch")
    idler_active = START_MS
    await presence.set_state("@away:example.org", "offline")
    # A sync still in progress (a long-poll) keeps its user from going offline, though it
    # began more than OFFLINE_AFTER_MS ago (and less than IDLE_AFTER_MS: not idle either).
    svc.clock.advance(IDLE_AFTER_MS + 1 - 2 * OFFLINE_AFTER_MS)
    await presence.sync_started("@polling:example.org", None)
    before = presence.stream.current
    assert before == 7 + 4  # one position per change so far

    svc.clock.advance(2 * OFFLINE_AFTER_MS)
    await svc.sync_once("@keeper:example.org")
    svc.single_writes.clear()
    svc.notifier.wakes.clear()
    await presence.expire()

    for user_id in stoppers:
        assert svc.state(user_id) == "offline"
    assert svc.state("@idler:example.org") == "unavailable"
    assert svc.state("@keeper:example.org") == "online"
    assert svc.state("@polling:example.org") == "online"
    assert svc.state("@away:example.org") == "offline"
    idler = presence.get("@idler:example.org")
    assert idler is not None and idler.status_msg == "at lunch" and idler.last_active_ts == idler_active

    # One multi-row write, no per-user writes, one wake for the union of the audiences.
    expired = [*stoppers, "@idler:example.org"]
    assert svc.single_writes == []
    assert [sorted(r[0] for r in rows) for rows in svc.batch_writes] == [sorted(expired)]
    assert svc.notifier.wakes == [{*expired, WATCHER}]

    # Each expired user has its own new position, and the stream advanced past all of them.
    assert presence.stream.current == before + len(expired)
    positions = [p.stream_id for u in expired if (p := presence.get(u)) is not None]
    assert sorted(positions) == list(range(before + 1, before + len(expired) + 1))
    everyone = {*expired, "@keeper:example.org", "@polling:example.org", WATCHER, "@away:example.org"}
    assert sorted(presence.changed_since(everyone, before, presence.stream.current)) == sorted(expired)

    # The database agrees with memory, and a restart loads the same positions and messages.
    rows = await svc.db_presence()
    for user_id in expired:
        p = presence.get(user_id)
        assert p is not None
        assert rows[user_id] == (p.state, p.status_msg, p.last_active_ts, p.stream_id)
    assert rows["@keeper:example.org"][0] == "online"
    positions_in_db = await svc.storage.user_data.max_stream_ids()
    assert positions_in_db["presence"] == presence.stream.current

    # Nothing left to expire: the next pass writes nothing and wakes nobody.
    svc.notifier.wakes.clear()
    await presence.expire()
    assert len(svc.batch_writes) == 1
    assert svc.notifier.wakes == []


@pytest_twisted.ensureDeferred
async def test_chunked_expiry_advertises_positions_only_after_each_commit(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence_module, "EXPIRE_BATCH_SIZE", 3)
    svc, presence = service, service.presence
    stoppers = users("chunk", 8)
    for user_id in stoppers:
        await svc.sync_once(user_id)
    before = presence.stream.current
    svc.clock.advance(OFFLINE_AFTER_MS + 1)
    late = stoppers[-1]
    seen: list[int] = []

    async def check_not_advertised(rows: list[Row]) -> None:
        current = presence.stream.current
        seen.append(current)
        # Memory already says offline, but no reader may see these positions before the
        # commit; the batches before this one are committed and visible.
        assert all(stream_id > current for *_, stream_id in rows)
        committed = {r[0] for earlier in svc.batch_writes[:-1] for r in earlier}
        assert set(presence.changed_since(set(stoppers), before, current)) == committed
        if len(seen) == 1:
            # The last user syncs again while the first batch is being written: a later
            # batch must not expire them.
            await svc.sync_once(late)
        # Let other work run while "the transaction" is in flight.
        await deferLater(global_reactor(), 0, lambda: None)

    svc.before_batch = check_not_advertised
    svc.notifier.wakes.clear()
    await presence.expire()

    expired = stoppers[:-1]
    assert [len(rows) for rows in svc.batch_writes] == [3, 3, 1]
    assert sorted(r[0] for rows in svc.batch_writes for r in rows) == sorted(expired)
    assert seen == [before, before + 3, before + 6]
    assert svc.state(late) == "online"
    assert all(svc.state(u) == "offline" for u in expired)
    assert presence.stream.current == before + len(expired)
    # Three transactions, still one wake.
    assert svc.notifier.wakes == [{*expired, WATCHER}]
    rows = await svc.db_presence()
    assert {u for u, r in rows.items() if r[0] == "offline"} == set(expired)


def global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_a_failed_batch_releases_its_positions_and_still_wakes_the_committed_ones(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence_module, "EXPIRE_BATCH_SIZE", 2)
    svc, presence = service, service.presence
    stoppers = users("fail", 4)
    for user_id in stoppers:
        await svc.sync_once(user_id)
    before = presence.stream.current
    svc.clock.advance(OFFLINE_AFTER_MS + 1)

    async def fail_second(rows: list[Row]) -> None:
        if len(svc.batch_writes) == 2:
            raise RuntimeError("database went away")

    svc.before_batch = fail_second
    svc.notifier.wakes.clear()
    with pytest.raises(RuntimeError):
        await presence.expire()
    # The positions of the failed batch are released (not stuck in flight), and the
    # first batch's audience is woken.
    assert presence.stream.current == before + 4
    assert svc.notifier.wakes == [{*stoppers[:2], WATCHER}]


@pytest_twisted.ensureDeferred
async def test_put_presence_many_never_overwrites_a_newer_position(database_url: str) -> None:
    storage = Storage.from_url(database_url)
    try:
        await migrate(storage.db)
        store = storage.user_data
        await store.put_presence("@a:example.org", "online", "hi", START_MS, 10)
        await store.put_presence_many([])
        await store.put_presence_many(
            [
                ("@a:example.org", "offline", "hi", START_MS, 9),  # older than what is stored
                ("@b:example.org", "offline", None, START_MS, 11),
                ("@c:example.org", "unavailable", "brb", START_MS + 5, 12),
            ]
        )
        await store.put_presence_many([("@b:example.org", "online", None, START_MS + 7, 13)])
        rows = {r[0]: r[1:] for r in await store.all_presence()}
        assert rows == {
            "@a:example.org": ("online", "hi", START_MS, 10),
            "@b:example.org": ("online", None, START_MS + 7, 13),
            "@c:example.org": ("unavailable", "brb", START_MS + 5, 12),
        }
    finally:
        storage.close()


# A whole server in-process: a watcher's /sync -------------------------------------------


class Http:
    def __init__(self, base: str) -> None:
        self.base = base

    async def call(
        self, method: str, path: str, token: str, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        import treq

        kwargs: dict[str, Any] = {
            "headers": {"Authorization": f"Bearer {token}"},
            "persistent": False,
            "params": params or {},
        }
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        r = await treq.request(method, self.base + CS + path, **kwargs)
        text = await r.text()
        assert r.code == 200, f"{method} {path}: {r.code} {text}"
        result: dict[str, Any] = json.loads(text)
        return result

    async def sync(self, token: str, since: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms)}
        if since is not None:
            params["since"] = since
        return await self.call("GET", "/sync", token, params=params)


def presence_events(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["sender"]: e["content"] for e in body.get("presence", {}).get("events", [])}


@pytest_twisted.ensureDeferred
async def test_watcher_long_poll_sees_everyone_who_stopped_syncing_go_offline(
    tmp_path: Path, database_url: str
) -> None:
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    raw = {
        "server_name": "presence.test",
        "data_dir": str(tmp_path / "data"),
        "database": {"url": database_url},
        "auth": {"password_hashing": "fast"},
        "plugins": [],
    }
    clock = FakeClock(START_MS)
    hs = HomeServer(parse_config(raw, "test-presence.yaml", env={}), reactor, clock=clock)
    await hs.start()
    port = reactor.listenTCP(0, hs.site(), interface="127.0.0.1")
    http = Http(f"http://127.0.0.1:{port.getHost().port}")
    try:
        tokens: dict[str, str] = {}
        for name in ["watcher", "keeper", "s0", "s1", "s2", "s3", "s4"]:
            user_id = await hs.accounts.register(name, "correct horse battery")
            login = await hs.accounts.create_session(user_id, None, None, refreshable=False, ip=None)
            tokens[user_id] = login.tokens.access_token
        watcher, keeper, *stoppers = tokens
        room_id = (await http.call("POST", "/createRoom", tokens[watcher], {"preset": "public_chat"}))[
            "room_id"
        ]
        for user_id in [keeper, *stoppers]:
            await http.call("POST", f"/join/{quote(room_id)}", tokens[user_id], {})
        for user_id in tokens:
            await http.sync(tokens[user_id])
        first = await http.sync(tokens[watcher])
        assert presence_events(first).keys() == set(tokens)
        assert all(c["presence"] == "online" for c in presence_events(first).values())
        since = first["next_batch"]

        # Half a minute later only the keeper syncs again; the watcher starts a long-poll.
        # (The server's periodic expiry job runs on the same clock, every 15 s: moving the
        # clock is what runs it.)
        clock.advance(OFFLINE_AFTER_MS // 2)
        await http.sync(tokens[keeper])
        wakes: list[set[str]] = []
        wake_users = hs.notifier.wake_users

        def counting_wake(user_ids: Iterable[str]) -> None:
            wakes.append(set(user_ids))
            wake_users(wakes[-1])

        hs.notifier.wake_users = counting_wake  # type: ignore[method-assign]
        poll = Deferred.fromCoroutine(http.sync(tokens[watcher], since, timeout_ms=120_000))
        for _ in range(2000):  # until the long-poll waits (it reads the database first)
            if hs.notifier.waiting_users() or poll.called:
                break
            await deferLater(reactor, 0.005, lambda: None)
        assert not poll.called, "nothing changed yet: the long-poll must be waiting"
        assert hs.notifier.waiting_users() == 1
        # A minute after their last sync, the next run of the job takes the others offline.
        clock.advance(OFFLINE_AFTER_MS // 2 + 1)
        body = await poll

        assert wakes == [{watcher, keeper, *stoppers}]
        changes = presence_events(body)
        assert changes.keys() == set(stoppers)
        assert all(c["presence"] == "offline" for c in changes.values())
        old, new = SyncToken.parse(since), SyncToken.parse(body["next_batch"])
        assert new.presence == old.presence + len(stoppers)
        assert new.events == old.events

        # The keeper (and the watcher) stay online; the next incremental sync repeats nothing.
        r = await http.call("GET", f"/presence/{quote(keeper)}/status", tokens[watcher])
        assert r["presence"] == "online"
        again = await http.sync(tokens[watcher], body["next_batch"])
        assert presence_events(again) == {}
        assert SyncToken.parse(again["next_batch"]).presence == new.presence
        # A fresh full sync shows the same picture.
        full = presence_events(await http.sync(tokens[watcher]))
        assert {u: c["presence"] for u, c in full.items()} == {
            watcher: "online",
            keeper: "online",
            **{u: "offline" for u in stoppers},
        }
    finally:
        await hs.stop(port)
