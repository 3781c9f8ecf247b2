"""The only code that writes SQL: one store per domain over one `Database`."""

from __future__ import annotations

from typing import Any

from homeserver.storage.accounts import AccountStore
from homeserver.storage.activity import ActivityStore
from homeserver.storage.auth_sessions import AuthSessionStore
from homeserver.storage.backfill import BackfillStore
from homeserver.storage.daily_stats import DailyStatsStore
from homeserver.storage.database import Database, engine_from_url
from homeserver.storage.devices import DeviceStore
from homeserver.storage.e2ee import E2eeStore
from homeserver.storage.events import EventStore
from homeserver.storage.federation_events import FederationEventStore
from homeserver.storage.federation_queue import FederationQueueStore
from homeserver.storage.gdpr import GdprStore
from homeserver.storage.openid import OpenIdStore
from homeserver.storage.pushers import PusherStore
from homeserver.storage.remote_devices import RemoteDeviceStore
from homeserver.storage.reports import ReportStore
from homeserver.storage.retention import RetentionStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.search import SearchStore
from homeserver.storage.server_keys import ServerKeyStore
from homeserver.storage.stream_consumers import StreamConsumerStore
from homeserver.storage.stream_writers import StreamWriterStore
from homeserver.storage.user_data import UserDataStore
from homeserver.storage.user_directory import UserDirectoryStore


class Storage:
    """Every store of the core, sharing one database handle."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.accounts = AccountStore(db)
        self.devices = DeviceStore(db)
        self.auth_sessions = AuthSessionStore(db)
        self.events = EventStore(db)
        self.rooms = RoomStore(db)
        self.user_data = UserDataStore(db)
        self.e2ee = E2eeStore(db)
        self.stream_consumers = StreamConsumerStore(db)
        self.stream_writers = StreamWriterStore(db)
        self.pushers = PusherStore(db)
        self.openid = OpenIdStore(db)
        self.search = SearchStore(db)
        self.user_directory = UserDirectoryStore(db)
        self.reports = ReportStore(db)
        self.gdpr = GdprStore(db)
        self.activity = ActivityStore(db)
        self.retention = RetentionStore(db)
        self.daily_stats = DailyStatsStore(db)
        self.server_keys = ServerKeyStore(db)
        self.federation_events = FederationEventStore(db)
        self.backfill = BackfillStore(db)
        self.remote_devices = RemoteDeviceStore(db)
        self.federation_queue = FederationQueueStore(db)

    @classmethod
    def from_url(cls, url: str, pool_min: int = 2, pool_max: int = 10, reactor: Any = None) -> "Storage":
        """`reactor` answers the database threads (None: the global reactor)."""
        return cls(Database(engine_from_url(url, pool_min, pool_max), reactor))

    def close(self) -> None:
        self.db.close()
