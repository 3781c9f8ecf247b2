"""The plugin interface: one narrow `PluginApi` object per plugin, and the YAML loader.

A plugin is a class named in `plugins:` of the config (`module: pkg.mod.Class`).
It may define `parse_config(raw: dict) -> Any` (a staticmethod raising
`PluginConfigError`) and `SCHEMA_DIR` (its numbered SQL files, applied by start-up and
`homeserver migrate` alike), and is constructed as `Class(config, api)`. Through `api`
it can: register HTTP routes under its own prefix, subscribe to new events,
schedule background jobs, run blocking work on worker threads, expose metrics, read
its config and use its tables.
It sees nothing else of the core, and the core never imports a plugin.
See docs/plugins.md.
"""

from __future__ import annotations

import importlib
import inspect
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from homeserver import __version__
from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router, StreamBody
from homeserver.backup.manifest import BackupError
from homeserver.backup.sources import BackupSource, S3Location
from homeserver.core.addresses import address_blocked
from homeserver.core.admin import Page, RoomSummary, UserDetails
from homeserver.core.daily_stats import Connections, DayStats, ServerStats
from homeserver.core.event_format import client_event
from homeserver.core.event_stream import StreamBatch
from homeserver.core.export import ExportRow, ExportSink
from homeserver.core.push_addresses import is_public_address
from homeserver.core.tokens import Requester
from homeserver.disk_full import disk_watch, is_disk_full
from homeserver.errors import MatrixError, StorageFull
from homeserver.logs import log_failure
from homeserver.storage.admin import UserFilter, UserSummary
from homeserver.storage.database import Database, Txn
from homeserver.storage.devices import DeviceRow
from homeserver.storage.events import StoredEvent
from homeserver.storage.migrations import migrate
from homeserver.storage.pushers import Pusher
from homeserver.storage.registration_tokens import RegistrationToken
from homeserver.storage.reports import Report
from homeserver.threads import ChunksOnThreads, WorkerThreads

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from homeserver.config import Config
    from homeserver.core.admin import AdminService
    from homeserver.core.clock import Clock
    from homeserver.server import HomeServer

log = Logger()

EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class RemoteMedia:
    """Media fetched from another server (PluginApi.fetch_remote_media)."""

    content_type: str | None  # the remote's claim, unchecked
    content_disposition: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One committed event as a plugin's subscription sees it."""

    position: int  # its stream position: strictly increasing along the stream
    event: dict[str, Any]  # the client format (as /sync serves it)
    # Handed to this durable subscription before, in a run that died before it was done.
    maybe_repeated: bool = False


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Committed events with `after` < position <= `upto`, oldest first."""

    after: int
    upto: int
    events: list[StreamEvent]
    _hold: Callable[[], Callable[[], None]] | None = field(default=None, repr=False, compare=False)

    def hold(self) -> Callable[[], None]:
        """Keep working on this batch after the callback returned: the subscription's saved
        position stays behind it until the returned callable is called (once; later calls do
        nothing), while later batches keep being handed over. After a crash, every batch with
        a hold still out is handed again, its events marked `maybe_repeated`."""
        if self._hold is None:
            return lambda: None
        return self._hold()


BatchCallback = Callable[[EventBatch], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class PushDecision:
    """One recipient a committed event notifies, by their push rules."""

    user_id: str
    highlight: bool
    tweaks: dict[
        str, Any
    ]  # every set_tweak of the matched rule, e.g. {"sound": "default", "highlight": True}


@dataclass(frozen=True, slots=True)
class AdminMedia:
    """One upload as the admin API lists it."""

    media_id: str
    content_type: str | None
    size: int
    upload_name: str | None
    created_ts: int
    quarantined_by: str | None


@dataclass(frozen=True, slots=True)
class MediaUsage:
    """What one user's uploads add up to."""

    user_id: str
    media_count: int
    media_length: int


class MediaAdmin(Protocol):
    """What the plugin that stores media offers an admin API (`set_media_admin`)."""

    async def user_media(
        self, user_id: str, order_by: str, ascending: bool, offset: int, limit: int
    ) -> tuple[list[AdminMedia], int]:
        """One page of the user's uploads and their number; `order_by` one of media_id,
        upload_name, created_ts, media_length, media_type, quarantined_by (else ValueError)."""
        ...

    async def delete_user_media(self, user_id: str) -> list[str]:
        """Delete every upload of the user; the ids deleted."""
        ...

    async def delete_media(self, media_id: str) -> bool:
        """Delete one upload (False: no such media)."""
        ...

    async def quarantine(self, media_id: str, by: str | None) -> bool:
        """Quarantine the upload (`by`: the admin; None lifts it): nobody can download it or
        its thumbnails while it lasts. False: no such media."""
        ...

    async def usage(self, from_ts: int | None, until_ts: int | None) -> list[MediaUsage]:
        """Per uploader, the count and bytes of the uploads made from/until those times (ms)."""
        ...


class PluginConfigError(Exception):
    """Raised by a plugin's parse_config: start-up stops with this message."""


class PluginLoadError(Exception):
    pass


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    prefixes: tuple[str, ...]


class PluginApi:
    """Everything a plugin may use. Plugins must not reach past this object."""

    def __init__(self, hs: "HomeServer", name: str, config: Any, prefixes: tuple[str, ...]) -> None:
        self._hs = hs
        self._name = name
        self._prefixes = prefixes
        self._jobs: list[task.LoopingCall] = []
        self.config = config
        self.log = Logger(namespace=f"plugins.{name}")

    # Facts --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def server_name(self) -> str:
        return self._hs.config.server_name

    @property
    def public_base_url(self) -> str:
        """`public_baseurl` without its trailing slash: the prefix of absolute links to this server."""
        return self._hs.config.base_url

    @property
    def data_dir(self) -> Path:
        """A directory of this plugin's own under the server's data dir."""
        path = self._hs.config.data_path / "plugins" / self._name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def clock(self) -> "Clock":
        """The server's clock: `seconds()`, `callLater(...)`, `time_ms()`. Use it for every
        timer, so a test that moves the server's clock moves the plugin's too."""
        return self._hs.clock

    @property
    def reactor(self) -> "IReactorTime":
        reactor: IReactorTime = self._hs.reactor
        return reactor

    # HTTP -----------------------------------------------------------------------

    def register_route(
        self,
        method: str,
        path: str,
        handler: Callable[..., Awaitable[Any]],
        *,
        require_auth: bool = True,
    ) -> None:
        """Serve `method path` (under one of this plugin's prefixes) with `handler`.

        The handler is called as `handler(request, requester, **path_params)` when
        `require_auth` (the requester is already authenticated), else
        `handler(request, **path_params)`. It returns a JSON-able dict or a
        `Response`, and may raise `MatrixError`.
        """
        if not any(path.startswith(p) for p in self._prefixes):
            raise PluginLoadError(
                f"plugin {self._name}: route {path} is outside its prefixes {self._prefixes}"
            )
        if require_auth:
            hs = self._hs

            async def authenticated(request: ApiRequest, **params: str) -> Any:
                requester = await require_user(hs, request)
                return await handler(request, requester, **params)

            self._hs.router.add(method, path, authenticated)
        else:
            self._hs.router.add(method, path, handler)

    def register_federation_route(
        self, method: str, path: str, handler: Callable[..., Awaitable[Any]]
    ) -> None:
        """Serve `method path` (a `/_matrix/federation/` path under one of this plugin's
        prefixes) to other servers: the request's X-Matrix signature is checked and its
        origin's limits applied first (401 / 429), then `handler(request, origin,
        **path_params)` is called with the verified origin server name."""
        if not path.startswith("/_matrix/federation/") or not any(path.startswith(p) for p in self._prefixes):
            raise PluginLoadError(f"plugin {self._name}: {path} is not a federation path of its own")
        from homeserver.api.federation.auth import require_origin

        hs = self._hs

        async def signed(request: ApiRequest, **params: str) -> Any:
            origin = await require_origin(hs, request)
            return await handler(request, origin, **params)

        self._hs.router.add(method, path, signed)

    async def fetch_remote_media(
        self, server_name: str, media_id: str, max_bytes: int, thumbnail: dict[str, str] | None = None
    ) -> RemoteMedia:
        """Another server's media (`mxc://server_name/media_id`), or its thumbnail with
        `thumbnail` = {"width", "height", "method"}: the federation media route, else the
        legacy one. The content type is the remote's claim: sanitise it before serving.
        404 M_NOT_FOUND, 413 M_TOO_LARGE past `max_bytes`, 502/504 for the remote's failures."""
        fetched = await self._hs.federation.media.fetch(server_name, media_id, max_bytes, thumbnail)
        return RemoteMedia(fetched.content_type, fetched.content_disposition, fetched.data)

    @staticmethod
    def federation_media_envelope(
        content_type: bytes, disposition: bytes | None
    ) -> tuple[bytes, bytes, bytes]:
        """The multipart/mixed envelope of a federation media answer (spec v1.11): (the
        Content-Type header with its boundary, what goes before the media bytes, what after)."""
        from homeserver.core.federation.media import multipart_body

        boundary = secrets.token_hex(16)
        head, tail = multipart_body(boundary, content_type, disposition)
        return f"multipart/mixed; boundary={boundary}".encode(), head, tail

    def set_body_limit(self, path_prefix: str, max_bytes: int, *, message: str | None = None) -> None:
        """Accept request bodies of up to `max_bytes` on paths starting with `path_prefix`
        (one of this plugin's prefixes or below), instead of `limits.max_request_body_size`.

        The limit is enforced while the body arrives: a larger body is refused with
        413 `M_TOO_LARGE` before any handler runs, and what had arrived is dropped.
        `message` is that error's text (default: "Request body exceeds N bytes"), for a
        limit that is not the one the user knows (an upload's plus its envelope).
        Bodies over 100 kB are spooled to an anonymous temporary file
        (`request.content`), never held in memory.
        """
        if not any(path_prefix.startswith(p) for p in self._prefixes):
            raise PluginLoadError(
                f"plugin {self._name}: body limit for {path_prefix} is outside its prefixes {self._prefixes}"
            )
        if max_bytes < 0:
            raise PluginLoadError(f"plugin {self._name}: body limit must not be negative")
        self._hs.router.set_body_limit(path_prefix, max_bytes, message)

    def set_turn_provider(self, provider: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        """Answer `GET /voip/turnServer` with `await provider(user_id)`: the spec's
        `{username, password, uris, ttl}` for that user. Without a provider the answer is
        `{}`. One provider per server: a second plugin setting one fails at start-up."""
        if self._hs.voip.provider is not None:
            raise PluginLoadError(f"plugin {self._name}: another plugin already provides TURN credentials")
        self._hs.voip.provider = provider

    def set_media_admin(self, provider: MediaAdmin) -> None:
        """Offer the admin API (another plugin) what it needs of this plugin's media: one
        provider per server, a second fails start-up."""
        if self._hs.media_admin is not None:
            raise PluginLoadError(f"plugin {self._name}: another plugin already provides media admin")
        self._hs.media_admin = provider

    @property
    def media_admin(self) -> MediaAdmin | None:
        """The media provider's admin side (`set_media_admin`), None without one."""
        provider: MediaAdmin | None = self._hs.media_admin
        return provider

    def set_rtc_foci(self, foci: list[dict[str, Any]]) -> None:
        """Advertise MatrixRTC SFU foci (MSC4143, e.g. `{"type": "livekit",
        "livekit_service_url": ...}`) in `/.well-known/matrix/client` as
        `org.matrix.msc4143.rtc_foci`, where group-call clients look for them."""
        self._hs.voip.rtc_foci = [dict(f) for f in foci]

    # Events -----------------------------------------------------------------------

    def subscribe_events(self, callback: EventCallback, *, name: str = "events") -> None:
        """Call `callback(event)` (client format) for each event committed from now on, in
        stream order, one at a time (an async callback is awaited before the next event).

        Not durable: events committed while the server is down are not seen. An exception
        in the callback is logged and the next event follows; it never reaches the core.
        """

        async def each(batch: EventBatch) -> None:
            for item in batch.events:
                try:
                    result = callback(item.event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.log.failure(
                        "plugin {name} failed while handling event {event_id}",
                        name=self._name,
                        event_id=item.event.get("event_id"),
                    )

        self._hs.stream.subscribe(self._consumer_name(name), self._batch_handler(each))

    async def subscribe(
        self,
        name: str,
        callback: BatchCallback,
        *,
        durable: bool = False,
        from_start: bool = False,
        job: str = "background",
        wants: Callable[[str], bool] | None = None,
        idempotent: bool = False,
        gather_s: float = 0.0,
    ) -> None:
        """Call `callback(batch)` with each batch of committed events, in stream order, on a
        coroutine of its own: a slow callback delays only this subscription, which catches
        up from the database when it falls far behind.

        `durable`: the subscription's position is saved in the database under `name`, and
        after a restart or a crash it resumes there, so no event is missed. An event is
        handed over again only if its batch was in flight when the server died; such events
        carry `maybe_repeated` (see docs/plugins.md, "Subscriptions"). A durable callback that
        raises gets the same batch again after a pause (1 s, doubling to 5 min). The first
        time, it starts at the current position, or at the first event with `from_start`.

        With several worker processes a durable subscription runs on one of them only: the
        one that runs `job` (`workers.background`, or e.g. `workers.pusher`), see `runs`.

        `wants(event_type)`: only events of the types it accepts are handed over; a batch
        left with none is not handed over at all, which spares a durable subscription its two
        position writes per batch (the position then follows lazily, within a second).

        `idempotent` (durable only): handing a batch over again does no harm, because the
        callback's effects replace themselves or it records what it acted on. Then no
        position is written per batch (it follows lazily, within a second, and after a
        crash about a second of batches comes again, without `maybe_repeated`).

        `gather_s`: woken by a commit after being idle, wait up to this long before the next
        batch, so that it comes a little after the commit's publishing (the push plugin: the
        members' next long-polls are in by then) and with the events of that time; ended
        early when the server stops or someone waits for the subscription.
        """
        handler = self._batch_handler(callback)
        if durable and not self.runs(job):
            return
        stream_wants = _wants_by_type(wants) if wants is not None else None
        if durable:
            await self._hs.stream.subscribe_durable(
                self._consumer_name(name),
                handler,
                from_start=from_start,
                wants=stream_wants,
                idempotent=idempotent,
                gather_s=gather_s,
            )
        else:
            self._hs.stream.subscribe(
                self._consumer_name(name), handler, wants=stream_wants, gather_s=gather_s
            )

    def _consumer_name(self, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]{1,64}", name):
            raise PluginLoadError(f"plugin {self._name}: subscription name {name!r} must be lower_case")
        return f"plugin.{self._name}.{name}"

    @staticmethod
    def _batch_handler(callback: BatchCallback) -> Callable[[StreamBatch], Awaitable[None]]:
        async def handle(batch: StreamBatch) -> None:
            events = [
                StreamEvent(
                    item.event.stream_ordering,
                    client_event(item.event, item.room_version),
                    batch.maybe_repeated(item),
                )
                for item in batch.items
            ]
            result = callback(EventBatch(batch.after, batch.upto, events, batch.hold))
            if inspect.isawaitable(result):
                await result

        return handle

    def on_history_purged(self, callback: Callable[[str, list[str]], Awaitable[None] | None]) -> None:
        """Call `callback(room_id, event_ids)` (sync or async) after retention deleted these
        events (docs/retention.md). If it raises, or the server dies before it returns, it is
        called again with the same events on the purge job's next run: it must not mind
        hearing of an event twice."""
        self._hs.retention.purge_listeners.append(callback)

    # Background jobs ---------------------------------------------------------------

    def runs(self, job: str) -> bool:
        """Does this process run `job` ("background", "pusher", "federation_sender")? Always
        true in a single process; with several, only on the instance `workers.<job>` names."""
        return bool(self._hs.topology.runs(job))

    def schedule(
        self,
        interval_s: float,
        job: Callable[[], Awaitable[None] | None],
        *,
        now: bool = False,
        on: str = "background",
    ) -> None:
        """Run `job` every `interval_s` seconds; errors are logged and the job keeps running.
        With several worker processes, only on the one that runs `on` (see `runs`)."""
        if not self.runs(on):
            return

        async def run() -> None:
            try:
                result = job()
                if inspect.isawaitable(result):
                    await result
            except StorageFull:
                pass  # the disk watch has said so once (homeserver/disk_full.py); next time may work
            except Exception:
                log_failure(self.log, "background job of plugin {name} failed", name=self._name)

        self._jobs.append(
            self._hs.clock.looping_call(interval_s, lambda: Deferred.fromCoroutine(run()), now=now)
        )

    def stop_jobs(self) -> None:
        for loop in self._jobs:
            if loop.running:
                loop.stop()

    # Blocking work ------------------------------------------------------------------

    _threads: WorkerThreads | None = None  # made on first use

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run `fn(*args)` on a worker thread: anything that would block the reactor (files,
        S3, decoding images). The Deferred fires on the reactor thread with the result or the
        exception. Each plugin has its own threads (at most 10), so a slow plugin cannot hold
        up the core's; like the core's, they leave no reference cycle per call (Twisted's
        `deferToThread` did).
        """
        if self._threads is None:
            self._threads = WorkerThreads(0, 10, f"plugin-{self._name}", self._hs.reactor)
        done: Deferred[Any] = self._threads.run(fn, *args)
        done.addCallbacks(self._wrote, self._maybe_disk_full)
        return done

    @staticmethod
    def _wrote(result: Any) -> Any:
        disk_watch.check_room()
        return result

    def _maybe_disk_full(self, failure: Failure) -> Failure:
        """A full disk under a plugin's files answers as the database's does: 507 and one line
        in the log (homeserver/disk_full.py), not a 500 and a traceback per request."""
        error = failure.value
        where = str(self._hs.config.data_path)
        if error is not None and is_disk_full(error, where):
            return Failure(disk_watch.refused(where, error))
        return failure

    def close_threads(self) -> None:
        """After the plugin stopped: let its queued work finish and end its threads."""
        if self._threads is not None:
            self._threads.close()

    # Backups ------------------------------------------------------------------------

    def run_backup(self, to: str, *, keep: int = 0, s3: S3Location | None = None) -> Deferred[str]:
        """Take a backup set of this server (database, signing key, every plugin's
        `backup_sources`) into `to` (a directory or s3://bucket/prefix; `s3` gives the
        endpoint and credentials), named from the server's clock, on a worker thread; then,
        with `keep`, delete all but the newest `keep` sets there. Fires with the set's name;
        fails with `BackupError` (its message says why). See docs/operations.md."""
        from homeserver.backup import create_backup, prune_backups

        config = self._hs.config
        now_ms = self._hs.clock.time_ms()

        def work() -> str:
            name = create_backup(config, to, now_ms, s3)
            if keep:
                prune_backups(to, keep, s3)
            return name

        return self.run_blocking(work)

    def list_backups(self, to: str, *, s3: S3Location | None = None) -> Deferred[list[tuple[str, int]]]:
        """The complete backup sets at `to`, oldest first, as (name, when taken in ms)."""
        from homeserver.backup import list_backups

        return self.run_blocking(list_backups, to, s3)

    # Metrics ------------------------------------------------------------------------

    def _metric_name(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise PluginLoadError(f"plugin {self._name}: bad metric name {name!r}")
        return f"homeserver_plugin_{self._name}_{name}"

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(self._metric_name(name), documentation, labels, registry=self._hs.metrics)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self._metric_name(name), documentation, labels, registry=self._hs.metrics)

    def histogram(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(self._metric_name(name), documentation, labels, registry=self._hs.metrics)

    # Tables ------------------------------------------------------------------------

    async def run_db(self, desc: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(txn, *args)` in one transaction. Touch only this plugin's own tables."""
        return await self._hs.storage.db.run_interaction(f"{self._name}.{desc}", fn, *args)

    # Users ------------------------------------------------------------------------

    async def authenticate(self, request: ApiRequest) -> Requester:
        return await require_user(self._hs, request)

    async def is_admin(self, user_id: str) -> bool:
        """Whether `user_id` is a server admin (`homeserver admin create-user --admin`)."""
        user = await self._hs.storage.accounts.get_user(user_id)
        return user is not None and user.is_admin and not user.deactivated

    @property
    def admin(self) -> "AdminService":
        """The server admin's operations on accounts, rooms and reports (core/admin.py), for
        a plugin that serves an admin API. It checks targets, not callers: let only server
        admins (`is_admin`) reach it."""
        return self._hs.admin

    @property
    def server_version(self) -> str:
        """This server's version (the installed package's)."""
        return __version__

    def check_rate_limit(self, action: str, user_id: str) -> None:
        """Count one `action` ("media_upload", ...: the `rate_limits.<action>_per_user` keys of
        the server's config) by `user_id`; raise MatrixError 429 M_LIMIT_EXCEEDED past it."""
        self._hs.ratelimiter.check_user(action, user_id)

    # Rooms ------------------------------------------------------------------------

    async def room_membership(self, room_id: str, user_id: str) -> str | None:
        """`user_id`'s current membership of `room_id` ("join", "invite", "leave",
        "ban", "knock"), or None if they have none or the room is unknown."""
        head = await self._hs.room_heads.get(room_id)
        return head.membership(user_id) if head is not None else None

    async def joined_members(self, room_id: str) -> list[str]:
        """The user ids joined to `room_id` now (empty for an unknown room)."""
        head = await self._hs.room_heads.get(room_id)
        return list(head.members("join")) if head is not None else []

    async def room_name(self, room_id: str) -> str | None:
        """The room's current `m.room.name`, if it has one."""
        head = await self._hs.room_heads.get(room_id)
        event = head.get("m.room.name", "") if head is not None else None
        name = event.content.get("name") if event is not None else None
        return name if isinstance(name, str) and name else None

    async def room_encrypted(self, room_id: str) -> bool:
        """Whether the room has end-to-end encryption on (an `m.room.encryption` state event)."""
        head = await self._hs.room_heads.get(room_id)
        return head is not None and head.get("m.room.encryption", "") is not None

    async def display_name(self, room_id: str, user_id: str) -> str | None:
        """The user's display name in the room (their current member event's), if set."""
        head = await self._hs.room_heads.get(room_id)
        event = head.get("m.room.member", user_id) if head is not None else None
        name = event.content.get("displayname") if event is not None else None
        return name if isinstance(name, str) and name else None

    # Push ------------------------------------------------------------------------

    async def pushers_for_users(self, user_ids: list[str]) -> dict[str, tuple[Pusher, ...]]:
        """Each user's pushers (`POST /pushers/set`), from memory after the first read."""
        return await self._hs.pushers.for_users(user_ids)

    async def pushers_by_ids(self, pusher_ids: list[str]) -> list[Pusher]:
        """The pushers with these ids that still exist."""
        return await self._hs.pushers.by_ids(pusher_ids)

    async def remove_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        """Delete a pusher: its push gateway answered that the pushkey is `rejected`."""
        await self._hs.pushers.remove(user_id, app_id, pushkey)

    def push_address_allowed(self, address: str) -> bool:
        """Whether a pusher's URL may reach this IP address (`pushers.allow_private_addresses`:
        without it, only public unicast addresses). Check every address a host resolves to."""
        return self._hs.config.pushers.allow_private_addresses or is_public_address(address)

    def device_connected(self, user_id: str, device_id: str, grace_s: float) -> bool:
        """Whether the device has a sync long-poll or WebSocket stream open, or closed its
        last one less than `grace_s` ago (between two long-polls nothing is open)."""
        return self._hs.delivery.connections.connected(user_id, device_id, grace_s)

    def wait_for_device_receipt(
        self, user_id: str, device_id: str, position: int, timeout_s: float
    ) -> Deferred[bool]:
        """Fires True once the device proves receipt of the event at stream `position` (a sync
        `since` at or past it, or a WebSocket ack), or False after `timeout_s`."""
        return self._hs.delivery.connections.wait_for_receipt(user_id, device_id, position, timeout_s)

    async def push_decisions(self, event: StreamEvent) -> list[PushDecision]:
        """The room's joined members (never the sender) that have a pusher and whose push
        rules make this committed event notify. For recent events the rules' work of the
        commit itself is reused (the first call turns that on); older ones are evaluated now
        against the room's state."""
        event_id = event.event.get("event_id")
        if not isinstance(event_id, str):
            return []
        return [
            PushDecision(d.user_id, d.outcome.highlight, dict(d.outcome.tweaks))
            for d in await self._hs.unread.decisions(event_id)
        ]

    async def event_read(self, user_id: str, event: StreamEvent) -> bool:
        """Whether the user has read the event already (their read receipt in its room is at
        or past it): a notification decided before the receipt, still to be sent, would tell
        them of a message they have seen."""
        room_id = event.event.get("room_id")
        return isinstance(room_id, str) and await self._hs.unread.read_past(user_id, room_id, event.position)

    def on_read_receipt(self, callback: Callable[[str, str, int], None]) -> None:
        """Call `callback(user_id, room_id, position)` (synchronous: schedule any work) each
        time a user's read receipt (public or private) is stored, on every process, `position`
        on the receipts stream (`read_receipts_between`). Not durable: receipts stored while
        this process is down are not told; read them with `read_receipts_between`."""
        self._hs.receipts.read_listeners.append(callback)

    def read_receipts_position(self) -> int:
        """The receipts stream's position: every receipt up to it is stored."""
        return int(self._hs.receipts.stream.current)

    async def read_receipts_between(self, after: int, upto: int) -> list[tuple[int, str, str]]:
        """(position, user id, room id) of the read receipts last changed in (after, upto]."""
        rows = await self._hs.storage.user_data.receipts_between(after, upto)
        return [(position, user_id, room_id) for position, room_id, user_id in rows]

    async def notification_count(self, user_id: str) -> int:
        """The user's unread notification count summed over their rooms (a push's counts.unread)."""
        return await self._hs.unread.total(user_id, sorted(await self.joined_rooms(user_id)))

    async def room_notification_count(self, user_id: str, room_id: str) -> int:
        """The user's unread notification count in one room (0 once they read past its
        notifying events), as /sync's `notification_count`."""
        return (await self._hs.unread.entry(user_id, room_id)).notify

    async def event_for_user(self, user_id: str, room_id: str, event_id: str) -> dict[str, Any] | None:
        """The event as `user_id` may see it now (client format; redacted if it was), or None
        if it is gone or hidden from them (they left, history visibility)."""
        try:
            return await self._hs.messages.get_event(user_id, room_id, event_id)
        except MatrixError:
            return None

    # Users' data (GDPR, docs/gdpr.md) ---------------------------------------------------

    def on_user_erased(self, callback: Callable[[str], Awaitable[None]]) -> None:
        """Call `await callback(user_id)` when an account is erased (deactivated with
        `erase: true`), after the core has erased its part: delete what this plugin keeps
        about the user. An exception is logged; the erasure of the rest stands."""
        self._hs.erasure.on_user_erased.append(callback)

    def add_export_part(self, callback: Callable[[str, ExportSink], Awaitable[None]]) -> None:
        """Add this plugin's part to users' data exports: `await callback(user_id, sink)`
        writes what it keeps about the user into `sink` (`add_json`, `add_file`), under the
        folder named after the plugin in the zip. An exception fails the export."""
        self._hs.exports.parts.append((self._name, callback))

    async def export_user_data(self, user_id: str) -> ExportRow:
        """Start an export of `user_id`'s data, as the user's own `POST /api/me/export` does
        (or return the one running). For an admin API: let only server admins reach it."""
        return await self._hs.exports.export_user_data(user_id)

    async def user_exports(self, user_id: str) -> list[ExportRow]:
        return await self._hs.exports.exports_of(user_id)

    async def any_export(self, export_id: str) -> ExportRow:
        """Any user's export by id (404 `M_NOT_FOUND` if there is none). Admins only."""
        return await self._hs.exports.any_export(export_id)

    async def open_export(self, export_id: str) -> tuple[AsyncIterator[bytes], int]:
        """Any user's finished export zip as chunks, and its size (409 while it runs). Admins only."""
        return await self._hs.exports.open_zip(await self._hs.exports.any_export(export_id))

    # Statistics --------------------------------------------------------------------

    async def server_stats(self, days: int) -> ServerStats:
        """Per-day sign-ups, active users, messages and calls for the last `days` days (1 to
        366, today last), accounts, DAU/MAU and open connections (core/daily_stats.py).
        Cheap to ask: finished days are counted once; today at most once a minute."""
        return await self._hs.daily_stats.stats(days)

    # Mail ------------------------------------------------------------------------

    async def send_mail(self, to: str, subject: str, text: str) -> None:
        """Send one plain-text mail through the server's mailer (`email:` of the config: SMTP,
        or a file in the data dir's outbox without it). Raises if the SMTP server fails."""
        await self._hs.mailer.send(to, subject, text)

    async def joined_rooms(self, user_id: str) -> set[str]:
        """The ids of the rooms `user_id` is joined to now."""
        rooms = await self._hs.timeline.rooms_for_user(user_id)
        return {room_id for room_id, (membership, _) in rooms.items() if membership == "join"}


# Re-exported for plugins, so they import only from this module.
__all__ = [
    "address_blocked",
    "AdminMedia",
    "MediaAdmin",
    "MediaUsage",
    "ApiRequest",
    "BackupError",
    "BackupSource",
    "ChunksOnThreads",
    "RemoteMedia",
    "Connections",
    "DayStats",
    "ExportRow",
    "ServerStats",
    "DeviceRow",
    "Page",
    "RegistrationToken",
    "Report",
    "RoomSummary",
    "UserDetails",
    "UserFilter",
    "UserSummary",
    "EventBatch",
    "ExportSink",
    "MatrixError",
    "PluginApi",
    "PluginConfigError",
    "PushDecision",
    "Pusher",
    "Requester",
    "Response",
    "S3Location",
    "StorageFull",
    "StreamBody",
    "StreamEvent",
    "Txn",
    "log_failure",
]


def load_plugin_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise PluginLoadError(f"plugin module {path!r} must be 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginLoadError(f"cannot import plugin {path!r}: {e}") from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise PluginLoadError(f"plugin {path!r}: {module_name} has no class {class_name}")
    return cls


def parse_plugin_config(index: int, module: str, raw: dict[str, Any], source: str) -> tuple[type, Any]:
    """Import a plugin class and validate its config block (before anything starts)."""
    cls = load_plugin_class(module)
    parse = getattr(cls, "parse_config", None)
    try:
        config = parse(raw) if parse is not None else raw
    except PluginConfigError as e:
        raise PluginLoadError(f"{source}: 'plugins[{index}].config' ({module}): {e}") from None
    return cls, config


def plugin_name(cls: type) -> str:
    name = getattr(cls, "NAME", None) or cls.__module__.rsplit(".", 1)[-1]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise PluginLoadError(f"plugin {cls.__module__}: NAME must be lower_case")
    return str(name)


async def migrate_plugin_schemas(db: Database, config: "Config") -> dict[str, list[int]]:
    """Apply each configured plugin's schema files (the `SCHEMA_DIR` of its class, recorded
    under the component `plugin.NAME`), without constructing or starting the plugin: run by
    start-up and by `homeserver migrate` alike. Returns the versions applied per plugin."""
    applied: dict[str, list[int]] = {}
    for entry in config.plugins:
        cls = load_plugin_class(entry.module)
        directory = getattr(cls, "SCHEMA_DIR", None)
        if directory is None:
            continue
        if not isinstance(directory, Path) or not directory.is_dir():
            raise PluginLoadError(f"plugin {entry.module}: SCHEMA_DIR must be an existing directory")
        name = plugin_name(cls)
        applied[name] = await migrate(db, directory, component=f"plugin.{name}")
    return applied


async def start_plugins(hs: "HomeServer", router: Router) -> list[Any]:
    """Construct every configured plugin with its own PluginApi and let it start."""
    instances = []
    seen: set[str] = set()
    for index, entry in enumerate(hs.config.plugins):
        cls, config = parse_plugin_config(index, entry.module, entry.config, hs.config.source)
        name = plugin_name(cls)
        if name in seen:
            raise PluginLoadError(f"{hs.config.source}: plugin {name} is listed twice")
        seen.add(name)
        prefixes = tuple(getattr(cls, "PATH_PREFIXES", ())) + (f"/_plugins/{name}/",)
        for prefix in prefixes:
            if any(t.startswith(prefix) for t in router.templates()):
                raise PluginLoadError(f"plugin {name}: prefix {prefix} overlaps routes already registered")
        api = PluginApi(hs, name, config, prefixes)
        instance = cls(config, api)
        start = getattr(instance, "start", None)
        if start is not None:
            result = start()
            if inspect.isawaitable(result):
                await result
        hs.plugin_apis.append(api)
        instances.append(instance)
        log.info("plugin {name} started ({module})", name=name, module=entry.module)
    return instances


def _wants_by_type(wants: Callable[[str], bool]) -> Callable[[StoredEvent], bool]:
    """A plugin's `wants(event_type)` as the stream's `wants(event)`."""
    return lambda ev: bool(wants(ev.type))
