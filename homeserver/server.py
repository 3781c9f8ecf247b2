"""Builds the server from a config: storage, services, routes, plugins, the listening port."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger

from homeserver.api import health as health_route
from homeserver.api import metrics as metrics_routes
from homeserver.api import web_client
from homeserver.api.client import (
    account,
    devices,
    keys,
    login,
    openid,
    profile,
    push_rules,
    pushers,
    reports,
    room_events,
    rooms,
    search,
    sliding_sync,
    spaces,
    sync,
    tags,
    threads,
    user_data,
    versions,
    voip,
)
from homeserver.api.client import register as register_routes
from homeserver.api.connection_cap import ConnectionCap, default_max_connections
from homeserver.api.federation import events as federation_events
from homeserver.api.federation import keys as federation_keys
from homeserver.api.federation import membership as federation_membership
from homeserver.api.federation import queries as federation_queries
from homeserver.api.federation import user_keys as federation_user_keys
from homeserver.api.forwarded import parse_networks
from homeserver.api.http import Router, make_site
from homeserver.api.http_server import HttpFactory
from homeserver.api.internal import internal_router
from homeserver.api.simple import auth as simple_auth
from homeserver.api.simple import export as simple_export
from homeserver.api.simple import messages as simple_messages
from homeserver.api.simple import profiles as simple_profiles
from homeserver.api.ws_route import WS_PATH, LazyUpgrade, add_upgrade_required_route
from homeserver.config import Config
from homeserver.core.account_data import AccountDataService
from homeserver.core.accounts import AccountService
from homeserver.core.activity import ActivityStats
from homeserver.core.admin import AdminService
from homeserver.core.chats import ChatService
from homeserver.core.clock import Clock
from homeserver.core.daily_stats import Connections, DailyStatsService
from homeserver.core.delivery import DeliveryTracker
from homeserver.core.device_activity import DeviceActivity
from homeserver.core.devices import DeviceService
from homeserver.core.directory import DirectoryService
from homeserver.core.e2ee import KeyService
from homeserver.core.email_validation import EmailValidator
from homeserver.core.erasure import ErasureService
from homeserver.core.event_stream import EventStream
from homeserver.core.events import EventService
from homeserver.core.export import ExportService
from homeserver.core.federation.directory_queries import DirectoryQueries
from homeserver.core.federation.edus import InboundEdus
from homeserver.core.federation.membership import FederatedMembership
from homeserver.core.federation.outbound_edus import OutboundEdus
from homeserver.core.federation.remote_keys import RemoteKeys
from homeserver.core.federation.sender import FederationSender, version_probe
from homeserver.core.federation.service import Federation
from homeserver.core.federation.user_keys import FederationUserKeys
from homeserver.core.filters import FilterService
from homeserver.core.ignored_users import IGNORED_USER_LIST, IgnoredUsers, check_ignored_user_list
from homeserver.core.key_backup import KeyBackupService
from homeserver.core.mailer import Mailer
from homeserver.core.messages import MessagesService
from homeserver.core.notifications import NotificationService
from homeserver.core.openid import OpenIdService
from homeserver.core.password_reset import PasswordResetService
from homeserver.core.passwords import PasswordHasher
from homeserver.core.persist import EventPersister
from homeserver.core.presence import PresenceService
from homeserver.core.profiles import ProfileService
from homeserver.core.push_rules import PushRuleService
from homeserver.core.pushers import PusherService
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.receipts import ReceiptService
from homeserver.core.registration import RegistrationService
from homeserver.core.registration_tokens import RegistrationTokens
from homeserver.core.reports import ReportService
from homeserver.core.restrictions import AccountRestrictions
from homeserver.core.retention import RetentionService
from homeserver.core.room_heads import RoomHeads
from homeserver.core.room_preview import RoomPreview
from homeserver.core.room_tags import TagService
from homeserver.core.room_upgrade import RoomUpgrader
from homeserver.core.rooms import RoomService
from homeserver.core.search import SearchService
from homeserver.core.search_index import SearchIndexer
from homeserver.core.sliding_sync import SlidingSyncService
from homeserver.core.spaces import SpaceService
from homeserver.core.sync import SyncService
from homeserver.core.timeline_cache import TimelineCache
from homeserver.core.tokens import TokenService
from homeserver.core.typing import TypingService
from homeserver.core.uia import InteractiveAuth
from homeserver.core.unread import UnreadCounter
from homeserver.core.user_directory import UserDirectory
from homeserver.core.voip import VoipService
from homeserver.errors import StorageFull
from homeserver.logs import log_failure
from homeserver.metrics import ServerMetrics
from homeserver.notifier import Notifier
from homeserver.plugins import PluginApi, migrate_plugin_schemas, start_plugins
from homeserver.signing_key import load_or_create_signing_key
from homeserver.storage import Storage
from homeserver.storage.admin import AdminStore
from homeserver.storage.migrations import migrate
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.writer_lock import WriterLock
from homeserver.threads import WorkerThreads
from homeserver.workers.bus import Bus, LocalBus, RedisBus
from homeserver.workers.event_positions import WriterPositions
from homeserver.workers.event_replication import EventReplication
from homeserver.workers.event_writes import RoomWriters, register_event_writes
from homeserver.workers.invalidation import CacheInvalidation
from homeserver.workers.jobs import wire_jobs
from homeserver.workers.rpc import HttpTransport, Transport, WorkerRpc
from homeserver.workers.shared_limits import SharedRateLimits
from homeserver.workers.streams import StreamReplication
from homeserver.workers.topology import Topology

if TYPE_CHECKING:
    from homeserver.api.ws import StreamFactory

log = Logger()

# Largest request between instances (a forwarded federation transaction's PDUs, an event).
INTERNAL_BODY_LIMIT = 16 * 1024 * 1024

# How long a shutdown waits for in-flight requests before closing anyway.
SHUTDOWN_GRACE_S = 5.0


def load_jwt_secret(config: Config) -> bytes:
    """The key that signs access tokens: from config/env, else a file made once in the data dir."""
    if config.auth.jwt_secret:
        return config.auth.jwt_secret.encode("utf-8")
    return read_or_create_secret(config.data_path / "jwt.secret", "everyone is logged out")


def load_worker_secret(config: Config) -> bytes:
    """The shared secret of requests between instances: from config/env, else its file."""
    workers = config.workers
    if workers.secret:
        return workers.secret.encode("utf-8")
    return read_or_create_secret(Path(workers.secret_file), "restart every instance")


def read_or_create_secret(path: Path, consequence: str) -> bytes:
    """A random secret kept in `path`, made there the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole beside it, then linked into place: a write cut short (a full disk)
        # never leaves an empty or partial secret that the next start would use.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp_name, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
        finally:
            os.unlink(tmp_name)
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty: delete it to have a new one made ({consequence})")
    return secret.encode("utf-8")


class HomeServer:
    """The server's parts, wired once. Handlers receive this and use its attributes."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        clock: Clock | None = None,
        worker: str | None = None,
        bus: Bus | None = None,
        rpc_transport: Transport | None = None,
    ) -> None:
        """`reactor` runs the I/O and answers the worker threads; `clock` is every read of the
        time and every timer (default: the reactor's; tests pass one they move themselves).
        `worker` names this instance of `config.workers` (ConfigError if none); `bus` and
        `rpc_transport` replace Redis and HTTP between instances (tests: MemoryHub and
        MemoryTransport)."""
        self.config = config
        self.reactor = reactor
        # Set when the process must exit failing once stopped (a fenced event writer).
        self.exit_code = 0
        self.clock = clock or Clock(reactor)
        self._build_workers(worker, bus, rpc_transport)
        self.signing_key = load_or_create_signing_key(config.signing_key_file)
        self.storage = Storage.from_url(
            config.database.url, config.database.pool_min, config.database.pool_max, reactor
        )
        self.metrics = CollectorRegistry()
        self.server_metrics = ServerMetrics(self.metrics)
        # Password hashing and SMTP: blocking work, off the reactor thread.
        self.blocking = WorkerThreads(0, 10, "blocking", reactor)
        self.hasher = PasswordHasher(config.auth.password_hashing, self.blocking)
        self.ratelimiter = RateLimiter(self.clock, config.rate_limits.enabled, config.rate_limits)
        self.tokens = TokenService(
            self.storage,
            self.clock,
            load_jwt_secret(config),
            config.server_name,
            config.auth.access_token_lifetime,
            config.auth.non_refreshable_token_lifetime,
            config.auth.refresh_token_lifetime,
        )
        self.mailer = Mailer(config.email, config.data_path, self.clock, self.blocking)
        self.email = EmailValidator(
            self.storage.auth_sessions, self.mailer, self.clock, config.base_url, config.email.token_lifetime
        )
        self.uia = InteractiveAuth(
            self.storage, self.clock, self.hasher, self.email, config.server_name, config.registration.tokens
        )
        self.registration_tokens = RegistrationTokens(RegistrationTokenStore(self.storage.db), self.clock)
        self.uia.managed_tokens = self.registration_tokens
        self.accounts = AccountService(
            config, self.storage, self.clock, self.hasher, self.tokens, self.email, self.ratelimiter, self.uia
        )
        account_parts = (
            config,
            self.storage,
            self.clock,
            self.accounts,
            self.uia,
            self.email,
            self.ratelimiter,
        )
        self.registration = RegistrationService(*account_parts)
        self.password_reset = PasswordResetService(*account_parts)
        self.devices = DeviceService(self.storage, self.accounts, self.uia)
        self.device_activity = DeviceActivity(self.storage, self.clock)
        # The balancers whose X-Forwarded-For names the client (HTTP and WebSocket alike).
        self.trusted_proxies = parse_networks(config.listen.trusted_proxies)
        # Connections open at once on the client and federation listeners (not the internal
        # one: the other workers must always get through).
        self.connection_cap = ConnectionCap(
            self.clock,
            config.listen.max_connections_per_ip,
            config.listen.max_connections or default_max_connections(),
            self.trusted_proxies,
        )
        self.filters = FilterService(self.storage)
        self.key_backup = KeyBackupService(self.storage)
        self.pushers = PusherService(self.storage, config.pushers, self.clock)
        self.accounts.on_devices_deleted.append(self.pushers.devices_deleted)
        self.accounts.on_password_changed.append(self.pushers.password_changed)
        self._build_rooms()
        self.router = Router()
        self.router.data_dir = str(config.data_path)
        self.router.access_log = config.logging.access_log
        self.http: HttpFactory | None = None  # made by site()
        self.metrics_port: IListeningPort | None = None  # the metrics listener, if cli opened one
        self.federation_http: HttpFactory | None = None  # made by federation_site()
        self.federation_port: IListeningPort | None = None  # the TLS federation listener, if any
        # The WebSocket stream at /_homeserver/ws (made by its first upgrade, see `websocket`);
        # every other path goes to the router.
        self._websocket: StreamFactory | None = None
        add_upgrade_required_route(self.router)
        self._jobs: list[Any] = []
        self.plugin_apis: list[PluginApi] = []
        self.plugins: list[Any] = []
        for module in (
            versions,
            login,
            register_routes,
            account,
            devices,
            profile,
            pushers,
            rooms,
            room_events,
            spaces,
            tags,
            sync,
            sliding_sync,
            threads,
            user_data,
            push_rules,
            search,
            reports,
            keys,
            openid,
            voip,
            simple_auth,
            simple_export,
            simple_messages,
            simple_profiles,
            metrics_routes,
            health_route,
            federation_keys,
            federation_queries,
            federation_events,
            federation_user_keys,
            federation_membership,
            web_client,
        ):
            module.register(self.router, self)
        self.activity = ActivityStats(self.storage, self.clock, self.presence, config.server_name)
        self.daily_stats = DailyStatsService(
            self.storage.daily_stats, self.clock, self.activity, config.server_name, self._connections
        )
        if self.room_writers is not None:
            self._forward_event_writes(self.room_writers)
        if config.metrics.served:
            # Unserved, the hot paths skip even the observations.
            self.server_metrics.watch(self)
        self._build_scale_out()

    def _build_scale_out(self) -> None:
        """With several worker processes: the single-writer streams, cache invalidations and
        shared rate limits between them (homeserver/workers/, docs/scaling.md). Nothing at
        all in a single process: its path stays as it was."""
        self.stream_replication: StreamReplication | None = None
        self.shared_limits: SharedRateLimits | None = None
        if not self.topology.multi:
            return
        self.stream_replication = StreamReplication(self)
        self.stream_replication.wire()
        CacheInvalidation(self).wire()
        self.shared_limits = SharedRateLimits(self.ratelimiter, self.bus, self.clock)
        self.shared_limits.wire()
        wire_jobs(self)

    def _build_workers(self, worker: str | None, bus: Bus | None, transport: Transport | None) -> None:
        """Which instance this is and what joins it to the others (nothing when single)."""
        config = self.config
        self.topology = Topology.from_config(config, worker)
        multi = self.topology.multi
        secret = load_worker_secret(config) if multi else b""
        if bus is None:
            workers = config.workers
            bus = (
                RedisBus(self.topology.me, workers.redis_url, workers.redis_prefix, secret)
                if multi
                else LocalBus(self.topology.me)
            )
        self.bus: Bus = bus
        if transport is None and multi:
            transport = HttpTransport(
                self.reactor, self.topology.internal_address, secret, config.workers.rpc_timeout / 1000
            )
        self.rpc = WorkerRpc(self.topology.me, secret, transport)
        # Several processes: each room's events are written by its writer (None when single).
        self.room_writers = RoomWriters(self.topology, self.rpc) if multi else None
        # Set when shutting down: GET /health answers 503 (api/health.py).
        self.draining = False
        self.internal_http: HttpFactory | None = None  # made by internal_site()
        self.internal_port: IListeningPort | None = None  # the internal listener, if cli opened one

    def _forward_event_writes(self, writers: RoomWriters) -> None:
        """Every entry point that builds events on a room's head goes to the room's writer;
        the persister refuses any event of a room this process does not write."""
        self.events.writers = writers
        self.federation_ingest.writers = writers
        self.federation_backfill.writers = writers
        self.persister.owns_room = writers.is_mine
        register_event_writes(self, writers)

    @property
    def websocket(self) -> StreamFactory:
        """The WebSocket streams' factory, made (and Autobahn imported) on first use."""
        if self._websocket is None:
            from homeserver.api.ws import stream_factory

            self._websocket = stream_factory(self)
        return self._websocket

    def websocket_if_started(self) -> StreamFactory | None:
        return self._websocket

    def _connections(self) -> Connections:
        ws = self._websocket
        return Connections(len(ws.connections) if ws is not None else 0, self.notifier.waiting_requests())

    def _build_federation_events(self) -> None:
        """Inbound transactions, remote PDU ingestion and serving events to other servers."""
        from homeserver.core.federation.backfill import Backfiller
        from homeserver.core.federation.edus import EduReceiver
        from homeserver.core.federation.event_serving import EventServer
        from homeserver.core.federation.ingest import PduIngest
        from homeserver.core.federation.transactions import TransactionReceiver

        store, fed_store = self.storage.events, self.storage.federation_events
        self.federation_edus = EduReceiver()
        self.federation_ingest = PduIngest(
            self.config.server_name,
            store,
            fed_store,
            self.room_heads,
            self.persister,
            self.federation.key_ring,
            self.federation.client,
            self.clock,
        )
        self.federation_transactions = TransactionReceiver(
            store, fed_store, self.federation_ingest, self.federation_edus, self.clock
        )
        self.federation_event_server = EventServer(
            self.config.server_name, store, fed_store, self.room_heads, self.clock
        )
        self.federation_backfill = Backfiller(
            self.config.server_name,
            self.storage.backfill,
            self.room_heads,
            self.federation_ingest,
            self.federation.client,
            self.clock,
            self.storage.search,
        )

    def _build_rooms(self) -> None:
        """Rooms, events and the streams sync reads (the message path of docs/architecture.md)."""
        store = self.storage.events
        self.room_heads = RoomHeads(store)
        self.notifier = Notifier(self.clock, self._joined_members)
        # Every consumer of committed events reads this one ordered stream (docs/architecture.md).
        self.stream = EventStream(store, self.storage.stream_consumers, self.clock, self.clock.time_ms)
        self.stream.register_metrics(self.metrics)
        self.persister = EventPersister(
            store, self.room_heads, self.stream.publish, self.clock, self._writer_positions()
        )
        # Several processes: every event writer's batches, merged into this one's stream.
        self.replication: EventReplication | None = None
        if self.topology.multi:
            self.replication = EventReplication(
                me=self.topology.me,
                writers=self.topology.event_writers,
                bus=self.bus,
                stream=self.stream,
                events=store,
                promises=self.storage.stream_writers,
                heads=self.room_heads,
                writes_room=self.topology.writes_room,
                clock=self.clock,
                persister=self.persister,
                consumers=self.storage.stream_consumers,
                lock=self._writer_lock(),
            )
            self.replication.on_fenced = self._fenced
            self.replication.register_metrics(self.metrics)
        self.timeline = TimelineCache(store)
        self.events = EventService(
            self.config.server_name, self.signing_key, self.clock, self.room_heads, self.persister, store
        )
        self.accounts.on_new_device.append(self.events.txn_ids.new_device)
        self.account_data = AccountDataService(
            self.storage, self.notifier, self.room_heads, self.config.limits.max_account_data_per_user
        )
        self.account_data.checks[IGNORED_USER_LIST] = check_ignored_user_list
        self.ignored_users = IgnoredUsers(self.account_data)
        self.rooms = RoomService(
            self.config.server_name,
            self.storage,
            self.events,
            self.config.encryption.enabled_by_default_for_room_type,
            self.account_data,
        )
        self.profiles = ProfileService(self.storage, self.rooms, self.timeline, self.config.server_name)
        self.federation = Federation(
            self.config.server_name,
            self.signing_key,
            self.config.federation,
            self.storage,
            self.clock,
            self.reactor,
            self.ratelimiter,
        )
        self.profiles.remote = self.federation.profiles.remote
        self._build_federation_events()
        self.federation.membership = FederatedMembership(
            self.config.server_name,
            self.events,
            self.federation.key_ring,
            self.federation.client,
            self.rooms.is_local_user,
            lambda room_id: room_id in self.rooms.blocked,
            self.blocking.run,
        )
        # A join of ours that lost the race with another of ours goes in as a PDU of the room.
        self.federation.membership.ingest_pdu = self.federation_ingest.receive_pdu
        self.rooms.remote = self.federation.membership
        self.openid = OpenIdService(self.config.server_name, self.storage, self.clock)
        self.voip = VoipService()
        self.media_admin: Any = None  # the media plugin's admin side (PluginApi.set_media_admin)
        self.events.ratelimiter = self.ratelimiter
        self.rooms.ratelimiter = self.ratelimiter
        self.profiles.ratelimiter = self.ratelimiter
        self.directory = DirectoryService(self.config.server_name, self.storage, self.rooms, self.room_heads)
        self.federation.directory = DirectoryQueries(
            self.config.server_name, self.directory, self.federation.client, self.clock
        )
        self.directory.remote_alias = self.federation.directory.remote_alias
        self.directory.remote_public_rooms = self.federation.directory.remote_public_rooms
        self.tags = TagService(self.account_data, self.room_heads)
        self.rooms.tags = self.tags
        self.room_preview = RoomPreview(self.rooms, self.timeline)
        self.spaces = SpaceService(self.room_heads, self.room_preview)
        self.room_upgrader = RoomUpgrader(self.storage, self.rooms, self.account_data, self.tags)
        self.receipts = ReceiptService(self.storage, self.clock, self.notifier, self.rooms, self.account_data)
        self.typing = TypingService(self.clock, self.notifier, self.rooms)
        self.presence = PresenceService(self.storage, self.clock, self.notifier)
        self.presence.audience = self._presence_audience
        self.presence.share_a_room = self._share_a_room
        self.delivery = DeliveryTracker(self.storage, self.clock)
        self.push_rules = PushRuleService(self.account_data)
        self.rooms.push_rules = self.push_rules
        self.unread = UnreadCounter(
            self.storage, self.room_heads, self.push_rules, self.ignored_users, self.stream
        )
        self.unread.push_owners = self.pushers.owners
        self.receipts.on_read = self.unread.forget
        self.keys = KeyService(self.storage, self.clock, self.notifier, self.uia)
        self.keys.audience = self._presence_audience
        self.keys.ratelimiter = self.ratelimiter
        self.keys.max_queued_per_device = self.config.limits.max_to_device_queued_per_device
        self.messages = MessagesService(self.storage, self.rooms, lambda: self.stream.position)
        self.messages.backfill = self.federation_backfill.backfill  # older history of remote rooms
        self.sync = SyncService(
            self.storage,
            self.clock,
            self.notifier,
            self.room_heads,
            self.timeline,
            self.rooms,
            self.receipts,
            self.typing,
            self.presence,
            self.account_data,
            self.delivery,
            self.unread,
            self.keys,
            lambda: self.stream.position,
            self.ignored_users,
        )
        self.sync.tokens_from_elsewhere = self.topology.multi
        # Sync first: a deleted device's waiting long-poll ends with M_UNKNOWN_TOKEN, before
        # the key change wakes it with news it should no longer get.
        self.accounts.on_devices_deleted.append(self.sync.devices_deleted)
        self.accounts.on_devices_deleted.append(self.keys.devices_deleted)
        self.accounts.on_deactivated.append(self.keys.user_deactivated)
        self.sliding_sync = SlidingSyncService(
            self.storage,
            self.clock,
            self.notifier,
            self.room_heads,
            self.timeline,
            self.rooms,
            self.receipts,
            self.typing,
            self.account_data,
            self.delivery,
            self.unread,
            self.keys,
            self.sync,
        )
        self.notifications = NotificationService(
            self.storage,
            self.room_heads,
            self.timeline,
            self.rooms,
            self.push_rules,
            self.sync.visibility,
            lambda: self.stream.position,
            self.ignored_users,
        )
        self.chats = ChatService(
            self.storage,
            self.events,
            self.rooms,
            self.messages,
            self.account_data,
            self.delivery,
            self.presence,
            self.timeline,
            self.unread,
            self.receipts,
        )

        self._build_finding()
        self._build_federation_sender()

        # In-process consumers, called in this order after each commit: the caches first,
        # the notifier last, so a woken sync finds the events in them.
        self.stream.add_inline("timeline", self.timeline.on_committed)
        self.stream.add_inline("sync", self.sync.on_committed)
        self.stream.add_inline("sliding_sync", self.sliding_sync.on_committed)
        self.stream.add_inline("unread", self.unread.on_committed)
        self.stream.add_inline("notifier", self.notifier.on_events_committed)
        # After _build_federation_events: it registers on that EDU receiver.
        self._build_federated_keys()

    def _build_federation_sender(self) -> None:
        """Our events and EDUs to other servers, and their EDUs to us (docs/federation.md)."""
        client = self.federation.client

        async def send_transaction(destination: str, txn_id: str, body: dict[str, Any]) -> Any:
            return await client.put_json(
                destination, f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}", body
            )

        async def joined_rooms(user_id: str) -> list[str]:
            rooms = await self.timeline.rooms_for_user(user_id)
            return [room_id for room_id, (membership, _) in rooms.items() if membership == "join"]

        self.federation_sender = FederationSender(
            self.config.server_name,
            self.storage.federation_queue,
            self.storage.events,
            self.room_heads,
            self.stream,
            self.clock,
            send_transaction,
            joined_rooms,
            self.storage.stream_consumers,
            probe=version_probe(client.get_json),
        )
        self.federation_sender.register_metrics(self.metrics)
        self.federation.membership.on_remote_event = self.federation_sender.queue_remote_event
        outbound = OutboundEdus(
            self.federation_sender, self.config.server_name, self.storage.e2ee.change_before
        )
        self.typing.on_local_typing = outbound.typing
        self.receipts.on_local_receipt = outbound.receipt

        async def presence_changed(user_id: str) -> None:
            await outbound.presence(user_id, self.presence.to_json(user_id))

        self.presence.on_change = presence_changed
        self.keys.federation = outbound
        # Made with the /send handler (_build_federation_events), which hands it the EDUs.
        InboundEdus(
            self.room_heads, self.typing, self.receipts, self.presence, self._shares_room_with_ours
        ).register(self.federation_edus)

    def _build_finding(self) -> None:
        """Finding people and messages, and reports (docs/search.md)."""
        self.user_directory = UserDirectory(
            self.storage,
            self.room_heads,
            self.timeline,
            self.stream,
            self.config.user_directory.search_all_users,
            self.config.search.index_wait / 1000,
        )
        self.accounts.on_profile_changed.append(self.user_directory.profile_changed)
        self.profiles.on_profile_changed.append(self.user_directory.profile_changed)
        self.search_index = SearchIndexer(self.storage.search, self.stream)
        self.search = SearchService(
            self.storage,
            self.timeline,
            self.messages,
            self.search_index,
            self.ignored_users,
            self.config.search.index_wait / 1000,
        )
        self.reports = ReportService(self.storage, self.messages, self.clock, self.ratelimiter)
        self.restrictions = AccountRestrictions(AdminStore(self.storage.db))
        self.tokens.check_account = self.restrictions.check_not_locked
        self.events.restrictions = self.restrictions
        self.rooms.restrictions = self.restrictions
        self.admin = AdminService(
            self.config.server_name,
            self.storage,
            self.restrictions.store,
            self.accounts,
            self.profiles,
            self.room_heads,
            self.restrictions,
            self.timeline,
            self.registration_tokens,
            self.rooms,
            self.clock,
        )
        self._build_gdpr()
        self.retention = RetentionService(self.config.retention, self.storage.retention, self.clock)
        self.retention.on_purged.append(self._forget_purged)
        self.admin.on_messages_purged = self.retention.tell_pending

    def _build_gdpr(self) -> None:
        """Data export and erasure (docs/gdpr.md)."""
        self.exports = ExportService(self.storage, self.clock, self.config.data_path, self.blocking)
        self.erasure = ErasureService(
            self.storage,
            self.clock,
            self.accounts,
            self.rooms,
            self.room_heads,
            self.timeline,
            self.sync.encoded.invalidate,
            self.search_index,
        )
        self.erasure.on_user_erased.append(self.exports.delete_exports_of)
        self.erasure.on_user_erased.append(self.pushers.remove_all)
        self.accounts.erase_user = self.erasure.erase_user

    def _forget_purged(self, room_id: str, floor: int, event_ids: list[str]) -> None:
        """Retention deleted `event_ids` and raised the room's floor: no cache serves them again."""
        self.timeline.forget_below(room_id, floor)
        for event_id in event_ids:
            self.sync.encoded.invalidate(event_id)
            self.sync.thread_roots.forget(event_id)
        self.rooms.forget_redactions(event_ids)
        if event_ids:
            self.unread.forget_room(room_id)

    def _writer_positions(self) -> WriterPositions | None:
        """This process's share of the event positions, when it is one of several writers."""
        index = self.topology.writer_index() if self.topology.multi else None
        if index is None:
            return None
        return WriterPositions(self.topology.me, index, len(self.topology.event_writers))

    def _joined_members(self, room_id: str) -> list[str]:
        head = self.room_heads.peek(room_id)
        return head.members("join") if head is not None else []

    def _build_federated_keys(self) -> None:
        """Our users' keys served to other servers, theirs fetched and kept, and the EDUs
        (device-list, signing-key and to-device) that come from them."""
        self.federation_user_keys = FederationUserKeys(self.config.server_name, self.storage, self.keys)
        self.remote_keys = RemoteKeys(
            self.config.server_name,
            self.storage.remote_devices,
            self.federation.client,
            self.clock,
            self.keys,
            self._shares_room_with_ours,
        )
        self.keys.remote = self.remote_keys
        self.federation_edus.register("m.device_list_update", self.remote_keys.on_device_list_update)
        self.federation_edus.register("m.signing_key_update", self.remote_keys.on_signing_key_update)
        self.federation_edus.register("m.direct_to_device", self.remote_keys.on_direct_to_device)

    async def _shares_room_with_ours(self, user_id: str) -> bool:
        """Is this (remote) user joined to a room one of our users is joined to?"""
        suffix = ":" + self.config.server_name
        # From the database, not the timeline cache: that keeps every user asked about, and
        # these names come from other servers' EDUs.
        for room_id, (membership, _) in (await self.storage.events.rooms_for_user(user_id)).items():
            if membership != "join":
                continue
            head = await self.room_heads.get(room_id)
            if head is not None and any(m.endswith(suffix) for m in head.members("join")):
                return True
        return False

    async def _share_a_room(self, one: str, other: str) -> bool:
        mine = await self.timeline.rooms_for_user(one)
        theirs = await self.timeline.rooms_for_user(other)
        return any(
            membership == "join" and theirs.get(room_id, ("",))[0] == "join"
            for room_id, (membership, _) in mine.items()
        )

    async def _presence_audience(self, user_id: str) -> set[str]:
        audience = {user_id}
        for room_id, (membership, _) in (await self.timeline.rooms_for_user(user_id)).items():
            head = self.room_heads.peek(room_id) if membership == "join" else None
            if head is not None:
                audience.update(head.members("join"))
        return audience

    async def start(self) -> None:
        """Migrate the schema, load stream positions, start the plugins (before the port opens)."""
        await migrate(self.storage.db)
        await migrate_plugin_schemas(self.storage.db, self.config)
        if self.replication is not None:
            position = await self.replication.start()
        else:
            await self.persister.start()
            position = self.persister.persisted_upto
        self.stream.start(position)
        await self.timeline.start(position)
        positions = await self.storage.user_data.max_stream_ids()
        self.account_data.start(positions["account_data"])
        await self.push_rules.start()
        await self.ignored_users.start()
        await self.pushers.start()
        self.receipts.start(positions["receipts"])
        await self.presence.start(positions["presence"])
        await self.keys.start()
        # The indexes are the whole server's: filled by one process (workers.background);
        # the others' searches wait for it there (workers/jobs.py).
        if self.topology.runs("background"):
            await self.user_directory.start()
            await self.search_index.start()
        if self.topology.runs("federation_sender"):
            await self.federation_sender.start()
        await self.restrictions.start()
        await self.admin.start()
        # Typing lives in memory only: start its positions past any a client may hold.
        self.typing.position = self.clock.time_ms()
        # Each process's own: delivery positions it holds, metrics it serves.
        self._start_job(1.0, self.delivery.flush)
        if self.config.metrics.served:
            self._start_job(self.config.metrics.activity_refresh / 1000, self.activity.refresh)
            self.server_metrics.stages.watch_reactor(self.clock)
        # Where presence is written (the others report who syncs through them).
        if self.topology.writes("presence"):
            self._start_job(15.0, self.presence.expire)
        # Jobs on the whole server's data: on the one process that runs them (workers.background).
        background = self.topology.runs("background")
        if self.config.retention.enabled and background:
            self._start_job(self.config.retention.purge_interval / 1000, self.retention.purge_expired)
        if background:
            self._start_job(600.0, self.uia.expire_sessions)
        if self.stream_replication is not None:
            self.stream_replication.start()
        # Once every service has loaded its positions: connect callbacks catch up from there.
        await self.bus.start()
        if self.replication is not None:
            self.replication.start_heartbeat()
        self.plugins = await start_plugins(self, self.router)
        # After the plugins: a restarted export includes their parts (media).
        if self.topology.runs("background"):
            await self.exports.start()

    def _start_job(self, interval_s: float, job: Any) -> None:
        async def run() -> None:
            try:
                await job()
            except StorageFull:
                pass  # the disk watch has said so once (homeserver/disk_full.py); next time may work
            except Exception:
                log_failure(log, "background job failed")

        self._jobs.append(self.clock.looping_call(interval_s, lambda: Deferred.fromCoroutine(run())))

    def site(self) -> HttpFactory:
        """The HTTP side, to listen with (once: stop() drains its connections)."""
        upgrades = {WS_PATH: LazyUpgrade(lambda: self.websocket)}
        self.http = make_site(
            self.router,
            self.config.limits.max_request_body_size,
            self.clock,
            upgrades=upgrades,
            trusted_proxies=self.trusted_proxies,
            cap=self.connection_cap,
        )
        return self.http

    def federation_site(self) -> tuple[HttpFactory, Any] | None:
        """The TLS federation listener's HTTP side (the same routes) and its TLS options,
        when `federation.port` is set. ValueError if the certificate or key cannot be used."""
        fed = self.config.federation
        if fed.port is None or not fed.tls_certificate or not fed.tls_private_key:
            return None
        from homeserver.core.federation.tls import server_context

        context = server_context(fed.tls_certificate, fed.tls_private_key)
        self.federation_http = make_site(
            self.router, self.config.limits.max_request_body_size, self.clock, cap=self.connection_cap
        )
        return self.federation_http, context

    def internal_site(self) -> HttpFactory:
        """The internal listener's HTTP side: requests from the other instances (workers.md)."""
        router = internal_router(self.rpc)
        self.internal_http = make_site(router, INTERNAL_BODY_LIMIT, self.clock)
        return self.internal_http

    def metrics_site(self) -> HttpFactory | None:
        """The metrics listener's HTTP side, when `metrics.enabled`."""
        if not self.config.metrics.enabled:
            return None
        return make_site(metrics_routes.metrics_router(self), 64 * 1024, self.clock)

    def _writer_lock(self) -> WriterLock | None:
        """This event writer's lock (PostgreSQL: how the others tell it is dead, ADR 0008)."""
        topology = self.topology
        if topology.me not in topology.event_writers or self.storage.db.dialect != "postgres":
            return None
        return WriterLock(self.config.database.url, topology.me, self.reactor)

    def _fenced(self) -> None:
        """Another event writer retired this one while it looked dead (ADR 0008): it may store
        no more events. Exit, failing, for the supervisor to restart it (systemd's Restart=)."""
        self.exit_code = 75  # EX_TEMPFAIL
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping

    async def stop(self, port: IListeningPort | None) -> None:
        """Stop accepting, let requests being read or handled finish (bounded), stop plugins,
        close the database. First, for `workers.drain_delay`, keep serving while GET /health
        answers 503: a load balancer takes this process out before its listener closes."""
        self.draining = True
        delay_ms = self.config.workers.drain_delay_ms
        if delay_ms > 0:
            log.info("draining: /health answers 503 for {s}s before the listener closes", s=delay_ms / 1000)
            await deferLater(self.clock, delay_ms / 1000, lambda: None)  # type: ignore[arg-type]
        for listening in (port, self.metrics_port, self.federation_port, self.internal_port):
            if listening is not None:
                stopped = listening.stopListening()  # type: ignore[misc]
                if stopped is not None:
                    await stopped
        # Long-polls answer now rather than hold the shutdown; streams close (clients resume).
        if self._websocket is not None:
            self._websocket.close_all()
        self.notifier.shutdown()
        idle: Deferred[None] = Deferred()

        async def requests_done() -> None:
            # First every request still arriving is read whole (and so with the router), then
            # the router has answered them all.
            for http in (self.http, self.federation_http, self.internal_http):
                if http is not None:
                    await http.drain()
            await self.router.wait_idle()
            if not idle.called:
                idle.callback(None)

        def give_up() -> None:
            if not idle.called:
                log.warn("shutting down with requests still in flight")
                idle.callback(None)

        timeout = self.clock.callLater(SHUTDOWN_GRACE_S, give_up)
        Deferred.fromCoroutine(requests_done())
        await idle
        if timeout.active():
            timeout.cancel()
        # The last responses may still sit in their connections' write buffers, and the
        # reactor's shutdown drops connections without flushing them: let it write them out.
        # (Timed by the reactor itself, not the clock: it waits for the reactor's own I/O.)
        get_writers = getattr(self.reactor, "getWriters", None)
        flush_deadline = self.reactor.seconds() + 1.0
        while get_writers is not None and get_writers() and self.reactor.seconds() < flush_deadline:
            await deferLater(self.reactor, 0.01, lambda: None)
        for loop in self._jobs:
            if loop.running:
                loop.stop()
        self.server_metrics.stages.stop()
        if self.stream_replication is not None:
            self.stream_replication.stop()
        if self.shared_limits is not None:
            self.shared_limits.stop()
        if self.replication is not None:
            # With the bus and the database still up: the other writers carry its promise.
            await self.replication.retire()
            self.replication.release()
        self.retention.stop()
        self.typing.stop_all()
        try:
            await self.delivery.flush()
        except Exception:
            log_failure(log, "could not save delivery positions")
        for api in self.plugin_apis:
            api.stop_jobs()
        self.exports.stop()
        # Before the client closes: its requests cut by the close are not taken for failures.
        await self.federation_sender.stop()
        try:
            await self.federation.client.close()
        except Exception:
            log_failure(log, "could not close federation connections")
        await self.stream.stop()
        await self.bus.stop()
        if isinstance(self.rpc.transport, HttpTransport):
            await self.rpc.transport.close()
        for plugin in self.plugins:
            stop = getattr(plugin, "stop", None)
            if stop is not None:
                try:
                    result = stop()
                    if isinstance(result, Deferred) or hasattr(result, "__await__"):
                        await result
                except Exception:
                    log.failure("plugin failed to stop")
        for api in self.plugin_apis:
            api.close_threads()
        self.storage.close()
        self.blocking.close()
        log.info("shut down cleanly")


def data_dir_ready(config: Config) -> Path:
    config.data_path.mkdir(parents=True, exist_ok=True)
    return config.data_path
